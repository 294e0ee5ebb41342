"""A trained model and its features on a view, for every analysis: the model read without running code, fed its own
preprocessing; features from the evaluation pipeline (centre crop, no mirror; padding samples of the last batch
dropped by weight) through the model's named taps, batch by batch on the GPU when there is one, cached on disk per
(model, view samples, split, layer, pooling) as float16 ``.npy`` files under ``<run>/analysis/features/`` and read
back memory-mapped; a request over ``max_gb`` fails naming ``pool=N`` instead of filling the disk."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .. import preprocess
from ..errors import FastFTError
from ..models import spec as model_spec
from ..util.device import resolve
from ..weights import ModelFile, read_model


def load_model(run: str | Path, device: str = "cpu") -> tuple[object, ModelFile]:
    """A run's (or a model file's) model in eval mode, built through the registry (:mod:`fastft.models`), and the
    checked file: read without running code, a run's ``model.pt`` checked against the sha256 its ``final.json``
    records (see :mod:`fastft.weights`)."""
    mf = read_model(run)
    return mf.model(device), mf


def run_model_spec(run: str | Path):
    """The registered model (:class:`fastft.models.ModelSpec`) of a run or model file, for an analysis's default
    layers: a run's recorded config says it without reading the weights."""
    from ..runs import read_config

    p = Path(run)
    if p.is_dir() and (p / "config.json").exists():
        return model_spec(read_config(p)["config"].get("model", "alexnet"))
    return model_spec(read_model(p).model_name)


def channels(model, mf: ModelFile, layer: str, device: str = "cpu") -> int:
    """How many channels (filters) a conv layer's output has, from one forward pass of a blank image."""
    s = input_size(model, mf)
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, s, s, device=device), taps=(layer,))[layer].shape[1])


def check_layers(mf: ModelFile, layers) -> None:
    """An analysis's layers are layers of this file's model, or an error naming the model and the layer."""
    have = model_spec(mf.model_name).layers
    bad = [l for l in layers if l not in have]
    if bad:
        raise FastFTError(f"{mf.path}: model {mf.model_name} has no layer {', '.join(bad)} (its layers: {', '.join(have)})")


def input_size(model, mf: ModelFile) -> int:
    """The crop a model takes: its config's ``input_size`` (the analyses feed it centre crops of that size)."""
    s = getattr(model.cfg, "input_size", None)
    if not isinstance(s, int):
        raise FastFTError(f"{mf.path}: model {mf.model_name} records no input_size in its model_config, which the "
                          "analyses need to crop its inputs")
    return s


def model_preprocess(mf: ModelFile) -> str:
    """The preprocessing a model file was trained with (files from before it was recorded: ``imagenet``)."""
    name = mf.preprocess or preprocess.LEGACY
    preprocess.mean_std(name)  # a name this version knows, or a clear error
    return name


def features(run: str | Path, view, split: str, layers: tuple[str, ...], *, device: str = "auto", batch: int = 128,
             pool: int | None = None, max_gb: float = 20.0, backend: str = "dali") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of ``layers`` for every sample of a view split (rows in the view's key order) and their labels."""
    from ..loading import Loader, LoaderConfig
    from ..data.views import View, open_view

    view = view if isinstance(view, View) else open_view(view)
    dev = resolve(device)
    model, blob = load_model(run, dev)
    check_layers(blob, layers)
    crop = input_size(model, blob)
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
        shapes = {l: pooled(probe[l], pool).shape[1:] for l in todo}
        need = sum(n * int(np.prod(s)) * 2 for s in shapes.values()) / 1e9
        if need > max_gb:
            raise FastFTError(f"features of {todo} for {n} images need {need:.1f} GB (> max_gb {max_gb}); pass pool=N to max-pool conv maps to NxN")
        outs = {l: np.lib.format.open_memmap(str(paths[l]) + ".tmp.npy", mode="w+", dtype=np.float16, shape=(n, int(np.prod(shapes[l]))))
                for l in todo}
        rows = 0
        from ..util.progress import bar

        with torch.no_grad():  # a progress bar on a terminal only
            for x, y, w in bar(loader.epoch(0), total=len(loader), desc=f"{Path(run).name}: {split} features ({', '.join(todo)})",
                               unit="batch", enabled=None, leave=False):
                keep = w > 0
                feats = model(x[keep], taps=tuple(todo))
                k = int(keep.sum())
                for l in todo:
                    outs[l][rows:rows + k] = pooled(feats[l], pool).flatten(1).float().cpu().numpy()
                rows += k
        if rows != n:
            raise FastFTError(f"extracted {rows} of {n} samples")
        for l in todo:
            outs[l].flush()
            del outs[l]
            Path(str(paths[l]) + ".tmp.npy").replace(paths[l])
    labels = loader.src.labels.copy()
    return {l: np.load(paths[l], mmap_mode="r") for l in layers}, labels


def pooled(t: torch.Tensor, pool: int | None) -> torch.Tensor:
    """``t``, its conv maps max-pooled to ``pool``×``pool`` when larger (an explicit option; the paper uses full maps)."""
    if pool and t.dim() == 4 and t.shape[-1] > pool:
        return torch.nn.functional.adaptive_max_pool2d(t, pool)
    return t
