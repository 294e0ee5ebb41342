"""``fastft bench``: measured throughput of the loader and of training, with baselines measured in the same run.

* ``loader``: images/s of the PyTorch fallback (PIL DataLoader, the baseline) and of the DALI pipeline on the same
  view, plus batch class diversity (mean distinct classes per batch vs the i.i.d. expectation).
* ``train``: the synthetic-data step rate (the compute ceiling: the same model, optimiser, precision and step function
  on random tensors already on the device), fastft end to end (DALI loader → the trainer's step), the DataLoader
  baseline end to end, and with ``cache`` the decoded-image cache end to end (after its one decode pass, timed apart).

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


def bench_train(view: str, batch: int = 256, device: str = "auto", seconds: float = 10.0, compile: bool = False,
                width: float = 1.0, crop: int = 227, threads: int = 0, precision: str = "auto", cache: bool = False) -> dict:
    from contextlib import nullcontext

    from .model import AlexNet, ModelConfig
    from .pipelines import Loader, LoaderConfig
    from .store import open_view
    from .trainer import train_step

    dev = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    prec = precision if precision != "auto" else ("bf16" if dev == "cuda" else "fp32")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    cl = dev == "cuda"
    if dev == "cuda":
        torch.backends.cudnn.benchmark = True
    nc = open_view(view).num_classes

    def make():
        m = AlexNet(ModelConfig(nc, width, crop)).to(dev)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        fwd = torch.compile(m) if compile else m
        ac = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if prec == "bf16" else nullcontext
        return lambda x, y: train_step(fwd, opt, x, y, ac, lambda l: l.backward(), cl)

    res = {"bench": "train", "view": str(view), "batch": batch, "device": dev, "precision": prec, "compile": compile,
           "width": width, "crop": crop}
    results = {}
    for name in ("dataloader_e2e", "synthetic_ceiling", "fastft_e2e") + (("fastft_cached_e2e",) if cache else ()):
        step = make()
        if name == "synthetic_ceiling":
            x = torch.randn(batch, 3, crop, crop, device=dev)
            y = torch.randint(0, nc, (batch,), device=dev)
            batches = iter(lambda: (x, y), None)
        else:
            backend = "pytorch" if name == "dataloader_e2e" else "dali"
            L = Loader(view, "train", LoaderConfig(batch_size=batch, crop=crop, backend=backend, device=dev, num_threads=threads,
                                                   cache=name == "fastft_cached_e2e"), seed=0)
            if name == "fastft_cached_e2e":
                t0 = time.perf_counter()
                L._impl._fill()  # the one decode pass, timed apart from the steady state
                res["cache_fill_secs"] = round(time.perf_counter() - t0, 2)
            batches = ((x, y) for x, y, _ in _forever(L))

        def stepped():
            for x, y in batches:
                step(x, y)
                yield (x,)
        rate, _ = _rate(stepped(), seconds, 5, sync)
        results[name] = round(rate, 1)
    res.update({f"{k}_img_s": v for k, v in results.items()})
    res["fastft_vs_ceiling"] = round(results["fastft_e2e"] / results["synthetic_ceiling"], 3)
    res["fastft_vs_dataloader"] = round(results["fastft_e2e"] / results["dataloader_e2e"], 2)
    if cache:
        res["cached_vs_decoding"] = round(results["fastft_cached_e2e"] / results["fastft_e2e"], 2)
    return {**res, **hardware()}


def write(res: dict, out: str | None) -> None:
    line = json.dumps(res)
    print(line)
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(line + "\n")
