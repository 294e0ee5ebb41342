"""The paper's augmentation outside DALI, with DALI's semantics: crop (top-left half up, as DALI) + mirror +
per-channel normalisation of uint8 HWC images on torch, and the §4.6 transforms of augmented copies on PIL. The
PyTorch fallback and the decoded-image cache use these; :mod:`fastft.loading.dali` holds the same graph for DALI.
"""
from __future__ import annotations

import math

import torch

from .samples import SampleSource


def _torch_augment(img: torch.Tensor, cx: float, cy: float, mirror: int, crop: int) -> torch.Tensor:
    """Crop/mirror of one HWC uint8 image, same semantics as DALI's crop_mirror_normalize (normalisation is batched)."""
    h, w = img.shape[:2]
    if h < crop or w < crop:  # pad like DALI's out_of_bounds_policy="pad"
        pad = torch.zeros(max(h, crop), max(w, crop), 3, dtype=img.dtype)
        pad[:h, :w] = img
        img, h, w = pad, max(h, crop), max(w, crop)
    y0, x0 = math.floor(cy * (h - crop) + 0.5), math.floor(cx * (w - crop) + 0.5)  # half up, as DALI (not round()'s half to even)
    out = img[y0:y0 + crop, x0:x0 + crop]
    return out.flip(1) if mirror else out


def _crop(images, slot, x0, y0, mirror, crop: int) -> torch.Tensor:
    """Crop (top-left ``y0``, ``x0``) + mirror of ``images[slot]`` (uint8 [M, H, W, 3]) as one gather → uint8 [k, c, c, 3]."""
    ar = torch.arange(crop, device=images.device)
    rows = y0[:, None] + ar
    cols = torch.where(mirror[:, None], x0[:, None] + (crop - 1 - ar), x0[:, None] + ar)
    return images[slot[:, None, None], rows[:, :, None], cols[:, None, :]]


def _crop_normalize(images, slot, x0, y0, mirror, mean, std, crop: int, fp16: bool, channels_last: bool) -> torch.Tensor:
    """:func:`_crop` then normalise → [k, 3, c, c]: the form :func:`torch.compile` fuses into one kernel."""
    y = ((_crop(images, slot, x0, y0, mirror, crop).float() - mean) / std).to(torch.float16 if fp16 else torch.float32)
    y = y.permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fp16: bool, channels_last: bool) -> torch.Tensor:
    """uint8 [k, h, w, 3] → normalised [k, 3, h, w] (NHWC memory if ``channels_last``), as DALI's crop_mirror_normalize.
    float16 output is computed in float16 (two kernels; uint8 values are exact in float16)."""
    if fp16:
        y = x.to(torch.float16).mul_(1 / std.half()).add_(-(mean / std).half())
    else:
        y = (x.float() - mean) / std
    y = y.permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def _pil_decode(src: SampleSource, i: int):
    """Sample ``i`` as an RGB PIL image, with its §4.6 transforms if it is an augmented copy (the fallback's decode)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(src.jpeg(i).tobytes())).convert("RGB")
    if src.aug is not None and src.aug["scale"][i] != 1.0:
        im = _pil_augment(im, {k: float(src.aug[k][i]) for k in SampleSource.AUG})
    return im


def _pil_augment(im, a: dict):
    """The §4.6 transforms of an augmented copy, as in the DALI graph (rotation, scaled crop resized back, colour)."""
    from PIL import Image, ImageEnhance

    w, h = im.size
    im = im.rotate(a["angle"], resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    cw, ch = a["scale"] * w, a["scale"] * h
    x0, y0 = a["u"] * (w - cw), a["v"] * (h - ch)
    im = im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    im = ImageEnhance.Brightness(im).enhance(a["bright"])
    im = ImageEnhance.Contrast(im).enhance(a["contrast"])
    return ImageEnhance.Color(im).enhance(a["sat"])
