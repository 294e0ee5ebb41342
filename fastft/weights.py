"""Reading weights files without running code: the one loader for every ``.pt`` file fastft reads.

fastft reads model files (``model.pt`` of a run, a fine-tune ``source:``, a file given to ``fastft analyze``) and its
own checkpoints (``state.pt``, ``rng-<rank>.pt``). A ``.pt`` file is a pickle, and a full unpickler runs whatever
callables the file names — anyone who hands a researcher a model file could run code as that researcher. So every
such file goes through :func:`load`: ``torch.load(weights_only=True)``, PyTorch's restricted unpickler, which builds
only tensors, storages and plain containers (dicts, lists, tuples, strings, numbers) and refuses any other global.
There is no switch back to full pickle; a refusal is a :class:`FastFTError` naming the file and what it contained.

Why this and not safetensors + JSON: fastft's files already consist of exactly those types — a model file is
``{"model": state dict, "model_config": dict, "classes": [wnid, …], "run_id": str}``, a checkpoint holds the
optimiser's state dict (nested dicts with integer keys, which safetensors cannot hold) and plain numbers — so every
``model.pt`` written so far is read safely as it is, with no conversion step, and one format serves both. RNG states
are stored as plain data too (``fastft.trainer`` writes numpy's key vector as a list). The allow-list beyond torch's
defaults is empty for model files; for ``rng-<rank>.pt`` files written by earlier fastft versions (numpy's state as an
ndarray) it holds numpy's array reconstruction, which builds arrays of numbers and nothing else.

What a file says about itself (its model config, classes, run id) is checked like a config (:func:`read_model`): a
wrong or missing field is a :class:`FastFTError`, never a ``KeyError`` deep in the trainer. ``model_config`` names
the registered model (:mod:`fastft.models`) and holds that model's ``Config``; a file written before models had
names (no ``name``) holds an AlexNet. ``preprocess`` (:func:`fastft.preprocess.describe`) is the input the model
was evaluated on: its scale (files from before 2026-12 have none: ``imagenet``) and, since the geometry was recorded,
the resize steps and the centre crop (older files: :mod:`fastft.inference` derives them from the run, or documented
defaults). A torchvision model's file also holds ``torchvision``: torchvision's model name and each tensor's
torchvision key, so that plain torchvision loads it (the README shows how).
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config, models, runs
from .errors import FastFTError

_NP_CORE = getattr(np, "_core", None) or np.core  # numpy 2 | numpy 1
# numpy's RNG state as an ndarray (rng-<rank>.pt of earlier fastft versions), under either numpy's module names
LEGACY_RNG_GLOBALS = [(_NP_CORE.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
                      (_NP_CORE.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                      type(np.dtype(np.uint32))]

MODEL_FORMAT = ("{model: state dict, model_config: {name, num_classes, the model's keys}, classes, run_id, "
                "preprocess: {name, mean, std, scale, channels, resize, crop, interpolation}}")
LEGACY_MODEL = "alexnet"  # the model of files written before model_config recorded a name


def load(path: str | Path, what: str, allow: list = ()):
    """The content of a torch file, loaded on the CPU without running code. ``what`` names the file in errors (e.g.
    "finetune source"); ``allow``: globals beyond torch's safe defaults (see :data:`LEGACY_RNG_GLOBALS`)."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise FastFTError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise FastFTError(f"{what} {path} cannot be read: {e.strerror}") from None
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore")  # torch's protocol warning on plain pickles: the error below says more
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise FastFTError(_refusal(path, what, str(e))) from None
    except Exception as e:  # whatever else the reader raises (zip, EOF, index errors): the file is not a whole torch file
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise FastFTError(f"{what} {path} is not a readable PyTorch file: truncated, damaged or another format "
                          f"({type(e).__name__}{': ' + first if first else ''})") from None


def _refusal(path: Path, what: str, msg: str) -> str:
    """torch's UnpicklingError (a screen of advice to turn the check off) as one line that says what was found."""
    glob = re.search(r"GLOBAL ([\w.]+)", msg)
    if glob:
        return (f"{what} {path} was refused: it refers to {glob[1]}, which is neither weights nor plain data "
                "(unpickling it would run arbitrary code); fastft reads weights files without running code, so use "
                "only files of tensors and plain data, such as a fastft model.pt")
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", msg, re.S)
    reason = detail[1].splitlines()[0] if detail else msg.strip().splitlines()[0]
    return (f"{what} {path} is not a PyTorch weights file: another format, or a pickle with instructions that "
            f"torch.save does not write ({reason[:160]})")


@dataclass(frozen=True)
class ModelFile:
    """A checked model file: weights, the architecture they fit, and what they were trained on."""
    path: Path
    state: dict                 # state dict: name -> tensor
    config: object              # the model's Config (fastft.models)
    classes: list | None        # wnids in label order (None: not recorded)
    run_id: str | None
    preprocess: str | None = None  # the input preprocessing's name, when the file records one ({"name": …, …})
    model_name: str = LEGACY_MODEL  # the registered model (fastft.models) its weights fit
    preprocessing: dict | None = None  # the whole recorded entry (fastft.preprocess.describe), when there is one

    @property
    def model_config(self) -> dict:
        """``model_config`` as a model file records it: the model's name and its config."""
        return {"name": self.model_name, **vars(self.config)}

    def model(self, device: str = "cpu"):
        """The model it describes, with its weights, in eval mode."""
        m = models.build(self.model_name, **vars(self.config))
        try:
            m.load_state_dict(self.state)
        except RuntimeError as e:
            raise FastFTError(f"{self.path}: its weights do not fit its model_config {self.model_config}: "
                              f"{' '.join(str(e).split())[:200]}") from None
        return m.to(device).eval()


def read_model(path: str | Path, what: str = "model file") -> ModelFile:
    """A model file (or a run directory's ``model.pt``), loaded safely and checked. A ``model.pt`` beside the
    ``final.json`` that recorded its sha256 must match it (a damaged or replaced file is named before it is read)."""
    p = Path(path)
    f = p / "model.pt" if p.is_dir() else p
    if not f.exists():
        if p.is_dir() and not (p / "config.json").exists():
            found = sum(1 for _ in p.glob("*/config.json"))  # a runs directory given for one of its runs
            raise FastFTError(f"{what} {p} is not a run directory (no config.json)" +
                              (f"; it holds {found} run(s): name one of them (e.g. {p}/<name>-<id>)" if found else ""))
        if p.is_dir():
            raise FastFTError(f"{what} {p} has no model.pt" + ("" if runs.is_finished(p) else " (the run has not finished; train it first)"))
        raise FastFTError(f"{what} {p} does not exist")
    runs.verify_model(f)
    return check_model(load(f, what), f)


def read_source(path: str | Path, model: str, what: str = "finetune source") -> tuple[ModelFile, str]:
    """A fine-tune's source for model ``model``: a run directory or a fastft model file (:func:`read_model`), or — for
    a model with a torchvision name (:mod:`fastft.models.torchvision`) — a plain torchvision state dict, such as
    ``torch.save(torchvision.models.resnet50(weights=…).state_dict(), f)`` or a file of torch hub's cache. Read
    safely like every weights file (:func:`load`), its keys mapped onto fastft's module and checked (a state dict of
    another model is named by its missing and unexpected keys); it records no classes and no run, and its input scale
    is torchvision's (``imagenet``). Returns the file and the source's id in the fine-tune's identity: its run id (a
    fastft file without one: its path), a state dict's content hash."""
    p = Path(path)
    if p.is_dir():
        mf = read_model(p, what)
        return mf, mf.run_id or str(mf.path)
    runs.verify_model(p)
    blob = load(p, what)
    if not _bare_state_dict(blob):
        mf = check_model(blob, p)
        return mf, mf.run_id or str(mf.path)
    tv = models.spec(model).torchvision
    if tv is None:
        from .models import torchvision as tvm

        fits = tvm.fitting(tvm.unwrap(blob))
        hint = (f"it is torchvision's {' / '.join(fits)} state dict: set model={fits[0]}" if fits else
                "a plain torchvision state dict is read for torchvision's models (model=resnet18, resnet50, vgg16_bn, "
                "tv-alexnet, …)")
        raise FastFTError(f"{what} {p} is a bare state dict, without the model_config that says which model it fits; "
                          f"model {model} reads fastft model files; {hint}")
    state, cfg = models.module(model).adopt(blob, f"{what} {p}")
    return ModelFile(p, state, cfg, None, None, "imagenet", model), f"torchvision {tv} sha256:{runs.sha256_file(p)}"


def _bare_state_dict(blob) -> bool:
    return isinstance(blob, dict) and bool(blob) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items())


def check_model(blob, f: Path) -> ModelFile:
    """Validate a loaded model file's content like a config."""
    if not isinstance(blob, dict):
        raise FastFTError(f"{f} is not a fastft model file: it holds a {type(blob).__name__}, not {MODEL_FORMAT}")
    missing = [k for k in ("model", "model_config") if k not in blob]
    if missing:
        bare = blob and all(isinstance(v, torch.Tensor) for v in blob.values())
        raise FastFTError(f"{f} is not a fastft model file: " +
                          ("it is a bare state dict, without the model_config that says which model it fits" if bare
                           else f"it has no {' or '.join(missing)} (its keys: {', '.join(map(str, list(blob)[:8]))})") +
                          f"; expected {MODEL_FORMAT}")
    state, mc = blob["model"], blob["model_config"]
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise FastFTError(f"{f}: 'model' must be a state dict (parameter name -> tensor)")
    if not isinstance(mc, dict):
        raise FastFTError(f"{f}: model_config must be a mapping, got {type(mc).__name__}")
    name, cfg = _model_config(mc, f)
    classes = blob.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
                                    and len(classes) == cfg.num_classes):
        raise FastFTError(f"{f}: classes must be a list of {cfg.num_classes} class names (wnids), one per output")
    run_id = blob.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise FastFTError(f"{f}: run_id must be a string, got {type(run_id).__name__}")
    pre = blob.get("preprocess")
    if pre is not None and not (isinstance(pre, dict) and isinstance(pre.get("name"), str)):
        raise FastFTError(f"{f}: preprocess must be a mapping with the preprocessing's name, got {pre!r:.80}")
    if pre is not None:
        _check_preprocess(pre, f)
    tv = blob.get("torchvision")
    if tv is not None and not (isinstance(tv, dict) and isinstance(tv.get("name"), str) and isinstance(tv.get("keys"), dict)
                               and set(tv["keys"]) == set(state) and all(isinstance(v, str) for v in tv["keys"].values())):
        raise FastFTError(f"{f}: torchvision must be a mapping of torchvision's model name and, for every tensor in "
                          "'model', its torchvision key")
    return ModelFile(f, state, cfg, classes, run_id, pre["name"] if pre else None, name, pre)


def _check_preprocess(pre: dict, f: Path) -> None:
    """The recorded input description, where it gives them: three means, three positive stds, a crop, resize steps."""
    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

    def side(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    bad = None
    for k in ("mean", "std"):
        v = pre.get(k)
        if v is not None and not (isinstance(v, list) and len(v) == 3 and all(map(num, v)) and (k == "mean" or min(v) > 0)):
            bad = f"{k} must be 3 numbers (RGB{', each > 0' if k == 'std' else ''})"
    if "crop" in pre and not side(pre["crop"]):
        bad = "crop must be an integer >= 1"
    r = pre.get("resize")
    if r is not None and not (isinstance(r, list) and all(side(s) or isinstance(s, list) and len(s) == 2 and all(map(side, s)) for s in r)):
        bad = "resize must be a list of steps, each [W, H] or N (the shorter side), integers >= 1"
    if bad:
        raise FastFTError(f"{f}: preprocess {bad}; got {pre!r:.120}")


def _model_config(mc: dict, f: Path) -> tuple[str, object]:
    """(model name, its Config) of a file's ``model_config``, every field present and in range."""
    name = mc.get("name", LEGACY_MODEL)
    if not isinstance(name, str):
        raise FastFTError(f"{f}: model_config name must be a registered model's name, got {name!r:.80}")
    try:
        mod = models.module(name)
    except FastFTError as e:
        raise FastFTError(f"{f}: model_config: {e}") from None
    mc = {k: v for k, v in mc.items() if k != "name"}
    lacking = [k.name for k in dataclasses.fields(mod.Config) if k.name not in mc]
    if lacking:  # a model file states its whole architecture: a default here would build some other network
        raise FastFTError(f"{f}: model_config lacks {', '.join(lacking)}; expected {MODEL_FORMAT}")
    cfg = config.build(mod.Config, mc, f"{f}: model_config")
    bad = "num_classes" if not cfg.num_classes >= 1 else getattr(mod, "check_config", lambda c: None)(cfg)
    if bad:
        raise FastFTError(f"{f}: model_config {bad} {getattr(cfg, bad)!r} is out of range")
    return name, cfg


def load_checkpoint(ckpt: Path, rank: int) -> tuple[dict, dict | None]:
    """A checkpoint's ``state.pt`` (model, optimiser, epoch, loader position) and this rank's ``rng-<rank>.pt``
    (RNG states and the partial epoch's sums; None when the checkpoint has none for this rank)."""
    f = Path(ckpt) / "state.pt"
    st = load(f, "checkpoint file")
    _fields(st, f, {"model": dict, "opt": dict, "epoch": int, "loader": dict})
    rng = Path(ckpt) / f"rng-{rank}.pt"
    if not rng.exists():
        return st, None
    local = load(rng, "checkpoint file", allow=LEGACY_RNG_GLOBALS)
    _fields(local, rng, {"rng": dict})
    return st, local


def _fields(blob, f: Path, need: dict) -> None:
    if not isinstance(blob, dict):
        raise FastFTError(f"{f} is not a fastft checkpoint file (it holds a {type(blob).__name__})")
    for k, tp in need.items():
        if not isinstance(blob.get(k), tp):
            raise FastFTError(f"{f} is not a fastft checkpoint file: {k!r} is missing or not a {tp.__name__}")
