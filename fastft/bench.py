"""``fastft bench``: measured throughput of the loader and of training, with baselines measured in the same run.

* ``loader``: images/s of the PyTorch fallback (PIL DataLoader, the baseline) and of the DALI pipeline on the same
  view, plus batch class diversity (mean distinct classes per batch vs the i.i.d. expectation).
* ``train``: the synthetic-data step rate (the compute ceiling: the same model, optimiser, precision and step function
  on random tensors already on the device) for each step mode (eager, CUDA graph, compiled, both), then with the
  fastest: fastft end to end (DALI loader → the trainer's step) per hardware-decoder share, the DataLoader baseline
  end to end, and with ``cache`` the decoded-image cache end to end (after its one decode pass, timed apart).
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


def hardware() -> dict:
    hw = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from .runs import environment

    hw["dali"] = environment()["dali"]
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


def bench_loader(view: str, batch: int = 256, device: str = "auto", seconds: float = 10.0, threads: int = 0,
                 crop: int = 227) -> dict:
    from .pipelines import Loader, LoaderConfig

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    res = {"bench": "loader", "view": str(view), "batch": batch, "device": dev}
    for backend in ("pytorch", "dali"):
        L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev, num_threads=threads), seed=0)
        rate, n = _rate(_forever(L), seconds, 3, sync)
        res[f"{backend}_img_s"] = round(rate, 1)
    idx = L.epoch_indices(0)
    labels = L.src.labels
    distinct = [len(np.unique(labels[b])) for b in idx]
    d = diversity(labels, batch, L.num_classes)
    d["mean_distinct"] = round(float(np.mean(distinct)), 2)
    res["class_diversity"] = d
    res["dali_vs_pytorch"] = round(res["dali_img_s"] / res["pytorch_img_s"], 2)
    return {**res, **hardware()}


STEP_MODES = ("eager", "compile", "graph", "compile+graph")


def _make_step(mode: str, nc: int, dev: str, prec: str, width: float, crop: int):
    """The trainer's :class:`~fastft.trainer.Step` on a fresh paper AlexNet + SGD, as ``fastft train`` builds it."""
    from contextlib import nullcontext

    from .model import AlexNet, ModelConfig
    from .trainer import Step, cuda_autocast

    if mode not in STEP_MODES:
        raise ValueError(f"step mode must be one of {STEP_MODES}, got {mode!r}")
    graph = "graph" in mode and dev == "cuda"
    m = AlexNet(ModelConfig(nc, width, crop)).to(dev)
    if dev == "cuda":
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ac = cuda_autocast(True) if prec == "bf16" else nullcontext
    return Step(m, opt, autocast=ac, channels_last=dev == "cuda", compile="compile" in mode, graph=graph)


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


def bench_train(view: str, batch: int = 256, device: str = "auto", seconds: float = 10.0, steps: tuple[str, ...] | None = None,
                width: float = 1.0, crop: int = 227, threads: int = 0, precision: str = "auto", cache: bool = False,
                hw_loads: tuple[float, ...] = (0.65,)) -> dict:
    """Ceilings for each step mode on synthetic device tensors, then — with the fastest mode — the DataLoader
    baseline, fastft's DALI path for each hardware-decoder share, and (``cache``) the decoded-image cache."""
    from .pipelines import Loader, LoaderConfig
    from .store import open_view

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    prec = precision if precision != "auto" else ("bf16" if dev == "cuda" else "fp32")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = tuple(steps or (("eager", "graph") if dev == "cuda" else ("eager",)))
    nc = open_view(view).num_classes
    res = {"bench": "train", "view": str(view), "batch": batch, "device": dev, "precision": prec, "width": width, "crop": crop,
           "model": "AlexNet (paper: LRN, 96/256/384/384/256, 4096/4096)" if width == 1.0 else f"AlexNet width {width}"}

    # 1. the compute ceiling of each step mode: the same step on random tensors already on the device
    x = torch.randn(batch, 3, crop, crop, device=dev)
    y = torch.randint(0, nc, (batch,), device=dev)
    ceil, made = {}, {}
    for mode in steps:
        def run(mode=mode):
            made[mode] = _make_step(mode, nc, dev, prec, width, crop)
            return _rate(_stepped(made[mode], iter(lambda: (x, y), None)), seconds, 8, sync)[0]
        ceil[mode] = _measure(run)
    res["ceiling_img_s"] = ceil
    ok = {k: v for k, v in ceil.items() if isinstance(v, float)}
    if not ok:
        return {**res, **hardware()}
    best = max(ok, key=ok.get)
    res["step"], res["synthetic_ceiling_img_s"] = best, ok[best]
    step = made[best]

    def e2e(backend: str, hw: float = 0.65, cached: float = 0.0) -> float:
        """``cached``: the fraction of the view kept decoded on the device (0 = decode every epoch)."""
        gb = 0.0
        if cached:
            v = open_view(view)
            w, h = v.image_size
            gb = cached * len(v.keys("train")) * w * h * 3 / 1e9 + 1e-9
        L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev, num_threads=threads,
                                               hw_decoder_load=hw, cache=bool(cached), cache_gb=gb), seed=0)
        if cached == 1.0:
            t0 = time.perf_counter()
            L._impl._fill()  # the one decode pass, timed apart from the steady state
            sync()
            res["cache_fill_secs"] = round(time.perf_counter() - t0, 2)
        return _rate(_stepped(step, ((x, y) for x, y, _ in _forever(L))), seconds, 5, sync)[0]

    # 2. the baseline first: its workers fork before DALI's thread pools exist
    res["dataloader_e2e_img_s"] = _measure(lambda: e2e("pytorch"))
    by_hw = {str(h): _measure(lambda h=h: e2e("dali", h)) for h in hw_loads}
    res["fastft_e2e_by_hw_decoder_load"] = by_hw
    ok_hw = {k: v for k, v in by_hw.items() if isinstance(v, float)}
    if ok_hw:
        res["fastft_e2e_img_s"] = max(ok_hw.values())
        res["fastft_vs_ceiling"] = round(res["fastft_e2e_img_s"] / res["synthetic_ceiling_img_s"], 3)
    if cache:  # the whole view cached (fine-tuning targets), and half of it (a source larger than GPU memory)
        res["fastft_cached_e2e_img_s"] = _measure(lambda: e2e("dali", max(hw_loads), cached=1.0))
        res["fastft_half_cached_e2e_img_s"] = _measure(lambda: e2e("dali", max(hw_loads), cached=0.5))
    base = res["dataloader_e2e_img_s"]
    for k in ("fastft_e2e", "fastft_cached_e2e", "fastft_half_cached_e2e"):
        v = res.get(f"{k}_img_s")
        if isinstance(v, float):
            res[f"{k.replace('_e2e', '')}_vs_ceiling"] = round(v / res["synthetic_ceiling_img_s"], 3)
            if isinstance(base, float):
                res[f"{k.replace('_e2e', '')}_vs_dataloader"] = round(v / base, 2)
    return {**res, **hardware()}


def _pack_worker(view, batch, seconds, mode, cache, hw, barrier, out_q, idx):
    dev = "cuda"
    from .pipelines import Loader, LoaderConfig
    from .store import open_view

    torch.backends.cudnn.benchmark = True
    try:
        step = _make_step(mode, open_view(view).num_classes, dev, "bf16", 1.0, 227)
        L = Loader(view, "train", LoaderConfig(batch_size=batch, device=dev, hw_decoder_load=hw, cache=cache,
                                               num_threads=max(1, (os.cpu_count() or 2) // barrier.parties)), seed=idx)
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
               cache: bool = True, hw_decoder_load: float = 0.65) -> dict:
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
        p.write_text(line + "\n")
