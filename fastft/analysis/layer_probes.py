"""Layer probes (the paper's Fig. 10): a linear softmax classifier on each layer's features, trained on the target
view's train split and tested on its val split — on the paper's full feature maps (conv1 after ReLU → pool → LRN is
96×27×27 = 69,984 values per image) by default, in bounded memory.

Features come from the evaluation transform (centre crop, no mirror) through the model's named taps, stored as
float16. Layers are taken in groups whose train + val features fit the memory budget (``memory_gb``; default half of
the free GPU memory, or of the available RAM on CPU): each group is extracted once into memory and its probes are
trained from there. A layer too large for the budget on its own is **streamed**: every probe epoch runs the images
through the network again (one forward pass per epoch) instead of holding its features. Both ways see the same
batches in the same order (the order of :class:`fastft.loading.EpochPlan`, seeded), the same float16 features and
the same standardisation, so they give the same probe. ``pool=N`` max-pools conv maps to N×N first (an explicit
option; the paper's setting is the full maps).

Recipe (fixed, so numbers are comparable across runs): features standardised with the train split's per-feature mean
and sample std (float64 sums, key order), one ``nn.Linear`` per layer trained with Adam (lr 1e-2, weight decay 1e-4)
on batches of 256, for 30 epochs and at least 500 steps; top-1 on the val split. Each run's accuracies land in
``<run>/analysis/probes-<view tag>.json`` (the report's ``probe_<layer>``; ``probe_before_<layer>`` for a source
model on its fine-tune's view: Fig. 10's dashed lines).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FastFTError
from ..models import all_layers
from ..util.device import resolve
from .extract import check_layers, input_size, load_model, model_preprocess, pooled, run_model_spec
from .registry import save
from .targets import each_view

EPOCHS, MIN_STEPS, BATCH, LR, WEIGHT_DECAY = 30, 500, 256, 1e-2, 1e-4


def _features(model, x: torch.Tensor, layers: tuple[str, ...], pool: int | None) -> dict[str, torch.Tensor]:
    """The layers' outputs for a batch, flattened and rounded to float16 (what the in-memory path stores)."""
    with torch.no_grad():
        taps = model(x, taps=layers)
    return {l: pooled(taps[l], pool).flatten(1).half() for l in layers}


def memory_budget(device: str, memory_gb: float | None) -> float:
    """Bytes the features of one group may take: ``memory_gb``, or half of what is free on the device / in RAM."""
    if memory_gb is not None:
        return memory_gb * 1e9
    if device == "cuda":
        return 0.5 * torch.cuda.mem_get_info()[0]
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line) \
        if Path("/proc/meminfo").exists() else {}
    return 0.5 * float(info.get("MemAvailable", "4000000 kB").split()[0]) * 1024


def groups(layers: tuple[str, ...], dims: dict[str, int], n: int, budget: float) -> list[tuple[tuple[str, ...], bool]]:
    """Layers in network order, packed into groups whose float16 features for ``n`` images fit ``budget`` bytes;
    ``(group, streamed)``: a layer over the budget alone is a group of its own, streamed."""
    out, cur, used = [], [], 0.0
    for l in layers:
        size = 2.0 * n * dims[l]
        if size > budget:
            out.append(((l,), True))
            continue
        if cur and used + size > budget:
            out.append((tuple(cur), False))
            cur, used = [], 0.0
        cur.append(l)
        used += size
    if cur:
        out.append((tuple(cur), False))
    return out


class InMemory:
    """A group's features for one split (rows in key order), held on the device."""

    def __init__(self, x: dict[str, torch.Tensor], y: torch.Tensor):
        self.x, self.y = x, y

    @classmethod
    def extract(cls, model, loader, layers, pool, dev) -> "InMemory":
        feats = {l: [] for l in layers}
        ys = []
        for x, y, w in loader.epoch(0):
            keep = w > 0
            for l, f in _features(model, x[keep], layers, pool).items():
                feats[l].append(f.to(dev))
            ys.append(y[keep].to(dev))
        return cls({l: torch.cat(v) for l, v in feats.items()}, torch.cat(ys))

    def sorted_batches(self, batch: int):
        for i in range(0, len(self.y), batch):
            yield {l: v[i:i + batch] for l, v in self.x.items()}, self.y[i:i + batch]

    def shuffled_batches(self, plan, epoch: int):
        for idx in plan.epoch(epoch)["index"]:
            t = torch.from_numpy(idx).to(self.y.device)
            yield {l: v[t] for l, v in self.x.items()}, self.y[t]


class Streamed:
    """A group's features for one split, recomputed by the network for every pass (nothing held)."""

    def __init__(self, model, make_loader, split, layers, pool):
        self.model, self.make, self.split, self.layers, self.pool = model, make_loader, split, layers, pool
        self.sorted = make_loader(split, False)
        self.shuffled = make_loader(split, True) if split == "train" else None

    def sorted_batches(self, batch: int):
        for x, y, w in self.sorted.epoch(0):
            keep = w > 0
            yield _features(self.model, x[keep], self.layers, self.pool), y[keep]

    def shuffled_batches(self, plan, epoch: int):
        for x, y, _ in self.shuffled.epoch(epoch):
            yield _features(self.model, x, self.layers, self.pool), y


def _standardisation(batches, layers) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-feature mean and sample std over the split, accumulated in float64 (the same sums on either path)."""
    s1 = s2 = None
    n = 0
    for feats, _ in batches:
        f = {l: feats[l].double() for l in layers}
        if s1 is None:
            s1 = {l: torch.zeros(v.shape[1], dtype=torch.float64, device=v.device) for l, v in f.items()}
            s2 = {l: torch.zeros_like(s1[l]) for l in layers}
        for l in layers:
            s1[l] += f[l].sum(0)
            s2[l] += (f[l] ** 2).sum(0)
        n += len(next(iter(f.values())))
    out = {}
    for l in layers:
        mean = s1[l] / n
        var = ((s2[l] - n * mean ** 2) / max(n - 1, 1)).clamp_min(0)
        out[l] = (mean.float(), var.sqrt().float() + 1e-6)
    return out


def train_group(train_src, val_src, layers, num_classes: int, n_train: int, *, seed: int = 0, epochs: int = EPOCHS,
                min_steps: int = MIN_STEPS, batch: int = BATCH) -> dict[str, float]:
    """Probes for ``layers`` from a source of their features (in memory or streamed) → val top-1 (%) per layer."""
    from ..loading import EpochPlan

    stats = _standardisation(train_src.sorted_batches(batch), layers)
    plan = EpochPlan(n_train, batch, seed=seed, shuffle=True)
    lins, opts = {}, {}
    for l in layers:
        torch.manual_seed(seed)
        dev = stats[l][0].device
        lins[l] = torch.nn.Linear(stats[l][0].shape[0], num_classes).to(dev)
        opts[l] = torch.optim.Adam(lins[l].parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for epoch in range(max(epochs, math.ceil(min_steps / plan.steps))):
        for feats, y in train_src.shuffled_batches(plan, epoch):
            for l in layers:
                mu, sd = stats[l]
                loss = F.cross_entropy(lins[l]((feats[l].float() - mu) / sd), y)
                opts[l].zero_grad()
                loss.backward()
                opts[l].step()
    hits, total = {l: 0 for l in layers}, 0
    with torch.no_grad():
        for feats, y in val_src.sorted_batches(batch):
            for l in layers:
                mu, sd = stats[l]
                hits[l] += int((lins[l]((feats[l].float() - mu) / sd).argmax(1) == y).sum())
            total += len(y)
    return {l: round(100 * hits[l] / total, 2) for l in layers}


def probe_model(model, preprocess: str, view, layers: tuple[str, ...], device: str, *, pool: int | None = None,
                memory_gb: float | None = None, seed: int = 0, epochs: int = EPOCHS, min_steps: int = MIN_STEPS,
                batch: int = BATCH, backend: str = "dali", crop: int | None = None) -> tuple[dict[str, float], list[dict]]:
    """Val top-1 (%) of a probe per layer of ``model`` on ``view`` (centre crops of ``crop``, default the model's
    ``input_size``), and how each group of layers was held."""
    from ..loading import Loader, LoaderConfig

    crop = crop or model.cfg.input_size
    cfg = LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=device, preprocess=preprocess)

    def make(split: str, shuffle: bool):
        return Loader(view, split, cfg, train=False, shuffle=shuffle, seed=seed)

    with torch.no_grad():
        probe = model(torch.zeros(1, 3, crop, crop, device=device), taps=layers)
    dims = {l: int(np.prod(pooled(probe[l], pool).shape[1:])) for l in layers}
    n_train, n_val = (len(make(s, False).src) for s in ("train", "val"))
    accs, held = {}, []
    for group, streamed in groups(layers, dims, n_train + n_val, memory_budget(device, memory_gb)):
        if streamed:
            tr, va = (Streamed(model, make, s, group, pool) for s in ("train", "val"))
        else:
            tr, va = (InMemory.extract(model, make(s, False), group, pool, device) for s in ("train", "val"))
        accs.update(train_group(tr, va, group, view.num_classes, n_train, seed=seed, epochs=epochs, min_steps=min_steps, batch=batch))
        held.append({"layers": list(group), "features": "streamed" if streamed else "in memory",
                     "gb": round(2 * (n_train + n_val) * sum(dims[l] for l in group) / 1e9, 3)})
        del tr, va
    if set(accs) != set(layers):
        raise FastFTError(f"probes missing for {sorted(set(layers) - set(accs))}")
    return {l: accs[l] for l in layers}, held


# ---------------------------------------------------------------- the analysis: a probe per layer of each run
def probe_accuracy(xtr, ytr, xte, yte, classes: int, device: str = "cpu", epochs: int = EPOCHS, seed: int = 0) -> float:
    """The probe recipe on given feature arrays (rows = samples) → val accuracy in [0, 1]."""
    src = [InMemory({"x": torch.as_tensor(np.asarray(x, np.float32)).half().to(device)}, torch.as_tensor(y).to(device))
           for x, y in ((xtr, ytr), (xte, yte))]
    return train_group(*src, ("x",), classes, len(ytr), seed=seed, epochs=epochs)["x"] / 100


def probes(runs: list, view, layers: tuple[str, ...] | None = None, device: str = "auto", pool: int | None = None,
           memory_gb: float | None = None, **recipe) -> dict:
    """Fig. 10: a linear probe per layer of each run's model on ``view`` (full feature maps unless ``pool``; see
    the module docstring), saved as ``<run>/analysis/probes-<view tag>.json``. ``layers``: default every named layer
    of each run's own model (:mod:`fastft.models`)."""
    from ..data.views import open_view

    view = open_view(view) if not hasattr(view, "meta") else view
    bad = [l for l in layers or () if l not in all_layers()]
    if bad:
        raise FastFTError(f"unknown layer(s) {bad}; layers are {', '.join(all_layers())}")
    dev = resolve(device)
    table, shown = {}, {}
    for run in runs:
        mine = tuple(layers or run_model_spec(run).layers)
        model, blob = load_model(run, dev)
        check_layers(blob, mine)
        accs, held = probe_model(model, model_preprocess(blob), view, mine, dev, pool=pool,
                                 memory_gb=memory_gb, crop=input_size(model, blob), **recipe)
        table[Path(run).name] = accs
        shown.update(dict.fromkeys(mine))
        save(run, "probes", {"analysis": "probes", "view": str(view.path), "pool": pool, "features": held,
                             "summary": accs}, view)
    return {"analysis": "probes", "view": str(view.path), "layers": list(shown), "pool": pool, "accuracy": table}


def cli(a) -> None:
    """``fastft analyze probes``: a table of each run's probe accuracy per layer, per target view."""
    for view, runs, _ in each_view(a):
        r = probes(runs, view, device=a.device, pool=a.pool, memory_gb=a.memory_gb)
        layers = r["layers"]
        print("run".ljust(32) + "".join(l.rjust(8) for l in layers))
        for name, accs in r["accuracy"].items():
            print(name[:31].ljust(32) + "".join(f"{accs[l]:8.2f}" if l in accs else "–".rjust(8) for l in layers))
