"""The input preprocessing a model is trained with: per-channel mean and scale, by name. Torch-free.

Every place that feeds a model — the DALI graph, the PyTorch fallback, both cache tiers, evaluation, the analyses and
the class-model images — takes ``(mean, std)`` from here, by the name a run records (``TrainConfig.preprocess``,
``model.pt``'s ``preprocess``), so a model is never fed pixels on a scale it was not trained on.

* ``caffe`` (the default, the paper's recipe): pixels on Caffe's 0–255 scale minus the per-channel mean of
  ILSVRC2012 (Caffe's ``ilsvrc_2012_mean.npy``, averaged over its 256×256 mean image: B 104.007, G 116.669,
  R 122.679), no division. The paper trained ``bvlc_alexnet`` in Caffe, which feeds mean-subtracted 0–255 pixels; the
  paper's init (N(0, 0.01) weights, biases of 1) is tuned to that scale: with inputs divided by ~58 the signal reaching
  fc6/fc7 at init hardly depends on the image (their across-sample spread is ~1/40 of Caffe's around a bias-driven mean
  of ~1), and under bf16 (a step of ~0.008 near 1.0) it is rounding noise (``benchmarks/learning.py`` measures this).

  Two differences from ``bvlc_alexnet``, neither of which changes what a model learns: channels stay in RGB order
  (Caffe reads BGR; for a model trained here that is a fixed permutation of conv1's input weights, and every model of a
  study is trained here), and the mean is per channel, not Caffe's 256×256 mean image cropped with the input (the
  image's spatial variation is small next to the per-channel mean; Caffe's own later recipes use ``mean_value``, the
  per-channel form). Weights converted from Caffe need BGR input: not a case fastft serves.
* ``imagenet``: ``(x − mean) / std`` with torchvision's ImageNet statistics, fastft's choice before 2026-12 (kept for
  runs trained with it, and for torchvision-style models). Model files without a ``preprocess`` entry predate the key
  and were trained with it.

What a model saw is also its geometry (:func:`resize_steps`, :func:`centre_crop_offset`): the store's ``--resize``
(``fastft shard``, bilinear), for a store without a fixed size evaluation's resize of the shorter side to
``round(crop · 256 / 227)`` (256 for the paper's 227), then the centre crop. ``model.pt`` records all of it
(:func:`describe`), so the model can be fed outside fastft exactly as fastft's evaluation fed it (:mod:`fastft.inference`).
"""
from __future__ import annotations

from .errors import FastFTError

PREPROCESSING: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "caffe": ((122.679, 116.669, 104.007), (1.0, 1.0, 1.0)),
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
DEFAULT = "caffe"
LEGACY = "imagenet"  # model files written before the preprocessing was recorded


def mean_std(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per RGB channel on the 0–255 scale: the model sees ``(pixel − mean) / std``."""
    try:
        return PREPROCESSING[name]
    except KeyError:
        raise FastFTError(f"preprocess must be one of {', '.join(PREPROCESSING)}, got {name!r}") from None


def eval_short_side(crop: int) -> int:
    """The shorter side evaluation (and training) resizes images to before cropping, on a store without a fixed
    image size: the paper's 256 for its 227 crops, in proportion for other crops."""
    return round(crop * 256 / 227)


def resize_steps(store_resize: str, crop: int) -> list:
    """The resizes an image goes through before evaluation crops it, in order: the store's (``fastft shard
    --resize``), then evaluation's for a store without a fixed size. Each step is ``[W, H]`` (exactly that size) or
    ``N`` (the shorter side to N, each side scaled by ``N / shorter`` and rounded), bilinear."""
    from .data.store import parse_resize

    kind, w, h = parse_resize(store_resize)
    return [[w, h]] if kind == "exact" else [w, eval_short_side(crop)] if kind == "short" else [eval_short_side(crop)]


def default_resize(crop: int) -> list:
    """The resize of a model file that records none and whose run is not at hand: the paper's square store
    (256×256 for 227 crops; 80×80 for the demo's 71)."""
    s = eval_short_side(crop)
    return [[s, s]]


def centre_crop_offset(side: int, crop: int) -> int:
    """Where evaluation's centre crop starts along a side: DALI's ``crop_pos 0.5`` rounds half up
    (``floor((side − crop) / 2 + 0.5)``), one pixel further than ``round()``'s half to even (torchvision's
    ``CenterCrop``) when ``side − crop`` is odd."""
    return (side - crop + 1) // 2


def describe(name: str, crop: int | None = None, store_resize: str | None = None) -> dict:
    """What a model file records about its input, so that it can be used outside fastft: the scale, and with
    ``crop`` and the store's ``--resize`` the geometry (``resize`` steps as :func:`resize_steps`, ``crop``)."""
    mean, std = mean_std(name)
    out = {"name": name, "mean": list(mean), "std": list(std), "scale": "0-255", "channels": "RGB"}
    if crop is not None and store_resize is not None:
        out.update(resize=resize_steps(store_resize, crop), crop=crop, interpolation="bilinear")
    return out
