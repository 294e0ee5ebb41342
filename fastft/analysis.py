"""The paper's §4.3 analyses on trained runs: fc7 + linear SVM, per-filter AP on conv5, layer probes, class-model
images, and a feature-based source–target distance.

Features come from the evaluation pipeline (centre crop, no mirror; padding samples of the last batch dropped by
weight) through the model's named taps, batch by batch on the GPU when there is one. For the SVM, the filters and
the distance they are cached on disk per (model, view samples, split, layer, pooling) as float16 ``.npy`` files under
``<run>/analysis/features/`` and read back memory-mapped; a request over ``max_gb`` fails naming ``pool=N`` instead of
filling the disk. The probes (:mod:`fastft.probes`) run on the full feature maps in bounded memory without that cache.
Results are JSON files in ``<run>/analysis/`` that ``fastft report`` picks up.

Recipes (fixed, so numbers are comparable across runs):
* SVM: L2-normalised fc7, ``sklearn.svm.LinearSVC(C=1.0)``, trained on the view's train split, tested on val.
* Filters: conv5 response per image = spatial max per filter (256 scores); AP per (class, filter) with
  ``sklearn.metrics.average_precision_score`` on the val split; sensitivity of a model for a class = mean AP of its
  top-5 filters; model A beats B on a class when its sensitivity is higher.
* Probes: see :mod:`fastft.probes` (standardised features, one linear softmax layer per layer, Adam, 30 epochs and
  at least 500 steps; the paper's full maps unless ``pool``).
* Class images: gradient ascent on the class score (pre-softmax) from the mean image (Simonyan et al. 2014), step
  1.0 and L2 penalty 1e-3 in units of the pixels' spread (ImageNet's per-channel std) whatever the model's
  preprocessing (:mod:`fastft.preprocess`), 200 steps.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from . import preprocess
from . import probes as probes_mod
from .errors import FastFTError
from .files import write_json
from .model import LAYERS, AlexNet
from .report import beats_figure
from .runs import is_finished, locate, memberships, read_config, run_dirs
from .store import view_tag
from .util.device import resolve
from .weights import ModelFile, read_model


# ---------------------------------------------------------------- which runs, on which views
def _expand(paths: list, plan: str | None) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """(the runs ``paths`` name, with their configs; every run beside them). ``paths`` are run directories, or
    directories of runs — their finished runs, only ``plan``'s if given."""
    runs, beside = [], {}
    for p in map(Path, paths):
        if (p / "config.json").exists():
            runs.append((p, read_config(p)))
            beside.update(run_dirs(p.parent))
        elif p.is_dir():
            here = run_dirs(p)
            found = [(d, cfg) for d, cfg in here if is_finished(d) and (plan is None or plan in _plans(d))]
            if not found:
                raise FastFTError(f"{p} holds no finished runs" + (f" of plan {plan!r}" if plan else "") +
                                  (f" (its plans: {', '.join(sorted({q for d, _ in here for q in _plans(d)}))})" if plan else ""))
            runs += found
            beside.update(here)
        else:
            raise FastFTError(f"{p} is neither a run directory (config.json) nor a directory of runs")
    return runs, list(beside.items())


def analysis_targets(paths: list, view=None, plan: str | None = None) -> list[tuple[Path, list[Path]]]:
    """What ``fastft analyze`` works on: ``(view, runs)`` groups, in the order the runs come.

    ``paths`` are run directories, or directories of runs (their finished runs; only ``plan``'s if given). With
    ``view``, every run on it. Without, each run on its target view(s), as ``fastft report`` pairs results: a run
    trained on a target set on its own view; a source model on the views of the runs fine-tuned from it, found beside
    it (Table 3's "before fine-tuning"; with ``plan``, that plan's fine-tunes). So one call analyses a five-seed
    study, each seed's models on that seed's target, and ``filters`` / ``probes`` compare the models of one view."""
    from .subsets import is_target_set

    runs, beside = _expand(paths, plan)
    if view is not None:
        return [(Path(view), [r for r, _ in runs])]
    tuned: dict | None = None  # source run -> views of the runs fine-tuned from it
    groups: dict = {}
    for r, cfg in runs:
        c = cfg["config"]
        if is_target_set(c.get("set")):
            views = [locate(c.get("view"), r, "views")]
        else:
            if tuned is None:
                tuned = {}
                for d, cd in beside:
                    src, v = locate(cd["config"].get("source"), d), locate(cd["config"].get("view"), d, "views")
                    if src is not None and v is not None and (plan is None or plan in _plans(d)):
                        tuned.setdefault(src.resolve(), []).append(v)
            views = sorted(set(tuned.get(r.resolve(), [])))
        views = [v for v in views if v is not None]
        if not views:
            raise FastFTError(f"{r} was trained on set {c.get('set')!r} and no run beside it was fine-tuned from it, "
                              "so its target view is unknown: give --view")
        for v in views:
            groups.setdefault(v.resolve(), []).append(r)
    return list(groups.items())


def distance_targets(paths: list, plan: str | None = None) -> list[tuple[Path, Path, Path]]:
    """``(source model, source view, target view)`` for each fine-tuned run among ``paths`` (as in
    :func:`analysis_targets`): the feature distance of a study's source→target pairs, measured in the source model's
    fc7 — what fine-tuning starts from. Each pair once."""
    runs, beside = _expand(paths, plan)
    configs = {d.resolve(): cfg for d, cfg in beside}
    out = {}
    for r, cfg in runs:
        src = locate(cfg["config"].get("source"), r)
        scfg = configs.get(src.resolve()) if src is not None else None
        if scfg is None and src is not None and (src / "config.json").exists():  # a source kept elsewhere
            scfg = read_config(src)
        sview = locate(scfg["config"].get("view"), src, "views") if scfg else None
        tview = locate(cfg["config"].get("view"), r, "views")
        if sview is not None and tview is not None:
            out.setdefault((src.resolve(), tview.resolve()), (src, sview, tview))
    if not out:
        raise FastFTError("no fine-tuned runs with their source runs and views among " + ", ".join(map(str, paths)) +
                          "; for other pairs give --view (target) and --source-view")
    return list(out.values())


def _plans(run: Path) -> set[str]:
    """The plans a run serves (its ``sweep.json``)."""
    return {m["plan"] for m in memberships(run) if m.get("plan")}


def load_model(run: str | Path, device: str = "cpu") -> tuple[AlexNet, ModelFile]:
    """A run's (or a model file's) model in eval mode, and the checked file: read without running code, a run's
    ``model.pt`` checked against the sha256 its ``final.json`` records (see :mod:`fastft.weights`)."""
    mf = read_model(run)
    return mf.model(device), mf


def model_preprocess(mf: ModelFile) -> str:
    """The preprocessing a model file was trained with (files from before it was recorded: ``imagenet``)."""
    name = mf.preprocess or preprocess.LEGACY
    preprocess.mean_std(name)  # a name this version knows, or a clear error
    return name


def _device(device: str) -> str:
    return resolve(device)


def features(run: str | Path, view, split: str, layers: tuple[str, ...], *, device: str = "auto", batch: int = 128,
             pool: int | None = None, max_gb: float = 20.0, backend: str = "dali") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of ``layers`` for every sample of a view split (rows in the view's key order) and their labels."""
    from .loading import Loader, LoaderConfig
    from .store import View, open_view

    view = view if isinstance(view, View) else open_view(view)
    dev = _device(device)
    model, blob = load_model(run, dev)
    crop = model.cfg.input_size
    bad = [l for l in layers if l not in LAYERS]
    if bad:
        raise FastFTError(f"unknown layer(s) {bad}; layers are {', '.join(LAYERS)}")
    loader = Loader(view, split, LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev,
                                              preprocess=model_preprocess(blob)), train=False)
    n = len(loader.src)
    tag = hashlib.sha256(json.dumps([blob.run_id, view.meta["splits"][split]["keys_sha256"], view.meta["manifest_sha256"],
                                     split, pool]).encode()).hexdigest()[:16]
    cache = (Path(run) if Path(run).is_dir() else Path(run).parent) / "analysis" / "features"
    cache.mkdir(parents=True, exist_ok=True)
    paths = {l: cache / f"{tag}-{l}.npy" for l in layers}
    todo = [l for l in layers if not paths[l].exists()]
    if todo:
        with torch.no_grad():
            probe = model(torch.zeros(1, 3, crop, crop, device=dev), taps=tuple(todo))
        shapes = {l: _pooled(probe[l], pool).shape[1:] for l in todo}
        need = sum(n * int(np.prod(s)) * 2 for s in shapes.values()) / 1e9
        if need > max_gb:
            raise FastFTError(f"features of {todo} for {n} images need {need:.1f} GB (> max_gb {max_gb}); pass pool=N to max-pool conv maps to NxN")
        outs = {l: np.lib.format.open_memmap(str(paths[l]) + ".tmp.npy", mode="w+", dtype=np.float16, shape=(n, int(np.prod(shapes[l]))))
                for l in todo}
        rows = 0
        from tqdm import tqdm

        with torch.no_grad():  # a progress bar on a terminal only (disable=None)
            for x, y, w in tqdm(loader.epoch(0), total=len(loader), desc=f"{Path(run).name}: {split} features ({', '.join(todo)})",
                                unit="batch", disable=None, leave=False):
                keep = w > 0
                feats = model(x[keep], taps=tuple(todo))
                k = int(keep.sum())
                for l in todo:
                    outs[l][rows:rows + k] = _pooled(feats[l], pool).flatten(1).float().cpu().numpy()
                rows += k
        if rows != n:
            raise FastFTError(f"extracted {rows} of {n} samples")
        for l in todo:
            outs[l].flush()
            del outs[l]
            Path(str(paths[l]) + ".tmp.npy").replace(paths[l])
    labels = loader.src.labels.copy()
    return {l: np.load(paths[l], mmap_mode="r") for l in layers}, labels


def _pooled(t: torch.Tensor, pool: int | None) -> torch.Tensor:
    if pool and t.dim() == 4 and t.shape[-1] > pool:
        return torch.nn.functional.adaptive_max_pool2d(t, pool)
    return t


# ---------------------------------------------------------------- SVM on fc7
def svm(run, view, device: str = "auto", layer: str = "fc7") -> dict:
    tr, ytr = features(run, view, "train", (layer,), device=device)
    te, yte = features(run, view, "val", (layer,), device=device)
    acc = svm_accuracy(np.asarray(tr[layer], np.float32), ytr, np.asarray(te[layer], np.float32), yte)
    res = {"analysis": "svm", "layer": layer, "view": str(view), "train_n": len(ytr), "test_n": len(yte),
           "summary": {"svm_top1": round(100 * acc, 2)}}
    _save(run, "svm", res, view)
    return res


def svm_accuracy(xtr, ytr, xte, yte, C: float = 1.0) -> float:
    """Top-1 of ``LinearSVC(C)`` on L2-normalised features. Its one-vs-rest problems are solved one per thread
    (liblinear releases the GIL): the same problems ``LinearSVC`` solves one after another — identical coefficients,
    a fixed liblinear seed — as many at once as cores and memory allow. At study size (a 100-class target's 120k
    training images, 4096-d fc7) one after another took ~100 s per 12k images on one core."""
    from joblib import parallel_config
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    x = np.ascontiguousarray(norm(np.asarray(xtr, np.float64)))  # liblinear's dtype: converted once, shared by the threads
    jobs = _svm_threads(x)
    if sys.stderr.isatty():  # minutes at study size, with no progress of its own
        print(f"linear SVM: {x.shape[0]} x {x.shape[1]} features, {len(np.unique(ytr))} classes, {jobs} threads", file=sys.stderr)
    with parallel_config(backend="threading"):
        clf = OneVsRestClassifier(LinearSVC(C=C, max_iter=5000, random_state=0), n_jobs=jobs).fit(x, ytr)
    return float((clf.predict(norm(np.asarray(xte, np.float64))) == yte).mean())


def _svm_threads(x: np.ndarray) -> int:
    """Threads for :func:`svm_accuracy`: each holds liblinear's copy of the non-zero features (16 bytes each); at most
    half the available memory, and the usable cores."""
    from .util.env import usable_cores

    try:
        import psutil

        avail = psutil.virtual_memory().available
    except ImportError:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    per_thread = 16 * (np.count_nonzero(x) + 2 * len(x))
    return max(1, min(usable_cores(), int(0.5 * avail // max(per_thread, 1))))


# ---------------------------------------------------------------- per-filter AP on conv5
def filter_ap(scores: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """AP[class, filter] of each filter's score as a detector of each class — scikit-learn's
    ``average_precision_score`` (Σ (R_t − R_{t−1}) P_t over distinct thresholds, ties in one step), computed for all
    classes at once per filter: one sort per filter instead of one sklearn call per (class, filter) pair."""
    n, nf = scores.shape
    onehot = np.zeros((n, classes), np.float64)
    onehot[np.arange(n), labels] = 1
    npos = onehot.sum(0)
    ap = np.full((classes, nf), np.nan)
    has = npos > 0
    for f in range(nf):
        order = np.argsort(-scores[:, f], kind="stable")
        s = scores[order, f]
        ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each distinct threshold
        tp = np.cumsum(onehot[order], axis=0)[ends]            # [thresholds, classes]
        precision = tp / (ends + 1)[:, None]
        recall = tp[:, has] / npos[has]
        dr = np.diff(np.vstack([np.zeros((1, recall.shape[1])), recall]), axis=0)
        ap[has, f] = (dr * precision[:, has]).sum(0)
    return ap


def sensitivity(ap: np.ndarray, top: int = 5) -> np.ndarray:
    """Per class: mean AP of the ``top`` best filters."""
    return np.sort(ap, axis=1)[:, -top:].mean(axis=1)


def filters(runs: list, view, device: str = "auto", out: str | Path | None = None, pr_classes: int = 3) -> dict:
    from .store import open_view

    view = open_view(view) if not hasattr(view, "meta") else view
    sens, names, aps = {}, [], {}
    for run in runs:
        f, y = features(run, view, "val", ("conv5",), device=device)
        c5 = np.asarray(f["conv5"], np.float32)
        model, _ = load_model(run)
        ch = model.conv5[0].out_channels
        scores = c5.reshape(len(y), ch, -1).max(axis=2)
        ap = filter_ap(scores, y, view.num_classes)
        name = Path(run).name
        names.append(name)
        sens[name], aps[name] = sensitivity(ap), (ap, scores, y)
        _save(run, "filters", {"analysis": "filters", "view": str(view.path), "summary": {"mean_sensitivity": round(float(np.nanmean(sens[name])), 4)},
                               "sensitivity": sens[name].round(4).tolist(), "top5_filters": np.argsort(-ap, axis=1)[:, :5].tolist()}, view)
    beats = {a: {b: round(100 * float(np.mean(sens[a] > sens[b])), 2) for b in names if b != a} for a in names}
    res = {"analysis": "filters", "view": str(view.path), "models": names, "percent_of_classes_a_beats_b": beats,
           "mean_sensitivity": {k: round(float(np.nanmean(v)), 4) for k, v in sens.items()}}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "filters.json", res)
        _pr_figure(aps, view, out / "filters-pr.png", pr_classes)
        beats_figure(beats, names, out / "filters-beats.png")
        res["figure"], res["beats_figure"] = str(out / "filters-pr.png"), str(out / "filters-beats.png")
    return res


def _pr_figure(aps: dict, view, path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    models = list(aps)
    fig, axes = plt.subplots(len(models), k, figsize=(3.2 * k, 2.8 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        ap, scores, y = aps[m]
        for c in range(min(k, ap.shape[0])):
            ax = axes[i][c]
            for f in np.argsort(-ap[c])[:5]:
                p, r, _ = precision_recall_curve(y == c, scores[:, f])
                ax.plot(r, p, label=f"filter {f} AP {ap[c, f]:.2f}")
            ax.set(title=f"{m[:18]} · {view.classes[c]}", xlabel="recall", ylabel="precision")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- layer probes (fastft.probes)
def probe_accuracy(xtr, ytr, xte, yte, classes: int, device: str = "cpu", epochs: int = probes_mod.EPOCHS, seed: int = 0) -> float:
    """The probe recipe on given feature arrays (rows = samples) → val accuracy in [0, 1]."""
    src = [probes_mod.InMemory({"x": torch.as_tensor(np.asarray(x, np.float32)).half().to(device)}, torch.as_tensor(y).to(device))
           for x, y in ((xtr, ytr), (xte, yte))]
    return probes_mod.train_group(*src, ("x",), classes, len(ytr), seed=seed, epochs=epochs)["x"] / 100


def probes(runs: list, view, layers: tuple[str, ...] = LAYERS, device: str = "auto", pool: int | None = None,
           memory_gb: float | None = None, **recipe) -> dict:
    """Fig. 10: a linear probe per layer of each run's model on ``view`` (full feature maps unless ``pool``; see
    :mod:`fastft.probes`), saved as ``<run>/analysis/probes-<view tag>.json``."""
    from .store import open_view

    view = open_view(view) if not hasattr(view, "meta") else view
    bad = [l for l in layers if l not in LAYERS]
    if bad:
        raise FastFTError(f"unknown layer(s) {bad}; layers are {', '.join(LAYERS)}")
    dev = _device(device)
    table = {}
    for run in runs:
        model, blob = load_model(run, dev)
        accs, held = probes_mod.probe_model(model, model_preprocess(blob), view, tuple(layers), dev, pool=pool,
                                            memory_gb=memory_gb, **recipe)
        table[Path(run).name] = accs
        _save(run, "probes", {"analysis": "probes", "view": str(view.path), "pool": pool, "features": held,
                              "summary": accs}, view)
    return {"analysis": "probes", "view": str(view.path), "layers": list(layers), "pool": pool, "accuracy": table}


# ---------------------------------------------------------------- class-model images
def class_images(run, classes: list[int], steps: int = 200, lr: float = 1.0, l2: float = 1e-3, device: str = "auto",
                 out: str | Path | None = None) -> dict:
    """Simonyan et al.'s class-model images: gradient ascent on the class scores from a zero (mean) image. The image
    is optimised in units of the pixels' typical spread (ImageNet's per-channel std), whatever the model's
    preprocessing, so ``lr`` and ``l2`` mean the same for a Caffe-scale and a normalised model."""
    dev = _device(device)
    model, blob = load_model(run, dev)
    bad = [c for c in classes if not 0 <= c < model.cfg.num_classes]
    if bad:
        raise FastFTError(f"classes {bad} are not classes of {blob.path} (it has {model.cfg.num_classes}: 0 … {model.cfg.num_classes - 1})")
    s = model.cfg.input_size
    mean, std = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in preprocess.mean_std(model_preprocess(blob)))
    unit = torch.tensor(preprocess.mean_std("imagenet")[1], device=dev).view(1, 3, 1, 1)  # one unit of z, in pixels
    z = torch.zeros(len(classes), 3, s, s, device=dev, requires_grad=True)
    scores = lambda z: model(z * unit / std).gather(1, idx.view(-1, 1)).squeeze(1)  # noqa: E731 - the model's input
    idx = torch.as_tensor(classes, device=dev)
    with torch.no_grad():
        start = scores(z)
    for _ in range(steps):
        (g,) = torch.autograd.grad(scores(z).sum() - l2 * (z ** 2).sum(), z)
        with torch.no_grad():
            z += lr * g
    with torch.no_grad():
        end = scores(z)
    res = {"analysis": "classviz", "classes": [blob.classes[c] for c in classes] if blob.classes else list(classes), "score_before": start.tolist(), "score_after": end.tolist()}
    if out:
        from PIL import Image

        imgs = (z.detach() * unit + mean).cpu()  # pixels
        lo, hi = imgs.amin(dim=(1, 2, 3), keepdim=True), imgs.amax(dim=(1, 2, 3), keepdim=True)
        imgs = ((imgs - lo) / (hi - lo + 1e-6) * 255).byte().permute(0, 2, 3, 1).numpy()
        grid = Image.new("RGB", (s * len(classes), s))
        for i, im in enumerate(imgs):
            grid.paste(Image.fromarray(im), (i * s, 0))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        res["image"] = str(out)
    _save(run, "classviz", res)
    return res


# ---------------------------------------------------------------- feature-based distance
def feature_distance(run, source_view, target_view, device: str = "auto", layer: str = "fc7") -> dict:
    """Mean over target classes of the cosine distance from the target class's mean feature to the nearest source
    class mean (val split features of one model), next to the WordNet distance of the same class sets."""
    from .store import open_view
    from .taxonomy import load

    sv, tv = open_view(source_view), open_view(target_view)
    fs, ys = features(run, sv, "val", (layer,), device=device)
    ft, yt = features(run, tv, "val", (layer,), device=device)
    mean = lambda f, y, k: np.stack([np.asarray(f[layer][y == c], np.float32).mean(0) for c in range(k)])  # noqa: E731
    ms, mt = mean(fs, ys, sv.num_classes), mean(ft, yt, tv.num_classes)
    unit = lambda m: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)  # noqa: E731
    cos = unit(mt) @ unit(ms).T
    feat = float(np.mean(1 - cos.max(axis=1)))
    wn = load().distance(tv.classes, sv.classes)["wup_nearest"]
    res = {"analysis": "distance", "layer": layer, "source_view": str(source_view), "target_view": str(target_view),
           "summary": {"feature_cosine_nearest": round(feat, 4), "wordnet_wup_nearest": round(wn, 4)}}
    _save(run, "distance", res, tv)
    return res


def _save(run, name: str, res: dict, view=None) -> None:
    """``<run>/analysis/<name>-<view tag>.json``; the tag lets the report pair a source model's "before" result with
    its fine-tuned model's "after" on the same target view (Table 3)."""
    d = (Path(run) if Path(run).is_dir() else Path(run).parent) / "analysis"
    d.mkdir(parents=True, exist_ok=True)
    if view is not None:
        res = {**res, "view_tag": view_tag(view)}
        name = f"{name}-{res['view_tag']}"
    write_json(d / f"{name}.json", res)
