"""The recipe of one training run, torch-free: :class:`TrainConfig` (every key, its default and its help, once), its
validation, the run's identity and directory, and the LR schedule. ``fastft train --help``, the sweep's binding and
its dry run read these without importing torch."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .. import preprocess
from ..errors import FastFTError
from .. import models
from ..models import spec as model_spec
from ..util.device import precision_for, resolve
from . import transfer

MODES = ("scratch", "finetune")
SEED_MAX = (2 ** 32 - 1000) // 1000  # per-rank seeds seed * 1000 + 1 + rank stay below 2**32 (numpy's limit)
MIN_CROP = model_spec("alexnet").min_crop  # the paper's AlexNet's smallest input (one pixel left after pool5)
FREEZABLE = model_spec("alexnet").freezable
TRACKERS = ("tensorboard", "wandb")
MODEL_TRAIN_KEYS = ("width", "crop", "groups", "init")  # given to a model whose spec takes them (fastft.models)
MODEL_OPTIONS = ("conv1_pad",)  # train keys only some models take (their spec's options), not part of their Config


def key(default, help: str):
    """A config key's default and the line ``fastft train --help`` shows for it."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Data: ``view`` (a resolved view) or ``spec`` + ``set`` + ``store`` (resolved on the fly)."""
    view: str | None = key(None, "a resolved view directory (fastft subsets resolve), or give spec + set + store")
    spec: str | None = key(None, "a subset spec (fastft subsets make): with set and store, the view is resolved on the fly")
    set: str = key("target", "the spec's set to train on (near, far, target, …)")
    store: str | None = key(None, "the shard store (fastft shard)")
    mode: str = key("scratch", "scratch | finetune")
    source: str | None = key(None, "finetune: a run directory (its model.pt), a model.pt file, or a torchvision state dict (.pth) for model=")
    freeze: int = key(0, "keep the model's first n layers fixed (AlexNet: conv1 … the n-th, n = 0…7, up to fc7; "
                         "ResNet: stem, layer1 … layer4, n = 0…5; vgg16_bn, tv-alexnet: conv1 … fc7, n = 0…7)")
    copy: int | None = key(None, "finetune: copy only the source's first n layers (AlexNet: conv1 … the n-th, n = 1…7; "
                                 "ResNet: stem, layer1 … layer4, pool, n = 1…6) and "
                                 "re-initialise the rest from the seed (Yosinski et al. 2014; freeze ≤ n); default: every layer but the head")
    allow_overlap: bool = key(False, "allow a source that shares some (not all) classes with the target")
    epochs: int = key(100, "training epochs")
    lr: float | None = key(None, "default: 0.01 scratch, 0.001 finetune (§3)")
    lr_step: int = key(20, "multiply the LR by lr_gamma every lr_step epochs")
    lr_gamma: float = key(0.1, "the step LR's factor (1 = constant)")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(5e-4, "L2 weight decay")
    batch_size: int = key(256, "global (all ranks together)")
    seed: int = key(0, "the run's seed: initialisation, data order, augmentation, dropout (part of the run id)")
    model: str = key("alexnet", "the architecture, a registered model (fastft.models): {models}")
    width: float = key(1.0, "the paper's AlexNet only: width multiplier (1.0 = the paper)")
    crop: int = key(227, "input size (random crop of the stored image; torchvision's recipe: 224)")
    groups: bool = key(False, "the paper's AlexNet only: Caffe's grouped conv2/4/5")
    init: str = key("paper", "the paper's AlexNet only: paper (§3) | paper-scaled (the paper's per-layer gains at width < 1 "
                             "or crop < 227) | kaiming")
    preprocess: str = key("auto", "input scale: caffe = mean-subtracted 0-255 pixels, as the paper's Caffe AlexNet; "
                                  "imagenet = (x - mean) / std with torchvision's statistics; auto = the model's own "
                                  "(caffe for alexnet, imagenet for torchvision's models); the run records the one used")
    bias_lr_mult: float = key(2.0, "Caffe's bvlc_alexnet: biases learn at 2x the LR ...")
    bias_decay_mult: float = key(0.0, "... and are not decayed (1, 1: one SGD group, fastft before 2026-12)")
    head_lr_mult: float = key(10.0, "finetune: the new fc8 learns at 10x the LR (Caffe's fine-tuning example; the paper does not say)")
    plateau_epochs: int = key(10, "flag the run 'did not learn' if its train loss is not below (1 - plateau_tol) × "
                                  "ln(classes) (the uniform-prediction loss) after this many epochs (or at its last, if "
                                  "fewer): on that plateau, or above it; 0 = off")
    plateau_tol: float = key(0.02, "see plateau_epochs")
    augment_to: int = key(0, "§4.6: grow each training class to this many images with transformed copies")
    # infrastructure: not part of the run's identity
    out: str = key("runs", "runs directory (the run's directory is <out>/<name>-<run id>)")
    name: str | None = key(None, "the run directory's prefix (default: the mode)")
    backend: str = key("dali", "dali | pytorch")
    device: str = key("auto", "auto | cpu | cuda")
    precision: str = key("auto", "auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32")
    compile: bool | str = key("auto", "torch.compile the model; auto = on GPUs, off on CPU")
    cuda_graph: bool = key(True, "single-GPU runs: replay the whole step as one CUDA graph (see fastft.train.step)")
    fused_sgd: bool = key(True, "on GPUs: SGD's update as one fused kernel (same arithmetic as the foreach update)")
    conv1_pad: int = key(8, "the paper's AlexNet on GPUs: feed conv1 this many input channels (3 + zeros; "
                            "AlexNet.pad_input): 0, 4 or 8")
    channels_last: bool = key(True, "on GPUs: NHWC activations")
    num_threads: int = key(0, "CPU threads for torch and the loader (0 = the run's share of the cores)")
    hw_decoder_load: float = key(1.0, "GPU decoding: share of JPEGs on the hardware decoder (A100/H100/H200)")
    cpu_decode: float = key(0.6, "GPU decoding: share of each batch DALI decodes on the host cores instead (see README)")
    cache: bool | str = key("auto", "keep decoded training images in device memory; auto = on GPUs for fixed-size stores")
    cache_gb: float = key(0.0, "cache budget; 0 = 80 % of free GPU memory (images beyond it go to host_cache_gb)")
    host_cache_gb: float | str = key("auto", "second cache tier in pinned host memory; auto = half the RAM / (runs × ranks) "
                                             "on the node; 0 = off")
    host_gather: str = key("staged", "how host-tier images reach the GPU: staged (a CPU thread gathers them into pinned "
                                     "buffers) or gpu (the GPU reads each crop from pinned memory itself); same batches")
    eval_every: int = key(1, "evaluate every n epochs (and after the last)")
    checkpoint_every: int = key(1, "checkpoint every n epochs")
    keep_checkpoints: int = key(2, "complete checkpoints kept (the newest that verifies is resumed)")
    trackers: tuple[str, ...] = key((), "[tensorboard] and/or [wandb]: event files in the run directory (see README)")
    log_every: int = key(50, "trackers: log the training loss every n steps (0 = per epoch only)")
    tracker_project: str | None = key(None, "W&B project (default: the runs directory's name; a sweep: its --out)")
    tracker_group: str | None = key(None, "W&B group (a sweep: the plan)")
    tracker_tags: tuple[str, ...] = key((), "W&B tags (a sweep: template and seed)")
    progress: bool = key(True, "a progress bar on the terminal")

    def __post_init__(self):
        # preprocess auto is resolved here, once: everything downstream (the loaders, the run's identity and config,
        # model.pt) sees the model's own input scale by name, as if it had been given (an AlexNet run's id unchanged)
        if self.preprocess == "auto" and self.model in models.REGISTRY:
            object.__setattr__(self, "preprocess", model_spec(self.model).preprocess)

    def validate(self) -> None:
        """Every key's range, before any work (types are checked by ``fastft.config``)."""
        self._validate_model()
        self._validate_numbers()
        if self.mode not in MODES:
            raise FastFTError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.view is None and (self.spec is None or self.store is None):
            raise FastFTError("give either view: <view dir> or spec: + set: + store:")
        if self.mode == "finetune" and not self.source:
            raise FastFTError("mode finetune needs source: <run dir or model.pt>")
        if self.mode == "scratch" and (self.source or self.freeze):
            raise FastFTError("mode scratch takes no source and no freeze; use mode finetune")
        transfer.check(self.model, self.mode, self.source, self.copy, self.freeze)
        for k, allowed in (("backend", ("dali", "pytorch")), ("device", ("auto", "cpu", "cuda")),
                           ("precision", ("auto", "bf16", "fp32")), ("host_gather", ("staged", "gpu"))):
            if getattr(self, k) not in allowed:
                raise FastFTError(f"{k} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {getattr(self, k)!r}")
        for k in ("compile", "cache"):
            if getattr(self, k) not in (True, False, "auto"):
                raise FastFTError(f"{k} must be true, false or auto, got {getattr(self, k)!r}")
        if not (self.host_cache_gb == "auto" or isinstance(self.host_cache_gb, (int, float)) and 0 <= self.host_cache_gb < math.inf):
            raise FastFTError(f"host_cache_gb must be auto or a number of GB >= 0, got {self.host_cache_gb!r}")
        for k in ("hw_decoder_load", "cpu_decode"):
            if not (isinstance(getattr(self, k), (int, float)) and 0 <= getattr(self, k) <= 1):
                raise FastFTError(f"{k} is a share: 0 to 1, got {getattr(self, k)!r}")
        if self.conv1_pad not in (0, 4, 8):
            raise FastFTError(f"conv1_pad must be 0, 4 or 8, got {self.conv1_pad!r}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise FastFTError(f"trackers: {unknown[0]!r} is not one of {', '.join(TRACKERS)}")
        if self.preprocess not in preprocess.PREPROCESSING:  # auto was resolved to the model's own (__post_init__)
            raise FastFTError(f"preprocess must be one of auto, {', '.join(preprocess.PREPROCESSING)}, got {self.preprocess!r}")

    def _validate_model(self) -> None:
        """A registered model, given only the keys it takes: a key it would ignore is a mistake named now."""
        s = model_spec(self.model)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for k in (*MODEL_TRAIN_KEYS, *MODEL_OPTIONS):
            takes = k in s.keys or k in s.options or k == "crop"  # crop also sizes the loader's images
            if not takes and getattr(self, k) != defaults[k]:
                raise FastFTError(f"{k} {getattr(self, k)!r}: model {self.model} takes no {k} (its keys: "
                                  f"{', '.join([*s.keys, *s.options]) or 'none'}); leave {k} unset")
        for k, allowed in s.choices.items():
            if getattr(self, k) not in allowed:
                raise FastFTError(f"{k} must be one of {', '.join(allowed)} (model {self.model}), got {getattr(self, k)!r}")
        if self.crop < s.min_crop:
            raise FastFTError(f"crop must be >= {s.min_crop} ({self.model}'s smallest input), got {self.crop!r}")

    def _validate_numbers(self) -> None:
        def need(key: str, ok, rule: str) -> None:
            v = getattr(self, key)
            if isinstance(v, float) and not math.isfinite(v) or not ok(v):
                raise FastFTError(f"{key} must be {rule}, got {v!r}")

        for k in ("epochs", "batch_size", "lr_step", "eval_every", "checkpoint_every", "keep_checkpoints"):
            need(k, lambda v: v >= 1, ">= 1")
        for k in ("weight_decay", "num_threads", "augment_to", "cache_gb", "log_every"):
            need(k, lambda v: v >= 0, ">= 0")
        fz = model_spec(self.model).freezable
        need("freeze", lambda v: 0 <= v <= len(fz), f"0 … {len(fz)}" + (f" (the layers {fz[0]} … {fz[-1]} kept fixed)" if fz else ""))
        need("lr", lambda v: v is None or v > 0, "positive")
        # the LR is multiplied by lr_gamma every lr_step epochs: 1 keeps it constant, above 1 it would grow
        need("lr_gamma", lambda v: 0 < v <= 1, "in (0, 1]: the LR is multiplied by it every lr_step epochs (1 = constant)")
        need("momentum", lambda v: 0 <= v < 1, "in [0, 1)")
        # per-rank seeds are seed * 1000 + 1 + rank (numpy takes 32 bits)
        need("seed", lambda v: 0 <= v <= SEED_MAX, f"0 … {SEED_MAX}")
        need("width", lambda v: v > 0, "positive (1.0 = the paper's AlexNet)")
        for k in ("bias_lr_mult", "bias_decay_mult", "head_lr_mult"):  # Caffe's lr_mult / decay_mult
            need(k, lambda v: v >= 0, ">= 0")
        need("plateau_epochs", lambda v: v >= 0, ">= 0 (0 = no learning check)")
        need("plateau_tol", lambda v: 0 <= v < 1, "in [0, 1): a share of ln C")

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.mode == "scratch" else 0.001)


def key_help() -> list[tuple[str, str, str]]:
    """(key, default, help) of every TrainConfig key, in declaration order (``fastft train --help``)."""
    def shown(v) -> str:  # as YAML spells it
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        return "[]" if v == () else str(v)

    registered = ", ".join(sorted(models.REGISTRY))  # as registered now (a user's own models too)
    return [(f.name, shown(f.default), f.metadata.get("help", "").replace("{models}", registered))
            for f in dataclasses.fields(TrainConfig)]


def model_keys(cfg: TrainConfig) -> dict:
    """The config keys ``cfg.model`` is built with: the train keys it takes, under its own names."""
    return models.model_keys(cfg.model, {k: getattr(cfg, k) for k in MODEL_TRAIN_KEYS})


IDENTITY_KEYS = ("mode", "freeze", "epochs", "lr_step", "lr_gamma", "momentum", "weight_decay", "batch_size", "seed",
                 "width", "crop", "groups", "init", "augment_to", "preprocess", "bias_lr_mult", "bias_decay_mult", "head_lr_mult")
PATH_KEYS = ("view", "spec", "store", "source", "out")  # made absolute in a run's config.yaml


def config_identity(cfg: TrainConfig) -> dict:
    """The config's part of a run's identity (:func:`run_identity`; also the dry run's estimated ids)."""
    ident = {k: getattr(cfg, k) for k in IDENTITY_KEYS}
    if cfg.model != "alexnet":  # every run before models had names is an AlexNet run: leaving the default out of the
        ident["model"] = cfg.model  # identity keeps their run ids (and a sweep's finished runs) valid
    if cfg.copy is not None:  # likewise: a fine-tune without copy (every layer but the head) keeps its run id
        ident["copy"] = cfg.copy
    return ident


def run_identity(cfg: TrainConfig, view_meta: dict, precision: str, source_id: str | None) -> dict:
    """Everything that determines a run's result (see ``fastft.runs``); its hash is the run id. Data enter as the
    store's manifest hash, the label order and the hashes of the selected sample keys — not the spec they came from,
    so the same class set drawn by two constructions (e.g. near_INSTRU of ``instru`` and ``instru-grid``) is one run."""
    ident = config_identity(cfg)
    ident.update(lr=cfg.base_lr, precision=precision, classes=view_meta["classes"],
                 data={"manifest_sha256": view_meta["manifest_sha256"],
                       **{f"{s}_keys": v["keys_sha256"] for s, v in sorted(view_meta["splits"].items())}})
    if source_id is not None:
        ident["source"] = source_id
    return ident


def resolve_device(cfg: TrainConfig) -> tuple[str, str]:
    """(device, precision) with ``auto`` resolved (see :mod:`fastft.util.device`)."""
    device = resolve(cfg.device)
    return device, precision_for(cfg.precision, device)


def run_dir_for(cfg: TrainConfig, rid: str) -> Path:
    return Path(cfg.out) / f"{cfg.name or cfg.mode}-{rid}"


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The step schedule: ``base_lr × lr_gamma^(epoch // lr_step)`` (epochs from 0)."""
    return cfg.base_lr * cfg.lr_gamma ** (epoch // cfg.lr_step)


def view_path_for(cfg: TrainConfig, existing_only: bool = False) -> str:
    """The view a config reads: ``view``, or ``spec``/``set``/``store`` resolved once into ``<out>/views/``."""
    from ..data.views import shared_view

    if cfg.view is not None:
        return cfg.view
    return str(shared_view(cfg.spec, cfg.set, cfg.store, Path(cfg.out) / "views", existing_only))


def replay_config(cfg: TrainConfig) -> dict:
    """The config as ``fastft train FILE`` takes it back: every key, paths absolute (a replay from any directory is
    the same run)."""
    from ..config import to_dict

    d = to_dict(cfg)
    for k in PATH_KEYS:
        if d.get(k):
            d[k] = str(Path(d[k]).resolve())
    return d
