"""A trained model outside fastft: :func:`load_model` reads a finished run (or a ``model.pt``) into a
:class:`LoadedModel` — the ``nn.Module`` in eval mode, built through the model registry (:mod:`fastft.models`) from the
file's own ``model_config``, its preprocessing, its classes and their names, and a torchvision transform (PIL image →
tensor) that does what fastft's evaluation does to an image.

Evaluation's pixels (:mod:`fastft.loading`: DALI's graph, the PyTorch fallback) are the store's JPEG, resized as
``fastft shard --resize`` did (and, on a store without a fixed size, its shorter side to ``round(crop · 256/227)``),
centre-cropped at DALI's offset (:func:`fastft.preprocess.centre_crop_offset`) and normalised per channel on the
0–255 scale. The transform makes the same steps from any image, so a store's own images come out as evaluation saw
them, bit for bit where the store has a fixed size (a store without one is resized in DALI during evaluation, whose
bilinear filter rounds a little differently from Pillow's). An image outside a store skips one step the store's
images went through: ``fastft shard`` re-encodes every image as a JPEG (quality 90) after resizing it.

Files are read through :func:`fastft.weights.read_model` (no code in a file runs; a run's ``model.pt`` is checked
against the sha256 its ``final.json`` records). ``model.pt`` records its geometry since 2026-12-04; for an older file
it is derived from the run's ``config.json`` (its ``crop``, its store's ``--resize``), or, for a file without its
run, taken as the paper's: the crop from the model's ``input_size``, images resized to S×S with
S = ``round(crop · 256/227)`` (256×256 for 227, 80×80 for the demo's 71); ``LoadedModel.preprocess_from`` says which.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from . import preprocess as prep
from . import runs
from .errors import FastFTError

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class LoadedModel:
    """A trained model, ready for use outside fastft. ``module(transform(img)[None])`` gives its logits."""
    module: object          # the torch.nn.Module, in eval mode, on ``device``
    preprocess: dict        # name, mean, std (RGB, 0-255 scale), scale, channels, resize steps, crop, interpolation
    classes: list           # class ids in label order (ILSVRC wnids for ImageNet stores)
    class_names: list       # a human name per class (WordNet's first lemma for a wnid; the id itself otherwise)
    path: Path              # the model file read
    model_name: str         # the registered model (fastft.models)
    run_id: str | None
    preprocess_from: str    # where the geometry came from: "model.pt" | "run config" | "defaults"
    device: str = "cpu"

    @functools.cached_property
    def transform(self):
        """PIL image → float tensor [3, crop, crop]: evaluation's preprocessing (see the module docstring)."""
        from torchvision import transforms

        p = self.preprocess
        return transforms.Compose([ToRGB(), Resize(p["resize"]), CentreCrop(p["crop"]), transforms.PILToTensor(),
                                   ToFloat(), transforms.Normalize(p["mean"], p["std"])])

    def logits(self, images, batch_size: int = 64):
        """The model's logits [n, classes] for PIL images (a list, or one image), in fp32 without gradients."""
        import torch

        images = images if isinstance(images, (list, tuple)) else [images]
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = torch.stack([self.transform(im) for im in images[i:i + batch_size]]).to(self.device)
                out.append(self.module(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def predict(self, images, topk: int = 1) -> list[list[tuple[str, str, float]]]:
        """For each image, its ``topk`` classes as ``(class id, class name, probability)``, most probable first."""
        p = self.logits(images).softmax(1)
        top = p.topk(min(topk, p.shape[1]), 1)
        return [[(self.classes[j], self.class_names[j], float(v)) for v, j in zip(vs.tolist(), js.tolist())]
                for vs, js in zip(top.values, top.indices)]


def load_model(run_or_file: str | Path, device: str = "cpu") -> LoadedModel:
    """A finished run's model (a run directory: its ``model.pt``), or a ``model.pt`` file, with its preprocessing and
    classes. A run that has not finished, or whose ``model.pt`` does not match its ``final.json``, is a
    :class:`FastFTError` saying so."""
    from . import weights

    device = _device(device)
    p = Path(run_or_file)
    if p.is_dir():
        _check_finished(p)
    elif not p.exists():
        raise FastFTError(f"{p} does not exist: give a run directory or a model.pt file")
    mf = weights.read_model(p, "model")
    run_dir = p if p.is_dir() else (p.parent if p.name == MODEL_FILE and (p.parent / "config.json").exists() else None)
    pre, source = _preprocessing(mf, run_dir)
    classes = list(mf.classes) if mf.classes is not None else [str(i) for i in range(mf.config.num_classes)]
    return LoadedModel(mf.model(device), pre, classes, class_names(classes), mf.path, mf.model_name, mf.run_id, source,
                       str(device))


def _device(device) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (a ``torch.device`` too), checked before any file is read."""
    import torch

    from .util.device import resolve

    name = resolve(str(device))  # auto: cuda where torch sees a GPU, else cpu
    try:
        d = torch.device(name)
    except (RuntimeError, TypeError):
        raise FastFTError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise FastFTError(f"device {name!r}: torch sees no CUDA GPU here; use device='cpu' (or 'auto')")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise FastFTError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if d.type not in ("cpu", "cuda"):
        raise FastFTError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return name


def _check_finished(run_dir: Path) -> None:
    """A run directory (``config.json``) must hold a finished run; a plain directory, a ``model.pt``."""
    if not (run_dir / "config.json").exists():
        if (run_dir / MODEL_FILE).exists():
            return
        raise FastFTError(f"{run_dir} is not a run directory (no config.json, no {MODEL_FILE}): give a finished run or "
                          "a model.pt file")
    if runs.is_finished(run_dir):
        return
    from .guard import FAILED

    try:
        failed = runs.read_json(run_dir / FAILED, "")
    except FastFTError:
        failed = {}
    why = f"it failed ({failed.get('reason', 'see train.log')})" if failed else (
        "its final.json is damaged" if (run_dir / "final.json").exists() else "it has no final.json")
    raise FastFTError(f"run {run_dir} has not finished: {why}; re-run its fastft train command "
                      f"(fastft train {run_dir / runs.REPLAY}) to finish it, then load it")


def _preprocessing(mf, run_dir: Path | None) -> tuple[dict, str]:
    """The file's input description, completed for older files: from the run's config, else the defaults."""
    pre = dict(mf.preprocessing or {})
    name = pre.get("name") or prep.LEGACY  # files without a preprocess entry were trained with imagenet's
    full = {**prep.describe(name), **pre}
    if "resize" in pre and "crop" in pre:
        return full, "model.pt"
    crop, store_resize = _from_run(run_dir) if run_dir else (None, None)
    crop = crop or getattr(mf.config, "input_size", None)
    if not isinstance(crop, int):
        raise FastFTError(f"{mf.path} records no crop (an older model.pt) and its model has no input_size; load it "
                          "from its run directory, which records the crop")
    if store_resize:
        return {**full, "resize": prep.resize_steps(store_resize, crop), "crop": crop, "interpolation": "bilinear"}, "run config"
    return {**full, "resize": prep.default_resize(crop), "crop": crop, "interpolation": "bilinear"}, "defaults"


def _from_run(run_dir: Path) -> tuple[int | None, str | None]:
    """(crop, the store's --resize) a run recorded; None where its config, view or store cannot be read."""
    from .data.views import open_view

    try:
        cfg = runs.read_config(run_dir).get("config", {})
    except FastFTError:
        return None, None
    crop = cfg.get("crop") if isinstance(cfg.get("crop"), int) else None
    view = runs.locate(cfg.get("view"), run_dir, "views")
    try:
        return crop, open_view(view, check_store=False).resize if view else None
    except (FastFTError, OSError, ValueError, KeyError):
        return crop, None


def class_names(classes: list) -> list:
    """A human name per class: WordNet's first lemma where the class is an ILSVRC2012 wnid, else the id itself."""
    from .data.taxonomy import load

    h = load()
    return [h.name(c).replace("_", " ") if c in h.names else c for c in classes]


class ToRGB:
    """Any PIL image as 8-bit RGB, as ``fastft shard`` converts its inputs (alpha on white, 16-bit scaled, CMYK by
    Pillow)."""
    def __call__(self, im):
        if im.mode == "RGB":
            return im
        from .data.shard.convert import _Rejected, _to_rgb

        try:
            return _to_rgb(im)
        except _Rejected as e:  # a mode fastft shard rejects too (LAB, HSV)
            name = getattr(im, "filename", "")
            raise FastFTError(f"image{' ' + name if name else ''}: {e}; convert it to RGB first") from None

    def __repr__(self):
        return "ToRGB()"


class Resize:
    """The resize steps of a model's preprocessing, in order, bilinear: ``[W, H]`` exactly that size, ``N`` the
    shorter side to N (each side scaled and rounded, as ``fastft shard --resize short:N`` and evaluation do). A step
    to the size an image has already leaves it as it is (Pillow copies it)."""
    def __init__(self, steps: list):
        self.steps = [tuple(s) if isinstance(s, (list, tuple)) else int(s) for s in steps]

    def __call__(self, im):
        from PIL import Image

        for s in self.steps:
            size = s if isinstance(s, tuple) else tuple(max(1, round(d * s / min(im.size))) for d in im.size)
            im = im.resize(size, Image.BILINEAR)
        return im

    def __repr__(self):
        return f"Resize({[list(s) if isinstance(s, tuple) else s for s in self.steps]}, bilinear)"


class CentreCrop:
    """The centre ``crop``×``crop`` at DALI's offset (half up: one pixel further than torchvision's ``CenterCrop``
    when the margin is odd); a side shorter than the crop is padded with black at its end, as the PyTorch fallback
    does (no resize step leaves one: a fixed-size store's crop fits it, the shorter-side step makes it larger)."""
    def __init__(self, crop: int):
        self.crop = int(crop)

    def __call__(self, im):
        c = self.crop
        x0, y0 = (prep.centre_crop_offset(s, c) if s >= c else 0 for s in im.size)
        return im.crop((x0, y0, x0 + c, y0 + c))  # Pillow fills outside the image with black

    def __repr__(self):
        return f"CentreCrop({self.crop}, offset floor((side - crop) / 2 + 0.5))"


class ToFloat:
    """uint8 tensor → float32, values kept on the 0–255 scale (the mean and std are on that scale)."""
    def __call__(self, x):
        import torch

        return x.to(torch.float32)

    def __repr__(self):
        return "ToFloat(0-255)"
