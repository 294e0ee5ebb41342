"""``fastft train``: one pretrain / fine-tune / scratch run of the paper's protocol on Accelerate, read top to bottom
as its phases — open the data, check the source, name the run, build model and optimiser, resume, train epochs,
finish.

The trainer never imports DALI: batches come from an injected ``loader_factory`` (``fastft.loading.Loader`` in
production, anything with the same interface in tests), created per rank outside ``accelerator.prepare`` — each rank
reads its own slice of every global batch, so the global batch (and with it the schedule) does not depend on the
number of processes. ``on_step(global_step)``, if given, is called after every step (tests deliver a real SIGTERM
from it, exercising preemption at an exact step).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import models, preprocess, runs, weights
from ..config import to_dict
from ..errors import FastFTError
from ..guard import FAILED, Diverged, NonFiniteWatch, clear_failure, finite, mark_failed, plateau_flag
from .checkpoint import Checkpoints
from .config import TrainConfig, lr_at, model_keys, replay_config, resolve_device, run_dir_for, run_identity, view_path_for
from .optim import param_groups, set_lr, sgd
from .preempt import Preempt, Preempted, should_stop
from .step import Step, cuda_autocast, evaluate, in_sync
from .tracking import RunLog, Trackers
from . import transfer

CHECK_EVERY = 20  # steps between the host's looks at the loss (each is a synchronisation)


@dataclass
class _Run:
    """What the phases share: the accelerator, the resolved run and its parts as they are built."""
    cfg: TrainConfig
    acc: object
    device: str
    precision: str
    log: RunLog
    view_path: str = ""
    view: object = None
    run_dir: Path = None
    rid: str = ""
    frozen: list = field(default_factory=list)
    costs: "Costs" = None


class Costs:
    """A run's fixed costs, in seconds (``final.json``'s ``costs``): what the run spends besides training steps, so
    a sweep of small runs can be judged by how much of its time trains (see ``fastft sweep``'s efficiency line)."""

    def __init__(self):
        self.s = {"startup": _since_process_start()}  # process start and imports, up to train()
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the time since the previous lap to ``name``."""
        now = time.perf_counter()
        self.s[name] = round(self.s.get(name, 0.0) + now - self._t, 3)
        self._t = now

    def add(self, name: str, secs: float) -> None:
        self.s[name] = round(self.s.get(name, 0.0) + secs, 3)


def _since_process_start() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    from ..util.children import start_ticks

    ticks = start_ticks()
    try:
        uptime = float(open("/proc/uptime").read().split()[0])
        return None if ticks is None else round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def train(cfg: TrainConfig, loader_factory: Callable, on_step: Callable[[int], None] | None = None) -> dict:
    """Run (or resume, or confirm finished) one training run; returns ``final.json``'s content.

    ``loader_factory(view_path, split, batch_size, rank, world_size, seed, train)`` builds per-rank loaders.
    """
    costs = Costs()
    r = _accelerate(cfg)
    r.costs = costs
    costs.lap("accelerator")
    src, source_id = _check_source(r)  # a source that does not fit is named before the view is resolved
    costs.lap("build")  # (the source's read and hash are part of building the model, as before)
    _open_data(r)
    costs.lap("open_view")  # the view's shards hashed against the store (or found checked)
    _check_overlap(r, src)
    identity = run_identity(cfg, r.view.meta, r.precision, source_id)
    r.rid = runs.run_id(identity)
    r.run_dir = run_dir_for(cfg, r.rid)
    done = runs.read_final(r.run_dir, say=r.acc.print)
    if done is not None:
        r.acc.print(f"run {r.run_dir} is already finished; nothing to do")
        return done
    held = _start(r, identity)
    try:
        model, opt = _build(r, src)
        ckpts = Checkpoints(r.acc, r.run_dir, cfg.keep_checkpoints, say=r.log.say)
        start_epoch, loader_state, partial = ckpts.resume(model, opt)
        costs.lap("build")  # source check, run directory, model, optimiser, resume
        final = _epochs(r, model, opt, ckpts, loader_factory, start_epoch, loader_state, partial, on_step)
        return _finish(r, model, final, held)
    except BaseException as e:
        r.log.note(f"stopped: {type(e).__name__}: {e}")
        raise
    finally:
        r.log.close()


# ---------------------------------------------------------------- phases
def _accelerate(cfg: TrainConfig) -> _Run:
    """The Accelerator (one per process) and the resolved device and precision."""
    from accelerate import Accelerator

    cfg.validate()
    device, precision = resolve_device(cfg)
    acc = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no")
    if cfg.batch_size % acc.num_processes:
        raise FastFTError(f"batch_size {cfg.batch_size} is not divisible by the {acc.num_processes} processes")
    if cfg.num_threads and device == "cpu":
        torch.set_num_threads(cfg.num_threads)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the convolutions once
    return _Run(cfg, acc, device, precision, RunLog(acc))


def _open_data(r: _Run) -> None:
    """The view (resolved once, by the main process), its shards checked, and the batch and crop checked against it."""
    from ..data.views import open_view  # data module: no DALI import

    cfg, acc = r.cfg, r.acc
    view_path = view_path_for(cfg) if acc.is_main_process else None
    acc.wait_for_everyone()
    r.view_path = view_path or view_path_for(cfg, existing_only=True)
    # the node's first rank hashes the view's shards (remembered in the store); its other ranks then find them checked
    with acc.local_main_process_first():
        r.view = open_view(r.view_path)
    for split in ("train", "val"):
        r.view.split(split)
    r.view.check_batch(cfg.batch_size)
    r.view.check_crop(cfg.crop)


def _check_source(r: _Run) -> tuple[weights.ModelFile | None, str | None]:
    """A fine-tune's source model, read without running code and checked against this run's config, before any work
    (its classes against the view's: :func:`_check_overlap`)."""
    cfg = r.cfg
    if cfg.mode != "finetune":
        return None, None
    p = Path(cfg.source)
    if not p.exists():
        raise FastFTError(f"finetune source {cfg.source} does not exist")
    src, source_id = weights.read_source(p, cfg.model)  # a fastft model file, or a torchvision model's state dict
    if src.model_name != cfg.model:
        raise FastFTError(f"source {src.path} is a {src.model_name} model; this run asks model {cfg.model} (set model: {src.model_name})")
    spec = models.spec(cfg.model)
    had = {k: getattr(src.config, spec.keys[k]) for k in spec.source_keys}  # the keys that shape the weights
    if had != {k: getattr(cfg, k) for k in spec.source_keys}:
        raise FastFTError(f"source {src.path} has {', '.join(f'{k} {v}' for k, v in had.items())}; this run asks "
                          + ", ".join(f"{k} {getattr(cfg, k)}" for k in spec.source_keys))
    src_pre = src.preprocess or preprocess.LEGACY
    if src_pre != cfg.preprocess:
        raise FastFTError(f"source {src.path} was trained with preprocess {src_pre!r}; this run asks {cfg.preprocess!r}: "
                          f"a model must see its inputs on the scale it learnt (set preprocess: {src_pre})")
    return src, source_id


def _check_overlap(r: _Run, src: weights.ModelFile | None) -> None:
    """A fine-tune's source classes against the target view's: disjoint, or all of them (``allow_overlap``)."""
    cfg, view = r.cfg, r.view
    if src is None:
        return
    overlap = set(src.classes or []) & set(view.classes)
    if 0 < len(overlap) < len(view.classes) and not cfg.allow_overlap:
        raise FastFTError(f"source {src.path} was trained on {len(overlap)} of the {len(view.classes)} target classes "
                          f"(e.g. {sorted(overlap)[:3]}); sources must be disjoint from the target or contain all of it "
                          "(set allow_overlap: true if this is intended)")


def _step_plan(r: _Run) -> dict:
    cfg, cuda = r.cfg, r.device == "cuda"
    return {"compile": cfg.compile is True or (cfg.compile == "auto" and cuda),
            "cuda_graph": cfg.cuda_graph and cuda and r.acc.num_processes == 1,
            "fused_sgd": cfg.fused_sgd and cuda,
            "conv1_pad": cfg.conv1_pad if cuda and "conv1_pad" in models.spec(cfg.model).options else 0}


def _start(r: _Run, identity: dict):
    """The run directory: its lock, ``config.json`` (resolved, absolute paths) and ``config.yaml`` (replays the run
    with ``fastft train FILE``); ``train.log`` from here on."""
    cfg, acc = r.cfg, r.acc
    if cfg.model == "alexnet" and cfg.init == "paper" and cfg.mode == "scratch" and (cfg.width, cfg.crop) != (1.0, 227):
        r.log.say(f"warning: init paper at width {cfg.width}, crop {cfg.crop}: the paper's σ are for the full-size model's "
                  "fan-ins, and a scaled model then barely passes a signal to fc6 (it stays at ln C); init=paper-scaled "
                  "keeps the paper's per-layer gains (see fastft/models/alexnet.py)")
    # paths as absolute ones, so that reports and analyses find them from any directory
    paths = {"view": str(Path(r.view_path).resolve()), **({"source": str(Path(cfg.source).resolve())} if cfg.source else {})}
    resolved = {"run_id": r.rid, "identity": identity, "config": {**to_dict(cfg), **paths}, "world_size": acc.num_processes,
                "step": _step_plan(r), "device": r.device, "precision": r.precision, "num_classes": r.view.num_classes}
    # the run directory's lock: two processes training one run would overwrite each other's checkpoints
    held = runs.start_run(r.run_dir, resolved, say=acc.print) if acc.is_main_process else None
    if acc.is_main_process:
        runs.write_replay(r.run_dir, replay_config(cfg))
        clear_failure(r.run_dir)  # this attempt starts again (from the newest checkpoint, if any)
    r.log.open(r.run_dir)
    acc.wait_for_everyone()
    return held


def _build(r: _Run, src) -> tuple:
    """Model (identical on every rank: seeded, or the source's weights with a seeded new head) and optimiser, then
    per-rank RNG for dropout."""
    from accelerate.utils import set_seed

    cfg, n, keys = r.cfg, r.view.num_classes, model_keys(r.cfg)
    if cfg.mode == "finetune" and cfg.copy is not None:  # the first n layers copied, the rest fresh (Yosinski et al.)
        model = transfer.build(cfg.model, n, keys, src.state, cfg.copy, cfg.seed)
        r.frozen = model.freeze(cfg.freeze)
        r.log.say(f"copied {', '.join(transfer.copied_layers(cfg.model, cfg.copy))} from the source; the later layers "
                  f"re-initialised (seed {cfg.seed})" + (f"; {', '.join(r.frozen)} kept fixed" if r.frozen else ""))
    elif cfg.mode == "finetune":
        model = models.build(cfg.model, src.config.num_classes, **keys)
        try:
            model.load_state_dict(src.state)
        except RuntimeError as e:
            shown = ", ".join(f"{k} {v}" for k, v in keys.items())
            raise FastFTError(f"source weights do not fit this model ({cfg.model}{': ' + shown if shown else ''}): {str(e)[:200]}") from None
        torch.manual_seed(cfg.seed)  # the new head is identical on every rank
        model.replace_head(n)
        r.frozen = model.freeze(cfg.freeze)
    else:
        torch.manual_seed(cfg.seed)
        model = models.build(cfg.model, n, **keys)
    set_seed(cfg.seed * 1000 + 1 + r.acc.process_index, device_specific=False)
    if r.device == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if _step_plan(r)["conv1_pad"] and hasattr(model, "pad_input"):  # an optional part of the protocol (fastft.models)
        model.pad_input(cfg.conv1_pad)
    head = (models.spec(cfg.model).head,) if cfg.mode == "finetune" else ()
    opt = sgd(param_groups(model, cfg, head), cfg.base_lr, cfg.momentum, cfg.weight_decay, fused=_step_plan(r)["fused_sgd"])
    return model, opt


def _step_fn(r: _Run, model, opt) -> Step:
    cfg, acc, plan = r.cfg, r.acc, _step_plan(r)
    if cfg.cuda_graph and r.device == "cuda" and acc.num_processes > 1:
        r.log.say("note: cuda_graph is used in single-process runs only; this run uses plain steps")
    if plan["cuda_graph"]:  # the captured step runs its own autocast, not Accelerate's forward wrapper (see cuda_autocast)
        step_model, autocast = acc.unwrap_model(model, keep_fp32_wrapper=False), cuda_autocast(r.precision == "bf16")
    else:
        step_model, autocast = model, acc.autocast
    return Step(step_model, opt, autocast=autocast, backward=acc.backward, channels_last=r.device == "cuda" and cfg.channels_last,
                compile=plan["compile"], graph=plan["cuda_graph"])


def _loaders(r: _Run, loader_factory: Callable, loader_state: dict | None):
    cfg, acc = r.cfg, r.acc
    per_rank = cfg.batch_size // acc.num_processes
    rank, world = acc.process_index, acc.num_processes
    train_loader = loader_factory(r.view_path, "train", per_rank, rank, world, cfg.seed, True)
    val_loader = loader_factory(r.view_path, "val", per_rank, rank, world, cfg.seed, False)
    if loader_state:
        train_loader.load_state_dict(loader_state)
    dev_f, host_f = _cache_fractions(train_loader)
    if dev_f is not None:
        r.log.say(f"cache: {dev_f:.0%} of the training images kept decoded on the device"
                  + (f", {host_f:.0%} in pinned host memory" if host_f else "")
                  + ("" if dev_f + host_f >= 1 else f"; the other {1 - dev_f - host_f:.0%} are decoded each epoch"))
    return train_loader, val_loader


def _cache_fractions(loader) -> tuple[float | None, float]:
    """(share of the training images cached on the device, in pinned host memory); (None, 0) without a cache, or
    from an injected loader without :meth:`~fastft.loading.Loader.stats`."""
    stats = loader.stats() if callable(getattr(loader, "stats", None)) else {}
    if stats.get("cache_fraction") is None:
        return None, 0.0
    return stats["cache_fraction"], stats.get("host_cache_fraction") or 0.0


def _progress_bar(r: _Run, steps: int, start_epoch: int, loader_state: dict | None):
    if not (r.acc.is_main_process and r.cfg.progress):
        return None
    from ..util.progress import bar

    cfg = r.cfg
    done = start_epoch * steps + (loader_state["step"] if loader_state else 0)
    return bar(total=cfg.epochs * steps * cfg.batch_size, initial=done * cfg.batch_size, unit="img", unit_scale=True,
               desc=r.run_dir.name[:40], dynamic_ncols=True)


def _epochs(r: _Run, model, opt, ckpts: Checkpoints, loader_factory, start_epoch: int, loader_state, partial, on_step) -> dict:
    """Train from ``start_epoch`` (mid-epoch if ``partial``) to the last epoch; each epoch's record goes to
    ``metrics.jsonl``, ``train.log`` and the trackers. Preemption checkpoints and raises :class:`Preempted`."""
    cfg, acc = r.cfg, r.acc
    if acc.is_main_process:  # records of epochs that run again (also on a start from scratch) go
        runs.trim_metrics(r.run_dir, start_epoch)
    model, opt = acc.prepare(model, opt)
    step_fn = _step_fn(r, model, opt)
    r.costs.lap("build")
    train_loader, val_loader = _loaders(r, loader_factory, loader_state)
    r.costs.lap("loaders")  # DALI pipelines (or the fallback) built
    steps = len(train_loader)
    done_steps = start_epoch * steps + (loader_state["step"] if loader_state else 0)
    trackers = Trackers(acc, cfg, r.run_dir, done_steps)
    pbar = _progress_bar(r, steps, start_epoch, loader_state)
    t_run, watch = time.time(), NonFiniteWatch(acc.device)
    with Preempt() as pre:
        for epoch in range(start_epoch, cfg.epochs):
            rec, stop = _epoch(r, model, opt, ckpts, step_fn, train_loader, epoch, partial, pre, watch, pbar, trackers, on_step)
            partial = None
            r.costs.lap("train")
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                rec.update(evaluate(acc, model, val_loader, r.device, cfg.channels_last))
                r.costs.lap("eval")
            _record(r, rec, pbar, trackers, (epoch + 1) * steps)
            if ((epoch + 1) % cfg.checkpoint_every == 0 or stop) and epoch + 1 < cfg.epochs:
                ckpts.save(f"e{epoch + 1:04d}-s000000", model, opt, train_loader, None)
                r.costs.lap("checkpoint")
                if stop:
                    r.log.say(f"preempted: checkpointed at epoch {epoch + 1} step 0; re-run to resume")
                    raise Preempted(pre.signum)
    if pbar is not None:
        pbar.close()
    trackers.finish()
    r.costs.lap("train")
    r.costs.add("train", -step_fn.capture_s)
    r.costs.add("capture", step_fn.capture_s)  # CUDA-graph captures (one per LR value)
    return {"wall_secs": round(time.time() - t_run, 2)}


def _epoch(r: _Run, model, opt, ckpts, step_fn, loader, epoch: int, partial, pre, watch, pbar, trackers, on_step):
    """One training epoch; returns (its record so far, whether a stop was asked at its last step). A stop asked
    mid-epoch checkpoints at this step (with the partial sums, so the resumed epoch reports the same metrics)."""
    cfg, acc = r.cfg, r.acc
    steps = len(loader)
    lr = lr_at(cfg, epoch)
    set_lr(opt, lr)
    model.train()
    loss_sum = torch.zeros((), device=acc.device)
    n_steps, t0, secs_before = 0, time.time(), 0.0
    if partial is not None:  # resumed mid-epoch
        loss_sum += partial["loss_sum"]
        n_steps, secs_before = partial["n_steps"], partial["secs"]
    stop_after = False
    for x, y, _ in loader.epoch(epoch):
        first = "first_step" not in r.costs.s
        if first:
            r.costs.lap("first_batch")  # the loader's start: pipelines' prefetch (and the first images of a cache fill)
        loss = step_fn(x, y)
        if first:
            if r.device == "cuda":
                torch.cuda.synchronize()
            r.costs.lap("first_step")  # torch.compile's compilation, cuDNN autotuning, lazy initialisation
        loss_sum += loss
        n_steps += 1
        gstep = epoch * steps + loader.position[1]
        watch.see(loss, gstep)
        if n_steps % CHECK_EVERY == 0:
            _diverged(r, watch, steps)
        trackers.step(gstep, loss)
        if on_step is not None:
            on_step(gstep)
        if pbar is not None:
            pbar.update(cfg.batch_size)
            if n_steps % 20 == 1:
                pbar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", lr=lr)
        last = loader.position[1] == steps
        if should_stop(acc, pre, gstep, last):
            if last:  # the epoch ends here (the loop runs out, moving the loader on): it evaluates and
                stop_after = True  # checkpoints as usual, then the run stops
                continue
            sums = {"loss_sum": float(loss_sum), "n_steps": n_steps, "secs": secs_before + time.time() - t0}
            ckpts.save(f"e{epoch:04d}-s{loader.position[1]:06d}", model, opt, loader, sums)
            r.log.say(f"preempted: checkpointed at epoch {epoch} step {loader.position[1]}; re-run to resume")
            raise Preempted(pre.signum)
    _diverged(r, watch, steps)  # waits for the epoch's last step
    train_loss = float(acc.reduce(loss_sum / max(n_steps, 1), "mean"))
    train_secs = secs_before + time.time() - t0
    rec = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
           "img_per_s": n_steps * cfg.batch_size / max(train_secs, 1e-9), "train_secs": round(train_secs, 3)}
    if acc.num_processes > 1:  # DDP keeps replicas equal; check it, since a desync silently ruins a run
        rec["ranks_in_sync"] = in_sync(acc, model)
    return rec, stop_after


def _record(r: _Run, rec: dict, pbar, trackers: Trackers, gstep: int) -> None:
    if not r.acc.is_main_process:
        return
    with open(r.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    trackers.epoch(rec, gstep)
    r.log.note(f"epoch {rec['epoch']}/{r.cfg.epochs}: train loss {rec['train_loss']:.4f}, lr {rec['lr']:g}"
               + (f", top-1 {rec['top1']:.2f}%, top-5 {rec['top5']:.2f}%" if "top1" in rec else "")
               + f", {rec['img_per_s']:.0f} img/s")
    if pbar is not None:
        pbar.set_postfix(epoch=rec["epoch"], loss=f"{rec['train_loss']:.3f}", top1=rec.get("top1"))


def _diverged(r: _Run, watch: NonFiniteWatch, steps: int) -> None:
    """A non-finite loss so far: mark the run failed and stop with an error that names the step and the LR."""
    bad = watch.check(r.acc)
    if bad is None:
        return
    epoch, step = divmod(bad - 1, steps)
    lr = lr_at(r.cfg, epoch)
    reason = (f"the training loss became NaN or infinite at step {bad} (epoch {epoch + 1}, step {step + 1} of {steps}) "
              f"with lr {lr:g}")
    if r.acc.is_main_process:
        mark_failed(r.run_dir, {"reason": reason, "global_step": bad, "epoch": epoch + 1, "lr": lr})
    raise Diverged(f"run {r.run_dir.name}: {reason}; marked failed ({r.run_dir / FAILED}). Lower lr (or check the data); "
                   "re-running retries it")


def _finish(r: _Run, model, final: dict, held) -> dict:
    """``model.pt`` and, last, ``final.json`` (the run is finished): the last epoch's metrics, the learning check."""
    cfg, acc = r.cfg, r.acc
    metrics = runs.read_metrics(r.run_dir) if acc.is_main_process else []
    final = {"run_id": r.rid, "name": r.run_dir.name, "mode": cfg.mode, "epochs": cfg.epochs, "seed": cfg.seed,
             "num_classes": r.view.num_classes, "frozen": r.frozen, "world_size": acc.num_processes, "device": r.device,
             **final}
    if metrics:
        last = metrics[-1]
        final.update(top1=last.get("top1"), top5=last.get("top5"), train_loss=last["train_loss"],
                     best_top1=max(m.get("top1", 0) for m in metrics), img_per_s=float(np.mean([m["img_per_s"] for m in metrics])))
        flag = plateau_flag(metrics, r.view.num_classes, cfg.plateau_epochs, cfg.plateau_tol)
        final.update(learned=flag is None, flags=[flag] if flag else [])
        if flag:
            r.log.say(f"warning: {r.run_dir.name} {flag}; the report marks it and keeps it out of means")
    if acc.is_main_process:
        m = acc.unwrap_model(model)
        blob = {"model": m.state_dict(), "model_config": {"name": cfg.model, **vars(m.cfg)}, "classes": r.view.classes,
                "run_id": r.rid, "preprocess": preprocess.describe(cfg.preprocess, cfg.crop, r.view.resize)}
        if hasattr(m, "torchvision_names"):  # a torchvision model: the names plain torchvision loads it by
            blob["torchvision"] = m.torchvision_names()
        final["model_sha256"] = runs.save_file(blob, r.run_dir / "model.pt")
        r.costs.lap("finish")  # model.pt written
        final["costs"] = {**r.costs.s, "sum_step_s": round(sum(m["train_secs"] for m in metrics), 3)}
        runs.write_final(r.run_dir, finite(final))  # written last: the run is finished
        if final.get("top1") is not None:
            r.log.note(f"finished: top-1 {final['top1']:.2f}%, top-5 {final.get('top5') or float('nan'):.2f}% after {cfg.epochs} epochs")
        held.close()
    acc.wait_for_everyone()
    return final
