"""``fastft bench``: measured throughput of the loader and of training, with baselines measured in the same run.

* ``loader``: images/s of the PyTorch fallback (PIL DataLoader, the baseline) and of the DALI pipeline on the same
  view, plus batch class diversity (mean distinct classes per batch vs the i.i.d. expectation).
* ``train``: the synthetic-data step rate (the compute ceiling: the same model, optimiser, precision and step function
  on random tensors already on the device) for each step mode (eager, CUDA graph, compiled, both), then with the
  fastest: fastft end to end (DALI loader → the trainer's step) per hardware-decoder share, the DataLoader baseline
  end to end, and with ``cache`` the decoded-image cache end to end (after its one decode pass, timed apart; on GPUs
  the host tier both staged and read by the GPU itself, ``host_gather``). Modes with step variants
  (:mod:`fastft.train.variants`) are also given against the same mode without them (``variant_vs_baseline``).
* ``pack``: aggregate images/s of k concurrent training processes on one GPU (what ``fastft sweep --per-gpu`` packs).

The baseline always runs first: its workers fork before DALI's thread pools exist. Results are one JSON object
naming the hardware; ``--out`` also writes it to a file (``benchmarks/results/`` by convention).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import models
from .errors import FastFTError
from .files import fsync_write
from .util.device import resolve


def hardware() -> dict:
    hw = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from .loading import dali
    from .runs import environment

    hw["dali"] = environment()["dali"]
    # the module-level DALI settings the figures were measured with
    hw["dali_settings"] = {k.lower(): getattr(dali, k) for k in ("EXEC_DYNAMIC", "FEED_NO_COPY", "MIXED_THREADS")}
    return hw


def _rate(batches, seconds: float, warmup: int, sync) -> tuple[float, int]:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync()
    t0, n = time.perf_counter(), 0
    for x, *_ in it:
        n += x.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    sync()
    return n / (time.perf_counter() - t0), n


def _forever(loader):
    e = 0
    while True:
        yield from loader.epoch(e)
        e += 1


def diversity(labels: np.ndarray, batch: int, classes: int) -> dict:
    """Mean distinct classes per batch of the loader's order vs i.i.d. sampling with the same class frequencies."""
    p = np.bincount(labels, minlength=classes) / len(labels)
    iid = float(np.sum(1 - (1 - p) ** batch))
    return {"mean_distinct": None, "iid_expectation": round(iid, 2)}


def _scan(measure, hw_loads, cpu_shares, dev: str, res: dict, key: str) -> None:
    """``measure(hw, cpu)`` for each hardware-decoder share × host-decoded share (on CPU only the one CPU pipeline),
    into ``res[key + "_by_setting"]``; the fastest as ``res[key + "_img_s"]`` with its ``hw_decoder_load`` and
    ``cpu_decode``."""
    settings = [(h, c) for h in hw_loads for c in cpu_shares] if dev == "cuda" else [(1.0, 0.0)]
    rates = [_measure(lambda h=h, c=c: measure(h, c)) for h, c in settings]
    res[f"{key}_by_setting"] = {f"hw={h},cpu={c}": r for (h, c), r in zip(settings, rates)}
    ok = [(r, s) for r, s in zip(rates, settings) if isinstance(r, float)]
    if ok:
        r, (res["hw_decoder_load"], res["cpu_decode"]) = max(ok)
        res[f"{key}_img_s"] = r


def bench_loader(view: str, batch: int = 256, device: str = "auto", seconds: float = 10.0, threads: int = 0,
                 crop: int = 227, hw_loads: tuple[float, ...] = (1.0,), cpu_shares: tuple[float, ...] = (0.0,),
                 gpu_huffman: bool = False) -> dict:
    """The fallback (PIL DataLoader) and the DALI pipeline for each hardware-decoder share × host-decoded share
    (``cpu_decode``), emitting what training consumes (:func:`~fastft.loading.batch_format`). ``gpu_huffman``: the
    JPEGs beyond the hardware decoder's share are decoded wholly on the GPU (``LoaderConfig.gpu_huffman``)."""
    from .loading import Loader, LoaderConfig, batch_format

    dev = resolve(device)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fmt = batch_format(dev, "bf16" if dev == "cuda" else "fp32")
    res = {"bench": "loader", "view": str(view), "batch": batch, "device": dev, **fmt, "gpu_huffman": gpu_huffman}

    def rate(backend: str, hw: float = 1.0, cpu: float = 0.0) -> float:
        L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev, num_threads=threads,
                                               hw_decoder_load=hw, cpu_decode=cpu, gpu_huffman=gpu_huffman, **fmt), seed=0)
        return _rate(_forever(L), seconds, 3, sync)[0]
    res["pytorch_img_s"] = round(rate("pytorch"), 1)  # first: its workers fork before DALI's thread pools exist
    _scan(lambda h, c: rate("dali", h, c), hw_loads, cpu_shares, dev, res, "dali")
    if "dali_img_s" in res:
        res["dali_vs_pytorch"] = round(res["dali_img_s"] / res["pytorch_img_s"], 2)
    L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend="pytorch", num_threads=1), seed=0)
    labels = L.src.labels
    d = diversity(labels, batch, L.num_classes)
    d["mean_distinct"] = round(float(np.mean([len(np.unique(labels[b])) for b in L.epoch_indices(0)])), 2)
    res["class_diversity"] = d
    return {**res, **hardware()}


STEP_FLAGS = ("compile", "graph", "fused", "pad4", "pad8")  # a step mode: "eager" or a "+"-joined set of these
# and of the step variants (fastft.train.variants)


def parse_mode(mode: str) -> tuple[set[str], list[str]]:
    """A step mode's step flags and its step variants (:mod:`fastft.train.variants`, in the order given)."""
    from .train import variants

    parts = [] if mode == "eager" else mode.split("+")
    flags = {p for p in parts if p in STEP_FLAGS}
    extra = [p for p in parts if p not in STEP_FLAGS]
    bad = [p for p in extra if p not in variants.REGISTRY]
    if bad or (mode != "eager" and not parts) or "" in parts or len(flags & {"pad4", "pad8"}) > 1 or len(set(parts)) < len(parts):
        raise ValueError(f"step mode must be 'eager' or a '+'-joined set of {STEP_FLAGS} (one pad) and step variants "
                         f"({', '.join(sorted(variants.REGISTRY))}), each once; got {mode!r}")
    return flags, extra


def check_modes(modes) -> None:
    """Every step mode valid, before any work (a typo must not cost a GPU session its figures)."""
    from .errors import FastFTError

    for m in modes:
        try:
            parse_mode(m)
        except ValueError as e:
            raise FastFTError(str(e)) from None


def baseline_of(mode: str) -> str:
    """The mode without its step variants: what a variant is measured against in the same run."""
    flags, _ = parse_mode(mode)
    return "+".join(f for f in STEP_FLAGS if f in flags) or "eager"


def _make_step(mode: str, nc: int, dev: str, prec: str, width: float, crop: int, model: str = "alexnet"):
    """The trainer's :class:`~fastft.trainer.Step` on a fresh ``model`` (the paper's AlexNet) + SGD, as ``fastft
    train`` builds it: through the registry (:mod:`fastft.models`), given the train keys it takes.
    ``mode``: ``eager``, or flags joined by ``+``: ``compile`` (torch.compile), ``graph`` (CUDA graph), ``fused``
    (fused SGD), ``pad4``/``pad8`` (conv1 input channels, see ``AlexNet.pad_input``), and step variants
    (:mod:`fastft.train.variants`, applied to the model on its device before the optimiser is made)."""
    from contextlib import nullcontext

    from . import models
    from .train import Step, cuda_autocast, sgd, variants

    flags, extra = parse_mode(mode)
    cuda = dev == "cuda"
    m = models.build(model, nc, **models.model_keys(model, {"width": width, "crop": crop})).to(dev)
    if cuda:
        m = m.to(memory_format=torch.channels_last)
    if hasattr(m, "pad_input"):
        m.pad_input(4 if "pad4" in flags else 8 if "pad8" in flags else 0)
    variants.apply(extra, m, dev)
    opt = sgd(m.parameters(), 0.01, 0.9, 5e-4, fused="fused" in flags and cuda)
    ac = cuda_autocast(True) if prec == "bf16" else nullcontext
    return Step(m, opt, autocast=ac, channels_last=cuda, compile="compile" in flags, graph="graph" in flags and cuda)


def synthetic_batch(batch: int, crop: int, dev: str, prec: str) -> torch.Tensor:
    """The ceiling's input: random values in the format the loaders emit for training (:func:`batch_format`)."""
    from .loading import batch_format

    f = batch_format(dev, prec)
    x = torch.randn(batch, 3, crop, crop, device=dev, dtype=torch.float16 if f["fp16"] else torch.float32)
    return x.contiguous(memory_format=torch.channels_last) if f["channels_last"] else x


def _stepped(step, batches):
    for x, y in batches:
        step(x, y)
        yield (x,)


def _measure(fn) -> float | str:
    """A variant's rate, or its error as a string: one failing variant must not cost the others' figures."""
    try:
        return round(fn(), 1)
    except Exception as e:  # noqa: BLE001 - reported in the JSON
        return f"error: {type(e).__name__}: {str(e)[:300]}"


def _check_model(model: str, width: float, crop: int) -> None:
    """``--model`` and the keys given with it, named before anything is measured (a mistake would otherwise land in
    the JSON as every mode's error)."""
    spec = models.spec(model)  # an unknown name: the registered ones listed
    if width != 1.0 and "width" not in spec.keys:
        raise FastFTError(f"--width is a key of the paper's AlexNet; model {model} does not take it (leave it out)")
    if crop < spec.min_crop:
        raise FastFTError(f"--crop {crop} is smaller than model {model}'s smallest input ({spec.min_crop})")


def bench_train(view: str, batch: int = 256, device: str = "auto", seconds: float = 10.0, steps: tuple[str, ...] | None = None,
                width: float = 1.0, crop: int = 227, threads: int = 0, precision: str = "auto", cache: bool = False,
                hw_loads: tuple[float, ...] = (1.0,), cpu_shares: tuple[float, ...] = (0.0,), model: str = "alexnet") -> dict:
    """Ceilings for each step mode on synthetic device tensors, then — with the fastest mode — the DataLoader
    baseline, fastft's DALI path for each hardware-decoder share × host-decoded share, and (``cache``) the
    decoded-image cache. ``model``: a registered model (:mod:`fastft.models`), the paper's AlexNet by default."""
    from .loading import Loader, LoaderConfig, batch_format
    from .data.views import open_view

    _check_model(model, width, crop)
    dev = resolve(device)
    prec = precision if precision != "auto" else ("bf16" if dev == "cuda" else "fp32")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = tuple(steps or (("eager", "graph") if dev == "cuda" else ("eager",)))
    nc = open_view(view).num_classes
    res = {"bench": "train", "view": str(view), "batch": batch, "device": dev, "precision": prec, "crop": crop,
           **({"width": width} if "width" in models.spec(model).keys else {}),
           "model": model if model != "alexnet" else
           "AlexNet (paper: LRN, 96/256/384/384/256, 4096/4096)" if width == 1.0 else f"AlexNet width {width}"}

    # 1. the compute ceiling of each step mode: the same step on random tensors already on the device
    x = synthetic_batch(batch, crop, dev, prec)
    y = torch.randint(0, nc, (batch,), device=dev)
    res["input"] = "float16 NHWC" if x.dtype == torch.float16 else "float32 NCHW"
    ceil, made = {}, {}
    for mode in steps:
        def run(mode=mode):
            made[mode] = _make_step(mode, nc, dev, prec, width, crop, model)
            return _rate(_stepped(made[mode], iter(lambda: (x, y), None)), seconds, 8, sync)[0]
        ceil[mode] = _measure(run)
    res["ceiling_img_s"] = ceil
    ok = {k: v for k, v in ceil.items() if isinstance(v, float)}
    if not ok:
        return {**res, **hardware()}
    best = max(ok, key=ok.get)
    res["step"], res["synthetic_ceiling_img_s"] = best, ok[best]
    # each mode with step variants against the same mode without them, measured in this run
    vs = {m: round(v / ok[baseline_of(m)], 3) for m, v in ok.items() if baseline_of(m) != m and baseline_of(m) in ok}
    if vs:
        res["variant_vs_baseline"] = vs
    step = made[best]

    fmt = batch_format(dev, prec)

    def e2e(backend: str, hw: float = 1.0, cached: float = 0.0, host: float = 0.0, cpu: float = 0.0, gather: str = "staged") -> float:
        """``cached``/``host``: the fractions of the view kept decoded on the device / in pinned host memory (the
        rest is decoded every epoch); ``gather``: how the host tier reaches the device (``LoaderConfig.host_gather``)."""
        gb = hgb = 0.0
        if cached or host:
            v = open_view(view)
            w, h = v.image_size
            size = len(v.keys("train")) * w * h * 3 / 1e9
            gb, hgb = cached * size + 1e-9, host * size + (1e-9 if host else 0)
        L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev, num_threads=threads,
                                               hw_decoder_load=hw, cpu_decode=cpu, cache=bool(cached or host), cache_gb=gb,
                                               host_cache_gb=hgb, host_gather=gather, **fmt), seed=0)
        if cached == 1.0:
            t0 = time.perf_counter()
            L.fill_cache()  # the one decode pass, timed apart from the steady state
            sync()
            res["cache_fill_secs"] = round(time.perf_counter() - t0, 2)
            res["cache_fill_img_s"] = round(len(L.src) / max(res["cache_fill_secs"], 1e-9), 1)
        return _rate(_stepped(step, ((x, y) for x, y, _ in _forever(L))), seconds, 5, sync)[0]

    # 2. the baseline first: its workers fork before DALI's thread pools exist
    res["dataloader_e2e_img_s"] = _measure(lambda: e2e("pytorch"))
    _scan(lambda h, c: e2e("dali", h, cpu=c), hw_loads, cpu_shares, dev, res, "fastft_e2e")
    if "fastft_e2e_img_s" in res:
        res["fastft_vs_ceiling"] = round(res["fastft_e2e_img_s"] / res["synthetic_ceiling_img_s"], 3)
    if cache:  # the whole view on the device (fine-tuning targets); a source larger than GPU memory: half on the device
        # and half decoded (with the best decode setting), or all in the host tier, or half on the device, half in the host tier
        hw, cpu = res.get("hw_decoder_load", max(hw_loads)), res.get("cpu_decode", 0.0)
        res["fastft_cached_e2e_img_s"] = _measure(lambda: e2e("dali", hw, cached=1.0))
        res["fastft_half_cached_e2e_img_s"] = _measure(lambda: e2e("dali", hw, cached=0.5, cpu=cpu))
        if dev == "cuda":
            res["fastft_host_cached_e2e_img_s"] = _measure(lambda: e2e("dali", hw, host=1.0))
            res["fastft_half_device_half_host_e2e_img_s"] = _measure(lambda: e2e("dali", hw, cached=0.5, host=0.5))
            # the host tier read by the GPU itself (no CPU gather, only the crops cross the link), against the staging above
            res["fastft_host_cached_gpu_gather_e2e_img_s"] = _measure(lambda: e2e("dali", hw, host=1.0, gather="gpu"))
            res["fastft_half_device_half_host_gpu_gather_e2e_img_s"] = _measure(
                lambda: e2e("dali", hw, cached=0.5, host=0.5, gather="gpu"))
    base = res["dataloader_e2e_img_s"]
    for k in ("fastft_e2e", "fastft_cached_e2e", "fastft_half_cached_e2e", "fastft_host_cached_e2e", "fastft_half_device_half_host_e2e",
              "fastft_host_cached_gpu_gather_e2e", "fastft_half_device_half_host_gpu_gather_e2e"):
        v = res.get(f"{k}_img_s")
        if isinstance(v, float):
            res[f"{k.replace('_e2e', '')}_vs_ceiling"] = round(v / res["synthetic_ceiling_img_s"], 3)
            if isinstance(base, float):
                res[f"{k.replace('_e2e', '')}_vs_dataloader"] = round(v / base, 2)
    return {**res, **hardware()}


def _pack_worker(view, batch, seconds, mode, cache, hw, barrier, out_q, idx):
    dev = "cuda"
    from .loading import Loader, LoaderConfig, batch_format
    from .data.views import open_view

    torch.backends.cudnn.benchmark = True
    try:
        step = _make_step(mode, open_view(view).num_classes, dev, "bf16", 1.0, 227)
        L = Loader(view, "train", LoaderConfig(batch_size=batch, device=dev, hw_decoder_load=hw, cache=cache,
                                               num_threads=max(1, (os.cpu_count() or 2) // barrier.parties),
                                               **batch_format(dev, "bf16")), seed=idx)
        it = _stepped(step, ((x, y) for x, y, _ in _forever(L)))
        for _ in range(10):  # warm-up, graph capture and (cache) the decode pass, before the common window
            next(it)
        torch.cuda.synchronize()
        barrier.wait(timeout=600)
        out_q.put((idx, _rate(it, seconds, 0, torch.cuda.synchronize)[0]))
    except Exception as e:  # noqa: BLE001
        barrier.abort()
        out_q.put((idx, f"error: {type(e).__name__}: {str(e)[:300]}"))


def bench_pack(view: str, runs: tuple[int, ...] = (1, 2), batch: int = 256, seconds: float = 10.0, step: str = "graph",
               cache: bool = True, hw_decoder_load: float = 1.0) -> dict:
    """Aggregate images/s of ``k`` concurrent single-GPU training processes on one GPU (each its own model, optimiser
    and loader over the view), for each k in ``runs``: how many runs ``fastft sweep --per-gpu`` should pack.
    All processes warm up first and then measure over the same window (a barrier)."""
    import multiprocessing as mp

    if not torch.cuda.is_available():
        raise RuntimeError("bench pack needs a CUDA GPU")
    ctx = mp.get_context("spawn")
    res = {"bench": "pack", "view": str(view), "batch": batch, "step": step, "cache": cache, "by_runs": {}}
    for k in runs:
        barrier, q = ctx.Barrier(k), ctx.Queue()
        ps = [ctx.Process(target=_pack_worker, args=(view, batch, seconds, step, cache, hw_decoder_load, barrier, q, i)) for i in range(k)]
        for p in ps:
            p.start()
        rates = [q.get(timeout=900)[1] for _ in ps]
        for p in ps:
            p.join()
        ok = [r for r in rates if isinstance(r, float)]
        res["by_runs"][str(k)] = {"per_run_img_s": [round(r, 1) if isinstance(r, float) else r for r in rates],
                                  "aggregate_img_s": round(sum(ok), 1) if len(ok) == k else None}
    agg = {k: v["aggregate_img_s"] for k, v in res["by_runs"].items() if v["aggregate_img_s"]}
    if agg:
        res["best_runs_per_gpu"] = int(max(agg, key=agg.get))
        res["best_aggregate_img_s"] = max(agg.values())
    return {**res, **hardware()}


def write(res: dict, out: str | None) -> None:
    line = json.dumps(res)
    print(line)
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        fsync_write(p, line + "\n")
