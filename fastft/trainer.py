"""``fastft train``: one pretrain / fine-tune / scratch run of the paper's protocol on Accelerate.

The trainer owns the loop, the protocol (SGD, step LR by epoch, head replacement, freeze-n), evaluation, metrics,
checkpoints, resume and preemption. It never imports DALI: batches come from an injected ``loader_factory``
(``fastft.pipelines.Loader`` in production, anything with the same interface in tests), created per rank outside
``accelerator.prepare`` — each rank reads its own slice of every global batch, so the global batch (and with it the
schedule) does not depend on the number of processes.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import preprocess, runs, weights
from .config import to_dict
from .errors import FastFTError
from .guard import FAILED, Diverged, NonFiniteWatch, clear_failure, finite, mark_failed, plateau_flag
from .model import FREEZABLE, AlexNet, ModelConfig

MODES = ("scratch", "finetune")
SEED_MAX = (2 ** 32 - 1000) // 1000  # per-rank seeds seed * 1000 + 1 + rank stay below 2**32 (numpy's limit)
MIN_CROP = 67                         # AlexNet's smallest input (one pixel left after pool5)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Data: ``view`` (a resolved view) or ``spec`` + ``set`` + ``store`` (resolved on the fly)."""
    view: str | None = None
    spec: str | None = None
    set: str = "target"
    store: str | None = None
    mode: str = "scratch"              # scratch | finetune
    source: str | None = None          # finetune: a run directory (its model.pt) or a model.pt file
    freeze: int = 0                    # keep conv1 … the n-th layer (n = 0…7, up to fc7) fixed
    allow_overlap: bool = False        # allow a source that shares some (not all) classes with the target
    epochs: int = 100
    lr: float | None = None            # default: 0.01 scratch, 0.001 finetune (§3)
    lr_step: int = 20                  # divide the LR by 1/lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256              # global (all ranks together)
    seed: int = 0
    width: float = 1.0                 # AlexNet width multiplier (1.0 = the paper)
    crop: int = 227                    # input size (random crop of the stored image)
    groups: bool = False               # Caffe's grouped conv2/4/5
    init: str = "paper"                # paper (§3) | paper-scaled (the paper's per-layer gains at width < 1 or crop < 227) | kaiming
    preprocess: str = "caffe"          # input scale (fastft.preprocess): caffe = mean-subtracted 0-255 pixels, as the paper's
                                       # Caffe AlexNet; imagenet = (x - mean) / std with torchvision's statistics
    bias_lr_mult: float = 2.0          # Caffe's bvlc_alexnet: biases learn at 2x the LR ...
    bias_decay_mult: float = 0.0       # ... and are not decayed (1, 1: one SGD group, fastft before 2026-12)
    head_lr_mult: float = 10.0         # finetune: the new fc8 learns at 10x the LR (Caffe's fine-tuning example; the paper does not say)
    plateau_epochs: int = 10           # flag the run "did not learn" if its train loss is still within plateau_tol of
    plateau_tol: float = 0.02          # ln(classes) after this many epochs (or at its last epoch, if it has fewer); 0 = off
    augment_to: int = 0                # §4.6: grow each training class to this many images with transformed copies
    # infrastructure: not part of the run's identity
    out: str = "runs"
    name: str | None = None
    backend: str = "dali"              # dali | pytorch
    device: str = "auto"               # auto | cpu | cuda
    precision: str = "auto"            # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool | str = "auto"       # torch.compile the model; auto = on GPUs (+50 % step rate on an H200), off on CPU
    cuda_graph: bool = True            # single-GPU runs: replay the whole step as one CUDA graph (see Step)
    fused_sgd: bool = True             # on GPUs: SGD's update as one fused kernel (same arithmetic as the foreach update)
    conv1_pad: int = 8                 # on GPUs: feed conv1 this many input channels (3 + zeros; AlexNet.pad_input): 0, 4 or 8
    channels_last: bool = True
    num_threads: int = 0
    hw_decoder_load: float = 1.0       # GPU decoding: share of JPEGs on the hardware decoder (A100/H100/H200)
    cpu_decode: float = 0.6            # GPU decoding: share of each batch DALI decodes on the host cores instead (see README)
    cache: bool | str = "auto"         # keep decoded training images in device memory; auto = on GPUs for fixed-size stores
    cache_gb: float = 0.0              # cache budget; 0 = 80 % of free GPU memory (images beyond it go to host_cache_gb)
    host_cache_gb: float | str = "auto"  # second cache tier in pinned host memory; auto = half the RAM / (runs × ranks) on the node; 0 = off
    eval_every: int = 1
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    trackers: tuple[str, ...] = ()     # e.g. [tensorboard] or [wandb], through Accelerate
    progress: bool = True

    def validate(self) -> None:
        """Every key's range, before any work (types are checked by ``fastft.config``)."""
        self._validate_numbers()
        if self.mode not in MODES:
            raise FastFTError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.view is None and (self.spec is None or self.store is None):
            raise FastFTError("give either view: <view dir> or spec: + set: + store:")
        if self.mode == "finetune" and not self.source:
            raise FastFTError("mode finetune needs source: <run dir or model.pt>")
        if self.mode == "scratch" and (self.source or self.freeze):
            raise FastFTError("mode scratch takes no source and no freeze; use mode finetune")
        if self.backend not in ("dali", "pytorch"):
            raise FastFTError(f"backend must be dali or pytorch, got {self.backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise FastFTError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise FastFTError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
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
        preprocess.mean_std(self.preprocess)

    def _validate_numbers(self) -> None:
        def need(key: str, ok, rule: str) -> None:
            v = getattr(self, key)
            if isinstance(v, float) and not math.isfinite(v) or not ok(v):
                raise FastFTError(f"{key} must be {rule}, got {v!r}")

        for k in ("epochs", "batch_size", "lr_step", "eval_every", "checkpoint_every", "keep_checkpoints"):
            need(k, lambda v: v >= 1, ">= 1")
        for k in ("weight_decay", "num_threads", "augment_to", "cache_gb"):
            need(k, lambda v: v >= 0, ">= 0")
        need("freeze", lambda v: 0 <= v <= len(FREEZABLE), f"0 … {len(FREEZABLE)} (the layers conv1 … fc7 kept fixed)")
        need("lr", lambda v: v is None or v > 0, "positive")
        # the LR is multiplied by lr_gamma every lr_step epochs: 1 keeps it constant, above 1 it would grow
        need("lr_gamma", lambda v: 0 < v <= 1, "in (0, 1]: the LR is multiplied by it every lr_step epochs (1 = constant)")
        need("momentum", lambda v: 0 <= v < 1, "in [0, 1)")
        # per-rank seeds are seed * 1000 + 1 + rank (numpy takes 32 bits)
        need("seed", lambda v: 0 <= v <= SEED_MAX, f"0 … {SEED_MAX}")
        need("width", lambda v: v > 0, "positive (1.0 = the paper's AlexNet)")
        need("crop", lambda v: v >= MIN_CROP, f">= {MIN_CROP} (AlexNet's smallest input)")
        for k in ("bias_lr_mult", "bias_decay_mult", "head_lr_mult"):  # Caffe's lr_mult / decay_mult
            need(k, lambda v: v >= 0, ">= 0")
        need("plateau_epochs", lambda v: v >= 0, ">= 0 (0 = no learning check)")
        need("plateau_tol", lambda v: 0 <= v < 1, "in [0, 1): a share of ln C")

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else (0.01 if self.mode == "scratch" else 0.001)


IDENTITY_KEYS = ("mode", "freeze", "epochs", "lr_step", "lr_gamma", "momentum", "weight_decay", "batch_size", "seed",
                 "width", "crop", "groups", "init", "augment_to", "preprocess", "bias_lr_mult", "bias_decay_mult", "head_lr_mult")


def run_identity(cfg: TrainConfig, view_meta: dict, precision: str, source_id: str | None) -> dict:
    """Everything that determines a run's result (see ``fastft.runs``); its hash is the run id. Data enter as the
    store's manifest hash, the label order and the hashes of the selected sample keys — not the spec they came from,
    so the same class set drawn by two constructions (e.g. near_INSTRU of ``instru`` and ``instru-grid``) is one run."""
    ident = {k: getattr(cfg, k) for k in IDENTITY_KEYS}
    ident.update(lr=cfg.base_lr, precision=precision, classes=view_meta["classes"],
                 data={"manifest_sha256": view_meta["manifest_sha256"],
                       **{f"{s}_keys": v["keys_sha256"] for s, v in sorted(view_meta["splits"].items())}})
    if source_id is not None:
        ident["source"] = source_id
    return ident


def resolve_device(cfg: TrainConfig) -> tuple[str, str]:
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    return device, precision


def run_dir_for(cfg: TrainConfig, rid: str) -> Path:
    return Path(cfg.out) / f"{cfg.name or cfg.mode}-{rid}"


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    return cfg.base_lr * cfg.lr_gamma ** (epoch // cfg.lr_step)


def param_groups(model, cfg: TrainConfig, head: tuple[str, ...] = ()) -> list[dict]:
    """SGD parameter groups with Caffe's per-parameter multipliers: each group carries ``lr_mult`` (its LR is the
    schedule's × ``lr_mult``, see :func:`set_lr`) and its own ``weight_decay``. Biases (parameters named ``*.bias``)
    get ``bias_lr_mult`` and ``bias_decay_mult``; the modules named in ``head`` (a fine-tune's new fc8) get
    ``head_lr_mult`` on top. Frozen parameters are in no group. Empty groups are left out."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bias = name.endswith("bias")
        lr_mult = (cfg.bias_lr_mult if bias else 1.0) * (cfg.head_lr_mult if name.split(".")[0] in head else 1.0)
        decay = cfg.weight_decay * (cfg.bias_decay_mult if bias else 1.0)
        groups.setdefault((lr_mult, decay), []).append(p)
    return [{"params": ps, "lr_mult": m, "weight_decay": d} for (m, d), ps in groups.items()]


def set_lr(opt, lr: float) -> None:
    """The schedule's LR for this epoch, times each group's ``lr_mult``."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


class _Preempt:
    """SIGTERM / SIGUSR1 / Ctrl-C → finish the current step, checkpoint, exit non-zero (a scheduler requeues; re-running
    resumes). A second Ctrl-C stops at once, losing the steps since the last checkpoint."""

    def __init__(self):
        self.flag = False
        self.signum = signal.SIGTERM
        self.t_int = 0.0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:  # started in the background (nohup, a batch job)
                continue
            try:
                self._old[s] = signal.signal(s, self._set)
            except ValueError:  # not the main thread
                pass
        return self

    def _set(self, signum, _frame):
        if signum == signal.SIGINT:
            # a launcher (torchrun) passes the terminal's Ctrl-C on: a second SIGINT within 2 s is the same keypress
            if self.flag and time.monotonic() - self.t_int > 2.0:
                raise KeyboardInterrupt
            if not self.flag:
                self.t_int = time.monotonic()
                print("\nfastft: stopping after this step to checkpoint (Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        if not self.flag:
            self.signum = signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM
        self.flag = True

    def __exit__(self, *a):
        for s, h in self._old.items():
            signal.signal(s, h)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint: exit code 143 (128 + SIGTERM), or 130 after Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))


def _source_model(path: str) -> weights.ModelFile:
    """A fine-tune source: a run directory (its ``model.pt``) or a model file, read without running code and checked
    (see :mod:`fastft.weights`)."""
    p = Path(path)
    if not p.exists():
        raise FastFTError(f"finetune source {path} does not exist")
    return weights.read_model(p, "finetune source")


def view_path_for(cfg: TrainConfig, existing_only: bool = False) -> str:
    """The view a config reads: ``view``, or ``spec``/``set``/``store`` resolved once into ``<out>/views/``."""
    from .store import shared_view

    if cfg.view is not None:
        return cfg.view
    return str(shared_view(cfg.spec, cfg.set, cfg.store, Path(cfg.out) / "views", existing_only))


def train(cfg: TrainConfig, loader_factory: Callable) -> dict:
    """Run (or resume, or confirm finished) one training run; returns ``final.json``'s content.

    ``loader_factory(view_path, split, batch_size, rank, world_size, seed, train)`` builds per-rank loaders.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg.validate()
    device, precision = resolve_device(cfg)
    acc = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no",
                      log_with=list(cfg.trackers) or None)
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise FastFTError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    if cfg.num_threads and device == "cpu":
        torch.set_num_threads(cfg.num_threads)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the convolutions once

    # ---- data identity (views are resolved once, by the main process)
    view_path = view_path_for(cfg) if acc.is_main_process else None
    acc.wait_for_everyone()
    view_path = view_path or view_path_for(cfg, existing_only=True)
    from .store import open_view  # data module: no DALI import

    # the node's first rank hashes the view's shards (remembered in the store); its other ranks then find them checked
    with acc.local_main_process_first():
        view = open_view(view_path)
    for split in ("train", "val"):
        view.split(split)
    n_train = view.split("train")["samples"]
    if cfg.batch_size > n_train:  # one "epoch" would be several passes over the split (pipelines.EpochPlan pads)
        raise FastFTError(f"batch_size {cfg.batch_size} is larger than the training split ({n_train} images in "
                          f"{view_path}): use batch_size <= {n_train}")
    view.check_crop(cfg.crop)
    num_classes = view.num_classes

    # ---- source (fine-tuning) checks, before any work
    src = None
    source_id = None
    if cfg.mode == "finetune":
        src = _source_model(cfg.source)
        src_file, mc = src.path, src.config
        if (mc.width, mc.groups) != (cfg.width, cfg.groups):
            raise FastFTError(f"source {src_file} has width {mc.width}, groups {mc.groups}; this run asks width {cfg.width}, groups {cfg.groups}")
        src_pre = src.preprocess or preprocess.LEGACY
        if src_pre != cfg.preprocess:
            raise FastFTError(f"source {src_file} was trained with preprocess {src_pre!r}; this run asks {cfg.preprocess!r}: "
                              f"a model must see its inputs on the scale it learnt (set preprocess: {src_pre})")
        overlap = set(src.classes or []) & set(view.classes)
        if 0 < len(overlap) < len(view.classes) and not cfg.allow_overlap:
            raise FastFTError(f"source {src_file} was trained on {len(overlap)} of the {len(view.classes)} target classes "
                              f"(e.g. {sorted(overlap)[:3]}); sources must be disjoint from the target or contain all of it "
                              "(set allow_overlap: true if this is intended)")
        source_id = src.run_id or str(src_file)
    identity = run_identity(cfg, view.meta, precision, source_id)
    rid = runs.run_id(identity)
    run_dir = run_dir_for(cfg, rid)
    if cfg.init == "paper" and cfg.mode == "scratch" and (cfg.width, cfg.crop) != (1.0, 227):
        acc.print(f"warning: init paper at width {cfg.width}, crop {cfg.crop}: the paper's σ are for the full-size model's "
                  "fan-ins, and a scaled model then barely passes a signal to fc6 (it stays at ln C); init=paper-scaled "
                  "keeps the paper's per-layer gains (see fastft/model.py)")
    use_compile = cfg.compile is True or (cfg.compile == "auto" and device == "cuda")
    use_graph = cfg.cuda_graph and device == "cuda" and world == 1
    # paths as absolute ones, so that reports and analyses find them from any directory
    paths = {"view": str(Path(view_path).resolve()), **({"source": str(Path(cfg.source).resolve())} if cfg.source else {})}
    resolved = {"run_id": rid, "identity": identity, "config": {**to_dict(cfg), **paths}, "world_size": world,
                "step": {"compile": use_compile, "cuda_graph": use_graph, "fused_sgd": cfg.fused_sgd and device == "cuda",
                         "conv1_pad": cfg.conv1_pad if device == "cuda" else 0},
                "device": device, "precision": precision, "num_classes": num_classes}
    done = runs.read_final(run_dir, say=acc.print)
    if done is not None:
        acc.print(f"run {run_dir} is already finished; nothing to do")
        return done
    # the run directory's lock: two processes training one run would overwrite each other's checkpoints
    held = runs.start_run(run_dir, resolved, say=acc.print) if acc.is_main_process else None
    acc.wait_for_everyone()

    # ---- model and optimiser (identical on every rank), then per-rank RNG for dropout
    mcfg = ModelConfig(num_classes, cfg.width, cfg.crop, cfg.groups, init=cfg.init)
    if cfg.mode == "finetune":
        model = AlexNet(ModelConfig(src.config.num_classes, cfg.width, cfg.crop, cfg.groups, init=cfg.init))
        try:
            model.load_state_dict(src.state)
        except RuntimeError as e:
            raise FastFTError(f"source weights do not fit this model (crop {cfg.crop}, width {cfg.width}): {str(e)[:200]}") from None
        torch.manual_seed(cfg.seed)  # the new head is identical on every rank
        model.replace_head(num_classes)
        frozen = model.freeze(cfg.freeze)
    else:
        torch.manual_seed(cfg.seed)
        model = AlexNet(mcfg)
        frozen = []
    set_seed(cfg.seed * 1000 + 1 + rank, device_specific=False)
    if device == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device == "cuda":
        model.pad_input(cfg.conv1_pad)
    head = ("fc8",) if cfg.mode == "finetune" else ()
    opt = sgd(param_groups(model, cfg, head), cfg.base_lr, cfg.momentum, cfg.weight_decay, fused=cfg.fused_sgd and device == "cuda")

    start_epoch, loader_state, partial = 0, None, None
    ckpt = runs.resume_checkpoint(run_dir, say=acc.print, set_aside=acc.is_main_process)  # checksums verified
    if ckpt is not None:
        st, local = weights.load_checkpoint(ckpt, rank)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start_epoch, loader_state = st["epoch"], st["loader"]
        if local is not None:
            _set_rng(local["rng"])
            partial = local.get("partial")
        acc.print(f"resuming {run_dir.name} from {ckpt.name} (epoch {loader_state['epoch']}, step {loader_state['step']})")
    if acc.is_main_process:  # records of epochs that run again (also on a start from scratch) go
        runs.trim_metrics(run_dir, start_epoch)
    model, opt = acc.prepare(model, opt)
    if cfg.cuda_graph and device == "cuda" and world > 1:
        acc.print("note: cuda_graph is used in single-process runs only; this run uses plain steps")
    if use_graph:  # the captured step runs its own autocast, not Accelerate's forward wrapper (see cuda_autocast)
        step_model, autocast = acc.unwrap_model(model, keep_fp32_wrapper=False), cuda_autocast(precision == "bf16")
    else:
        step_model, autocast = model, acc.autocast
    step_fn = Step(step_model, opt, autocast=autocast, backward=acc.backward, channels_last=device == "cuda" and cfg.channels_last,
                   compile=use_compile, graph=use_graph)

    per_rank = cfg.batch_size // world
    train_loader = loader_factory(view_path, "train", per_rank, rank, world, cfg.seed, True)
    val_loader = loader_factory(view_path, "val", per_rank, rank, world, cfg.seed, False)
    if loader_state:
        train_loader.load_state_dict(loader_state)
    impl = getattr(train_loader, "_impl", None)
    if getattr(impl, "fraction", None) is not None:
        dev_f, host_f = impl.fraction, impl.host_fraction
        acc.print(f"cache: {dev_f:.0%} of the training images kept decoded on the device"
                  + (f", {host_f:.0%} in pinned host memory" if host_f else "")
                  + ("" if dev_f + host_f >= 1 else f"; the other {1 - dev_f - host_f:.0%} are decoded each epoch"))
    if cfg.trackers:
        acc.init_trackers(f"fastft-{run_dir.name}", config={k: v for k, v in to_dict(cfg).items() if isinstance(v, (int, float, str, bool))})

    progress_now = None  # this rank's partial-epoch sums, so a mid-epoch resume reports the same epoch metrics

    def save(name: str):
        tmp = runs.checkpoint_tmp(run_dir, name) if acc.is_main_process else Path(run_dir) / runs.CKPT_DIR / f"{name}.tmp"
        acc.wait_for_everyone()
        runs.save_file({"rng": _get_rng(), "partial": progress_now}, tmp / f"rng-{rank}.pt")
        if acc.is_main_process:
            runs.save_file({"model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                            "epoch": train_loader.position[0], "loader": train_loader.state_dict()}, tmp / "state.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            runs.commit_checkpoint(run_dir, name, cfg.keep_checkpoints)
        acc.wait_for_everyone()

    steps = len(train_loader)
    log = (run_dir / "metrics.jsonl")
    pbar = None
    if acc.is_main_process and cfg.progress:
        from tqdm import tqdm

        done = start_epoch * steps + (loader_state["step"] if loader_state else 0)
        pbar = tqdm(total=cfg.epochs * steps * cfg.batch_size, initial=done * cfg.batch_size, unit="img", unit_scale=True,
                    desc=run_dir.name[:40], dynamic_ncols=True)
    t_run = time.time()
    # test hook: deliver a real SIGTERM to this process at this global step (exercises the preemption path)
    sigterm_at = int(os.environ.get("FASTFT_TEST_SIGTERM_AT_STEP", "-1"))
    stop_after_epoch = False
    watch = NonFiniteWatch(acc.device)
    if acc.is_main_process:
        clear_failure(run_dir)  # this attempt starts again (from the newest checkpoint, if any)
    with _Preempt() as pre:
        for epoch in range(start_epoch, cfg.epochs):
            lr = lr_at(cfg, epoch)
            set_lr(opt, lr)
            model.train()
            loss_sum = torch.zeros((), device=acc.device)
            n_steps, t0, secs_before = 0, time.time(), 0.0
            if partial is not None:  # resumed mid-epoch
                loss_sum += partial["loss_sum"]
                n_steps, secs_before, partial = partial["n_steps"], partial["secs"], None
            for step_i, (x, y, _) in enumerate(train_loader.epoch(epoch)):
                loss = step_fn(x, y)
                loss_sum += loss
                n_steps += 1
                gstep = epoch * steps + train_loader.position[1]
                watch.see(loss, gstep)
                if n_steps % CHECK_EVERY == 0:
                    _diverged(acc, watch, run_dir, cfg, steps)
                if gstep == sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                if pbar is not None:
                    pbar.update(cfg.batch_size)
                    if n_steps % 20 == 1:
                        pbar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", lr=lr)
                last = train_loader.position[1] == steps
                if _stop(acc, pre, epoch * steps + train_loader.position[1], last):
                    if last:  # the epoch ends here (the loop runs out, moving the loader on): it evaluates and
                        stop_after_epoch = True  # checkpoints as usual, then the run stops
                        continue
                    progress_now = {"loss_sum": float(loss_sum), "n_steps": n_steps, "secs": secs_before + time.time() - t0}
                    save(f"e{epoch:04d}-s{train_loader.position[1]:06d}")
                    acc.print(f"preempted: checkpointed at epoch {epoch} step {train_loader.position[1]}; re-run to resume")
                    raise Preempted(pre.signum)
            _diverged(acc, watch, run_dir, cfg, steps)  # waits for the epoch's last step
            train_loss = float(acc.reduce(loss_sum / max(n_steps, 1), "mean"))
            train_secs = secs_before + time.time() - t0
            progress_now = None
            rec = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                   "img_per_s": n_steps * cfg.batch_size / max(train_secs, 1e-9), "train_secs": round(train_secs, 3)}
            if world > 1:  # DDP keeps replicas equal; check it, since a desync silently ruins a run
                rec["ranks_in_sync"] = _in_sync(acc, model)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                rec.update(evaluate(acc, model, val_loader, device, cfg.channels_last))
            if acc.is_main_process:
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                if cfg.trackers:
                    acc.log(rec, step=epoch + 1)
                if pbar is not None:
                    pbar.set_postfix(epoch=epoch + 1, loss=f"{rec['train_loss']:.3f}", top1=rec.get("top1"))
            if ((epoch + 1) % cfg.checkpoint_every == 0 or stop_after_epoch) and epoch + 1 < cfg.epochs:
                save(f"e{epoch + 1:04d}-s000000")
                if stop_after_epoch:
                    acc.print(f"preempted: checkpointed at epoch {epoch + 1} step 0; re-run to resume")
                    raise Preempted(pre.signum)
    if pbar is not None:
        pbar.close()

    metrics = runs.read_metrics(run_dir) if acc.is_main_process else []
    final = {"run_id": rid, "name": run_dir.name, "mode": cfg.mode, "epochs": cfg.epochs, "seed": cfg.seed,
             "num_classes": num_classes, "frozen": frozen, "world_size": world, "device": device,
             "wall_secs": round(time.time() - t_run, 2)}
    if metrics:
        last = metrics[-1]
        final.update(top1=last.get("top1"), top5=last.get("top5"), train_loss=last["train_loss"],
                     best_top1=max(m.get("top1", 0) for m in metrics), img_per_s=float(np.mean([m["img_per_s"] for m in metrics])))
        flag = plateau_flag(metrics, num_classes, cfg.plateau_epochs, cfg.plateau_tol)
        final.update(learned=flag is None, flags=[flag] if flag else [])
        if flag:
            acc.print(f"warning: {run_dir.name} {flag}; the report marks it and keeps it out of means")
    if acc.is_main_process:
        final["model_sha256"] = runs.save_file({"model": acc.unwrap_model(model).state_dict(), "model_config": vars(acc.unwrap_model(model).cfg),
                                                 "classes": view.classes, "run_id": rid, "preprocess": preprocess.describe(cfg.preprocess)},
                                                run_dir / "model.pt")
        runs.write_final(run_dir, finite(final))  # written last: the run is finished
        held.close()
    acc.wait_for_everyone()
    if cfg.trackers:
        acc.end_training()
    return final


CHECK_EVERY = 20  # steps between the host's looks at the loss (each is a synchronisation)


def _diverged(acc, watch: NonFiniteWatch, run_dir: Path, cfg: TrainConfig, steps: int) -> None:
    """A non-finite loss so far: mark the run failed and stop with an error that names the step and the LR."""
    bad = watch.check(acc)
    if bad is None:
        return
    epoch, step = divmod(bad - 1, steps)
    lr = lr_at(cfg, epoch)
    reason = (f"the training loss became NaN or infinite at step {bad} (epoch {epoch + 1}, step {step + 1} of {steps}) "
              f"with lr {lr:g}")
    if acc.is_main_process:
        mark_failed(run_dir, {"reason": reason, "global_step": bad, "epoch": epoch + 1, "lr": lr})
    raise Diverged(f"run {run_dir.name}: {reason}; marked failed ({run_dir / FAILED}). Lower lr (or check the data); "
                   "re-running retries it")


def sgd(params, lr: float, momentum: float, weight_decay: float, fused: bool = False) -> torch.optim.SGD:
    """The paper's optimiser (SGD with momentum and weight decay); ``params`` may be :func:`param_groups`' groups
    (their own ``weight_decay``); ``fused``: one kernel per update on CUDA."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **({"fused": True} if fused else {}))


def cuda_autocast(bf16: bool):
    """bf16 autocast for steps that may be captured as a CUDA graph: without the weight-cast cache, which capture needs."""
    return lambda: torch.autocast("cuda", torch.bfloat16, enabled=bf16, cache_enabled=False)


class Step:
    """One SGD step — the hot path, shared by the trainer and ``fastft bench``. No host synchronisation.

    * ``compile``: ``torch.compile`` of the model (fuses LRN, ReLU, pooling and the bf16 casts).
    * ``graph`` (CUDA, one process): after ``warmup`` eager steps (run on a side stream, so cuDNN autotuning and lazy
      initialisation stay out of the capture) the whole step — forward, loss, backward and the optimiser update — is
      captured once as a CUDA graph and replayed for every batch: one launch per step instead of ~200 kernel launches
      and their Python overhead. Batches are copied into the graph's static input buffers (a device-to-device copy).
      The learning rate is a constant inside the graph, so the step is re-captured when it changes (every
      ``lr_step`` epochs). Warm-up steps are real training steps; the update is the same arithmetic either way.

    ``__call__(x, y)`` returns the step's loss as a device tensor (with ``graph``, the same static tensor each time:
    consume it before the next call, as the trainer does by accumulating it).
    """

    def __init__(self, model, opt, *, autocast, backward=None, channels_last: bool = False, compile: bool = False,
                 graph: bool = False, warmup: int = 3):
        self.model, self.opt, self.autocast = model, opt, autocast
        self.backward = backward or (lambda loss: loss.backward())
        self.channels_last, self.graph, self.warmup = channels_last, graph, warmup
        self.fwd = torch.compile(model) if compile else model
        self._g = None
        self._lr = None
        self._seen = 0

    def _body(self, x, y):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = F.cross_entropy(self.fwd(x), y)
        self.backward(loss)
        self.opt.step()
        return loss.detach()  # no reference to the autograd graph outlives the step (side-stream warm-up, capture)

    def _eager(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        return self._body(x, y)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.graph:
            return self._eager(x, y)
        lr = tuple(g["lr"] for g in self.opt.param_groups)
        if self._g is None or lr != self._lr or x.shape != self._x.shape:
            if self._seen < self.warmup:
                self._seen += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = self._eager(x, y)
                torch.cuda.current_stream().wait_stream(side)
                return loss
            self._capture(x, y, lr)
        self._x.copy_(x)
        self._y.copy_(y)
        self._g.replay()
        return self._loss

    def _capture(self, x, y, lr) -> None:
        self._g = None  # release the previous graph (and its memory pool) first
        torch.cuda.synchronize()
        self._x, self._y = x.clone(), y.clone()
        self.opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients, then overwrites them
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, capture_error_mode="thread_local"):  # DALI keeps decoding on its own threads
            self._loss = self._body(self._x, self._y)
        self._g, self._lr = g, lr


def _in_sync(acc, model) -> bool:
    with torch.no_grad():
        v = torch.stack([p.detach().double().sum() for p in acc.unwrap_model(model).parameters()]).to(acc.device)
    allv = acc.gather(v.view(1, -1))
    return bool((allv == allv[0]).all().item())


def _stop(acc, pre: _Preempt, step: int, last: bool) -> bool:
    """Whether to stop after this step. Ranks agree (a collective) every 10 global steps and at each epoch's last
    step, which every rank reaches together: epochs shorter than 10 steps (small §4.4 sets) still stop."""
    if acc.num_processes == 1:
        return pre.flag
    if step % 10 and not last:
        return False
    flag = torch.tensor([1.0 if pre.flag else 0.0], device=acc.device)
    return bool(acc.reduce(flag, "sum").item() > 0)


@torch.no_grad()
def evaluate(acc, model, loader, device: str, channels_last: bool) -> dict:
    """Top-1/top-5 over the split, each sample counted exactly once across ranks (padding has weight 0)."""
    model.eval()
    tot = torch.zeros(4, device=acc.device, dtype=torch.float64)  # correct1, correct5, count, loss
    for x, y, w in loader.epoch(0):
        if device == "cuda" and channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with acc.autocast():
            logits = model(x)
        w = w.to(acc.device, torch.float64)
        top5 = logits.float().topk(min(5, logits.shape[1]), 1).indices
        hit = top5.eq(y.view(-1, 1))
        tot[0] += (hit[:, 0].double() * w).sum()
        tot[1] += (hit.any(1).double() * w).sum()
        tot[2] += w.sum()
        tot[3] += (F.cross_entropy(logits.float(), y, reduction="none").double() * w).sum()
    tot = acc.reduce(tot, "sum")
    model.train()
    n = tot[2].item()
    return {"top1": 100 * tot[0].item() / n, "top5": 100 * tot[1].item() / n, "test_loss": tot[3].item() / n, "test_n": int(n)}


def _get_rng() -> dict:
    """This process's RNG states as plain data and tensors, which :func:`fastft.weights.load` reads without running
    code (numpy's key vector as a list of ints, not an ndarray)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng(s: dict) -> None:
    random.setstate(s["python"])
    name, keys, pos, has_gauss, gauss = s["numpy"]  # keys: a list (or an ndarray in checkpoints of earlier versions)
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
