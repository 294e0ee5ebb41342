"""What bounds the DALI loader alone (no training) on a GPU machine: images/s and CPU accounting per variant, with
fastft's PyTorch fallback measured in the same run. Prints one JSON object.

Per variant: ``img_s``; ``main_busy`` = CPU time of the Python thread that drives the pipeline / wall time (1.0 = the
feed and hand-off loop is the bottleneck); ``cpu_ms_per_kimg`` = CPU time of the whole process per 1,000 images
(all DALI threads; the fallback's worker processes are not counted). Variants change one thing against ``dali``
(the loader as ``fastft train`` builds it):

* ``copy``: DALI copies the fed JPEG bytes (``FEED_NO_COPY = False``; by default it reads them in the store's memory maps);
* ``threads16`` / ``threads4``: 16 or 4 DALI CPU threads (the default caps a GPU-decoding pipeline at ``MIXED_THREADS``);
* ``cpu30`` / ``cpu45`` (any ``cpuNN``): that share of each batch decoded on the host cores next to the
  hardware decoder (``cpu_decode``); ``cpu100``: every sample decoded on the host cores, i.e. the rate the host share
  can add. From ``cpu100`` and ``threads4`` (else ``dali``) the probe then computes the share that balances the two decoders
  (``balanced_cpu_share``) and measures it too;
* ``gpuhuff90`` / ``gpuhuff75`` / ``gpuhuff60`` (any ``gpuhuffNN``): that share of the JPEGs on the hardware
  decoder, the rest decoded wholly on the GPU's cores (``LoaderConfig.gpu_huffman``: nvJPEG's GPU Huffman decoder, not the host), which the loader alone leaves idle;
* ``prefetch4``: a deeper prefetch queue;
* ``static``: DALI's classic executor;
* ``reader``: DALI's C++ webdataset reader on the view's shards (no Python feed at all; its own shuffle and crops):
  the rate of decoding alone on this machine.

Modifiers that each gain more than 3 % are then measured together (e.g. ``static+prefetch4``). ``threads16``,
``prefetch4`` and ``static`` were measured below and are no longer run by default (name them in ``--variants``).

On one H200 with 16 cores (2026-11-26, when the default was 16 threads) the fallback ran 10.0k img/s, the loader
28.2k (main thread busy 50 %), without the copy 34.6k, with 8 threads 34.6k, both + prefetch 4 34.2k, and DALI's
C++ reader 34.5k: the feed then keeps up with the hardware decoder, which bounds the loader at 3.45x the fallback
(``benchmarks/results/loader-probe-h200-2026-11-26d.json``). 8 threads (``MIXED_THREADS``) is the default now.
On another H200 (2026-11-27, ``loader-probe-h200-2026-11-27*.json``) the fallback ran 7.7-8.2k, the loader 22.2k /
27.5k (two runs), without the copy 29.5k (since the default), 75 % on the hardware decoder and the rest on the GPU's
cores 28.8k, host shares 30 / 45 / 100 % 24.4k / 21.1k / 13.2k, and DALI's C++ reader 31.6k (3.85x the fallback).

Usage: python benchmarks/loader_probe.py VIEW [--seconds 4] [--variants dali,threads8,...] [--hw-load 1.0] [--out F]
"""
import argparse
import time

import torch

from e2e_probe import _reader_batches
from fastft.bench import _forever, hardware, write
from fastft.loading import Loader, LoaderConfig, batch_format, dali


def _measure(batches, seconds: float, warmup: int, sync) -> dict:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    sync()
    t0, c0, p0, n = time.perf_counter(), time.thread_time(), time.process_time(), 0
    for x, *_ in it:
        n += x.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    sync()
    wall, main, proc = time.perf_counter() - t0, time.thread_time() - c0, time.process_time() - p0
    return {"img_s": round(n / wall, 1), "main_busy": round(main / wall, 2), "cpu_ms_per_kimg": round(proc / n * 1e6, 1)}


def _cpu_topology() -> dict:
    info = {}
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        if k.strip() in ("model name", "cpu cores", "siblings"):
            info.setdefault(k.strip(), v.strip())
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("view")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--hw-load", type=float, default=1.0)
    ap.add_argument("--variants", default="dali,cpu100,cpu30,cpu45,gpuhuff90,gpuhuff75,gpuhuff60,reader")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of the script (with --batch, --crop)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--crop", type=int, default=227)
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = a.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fmt = batch_format(dev, "bf16" if dev == "cuda" else "fp32")

    def loader(backend="dali", **kw):
        cfg = LoaderConfig(batch_size=a.batch, crop=a.crop, backend=backend, device=dev, hw_decoder_load=a.hw_load, **fmt)
        for k, v in kw.items():
            setattr(cfg, k, v)
        return _forever(Loader(a.view, "train", cfg, seed=0))

    mods = {"threads16": ({"num_threads": 16}, {"MIXED_THREADS": 16}), "threads4": ({"num_threads": 4}, {}),
            **{f"cpu{p}": ({"cpu_decode": p / 100}, {}) for p in range(1, 101)},
            **{f"gpuhuff{p}": ({"hw_decoder_load": p / 100, "gpu_huffman": True}, {}) for p in range(1, 100)},
            "prefetch4": ({"prefetch": 4}, {}), "static": ({}, {"EXEC_DYNAMIC": False}), "copy": ({}, {"FEED_NO_COPY": False})}

    def run(variant: str) -> dict:
        """``dali``, ``reader``, or modifiers of ``dali`` joined by ``+`` (e.g. ``static+prefetch4``)."""
        if variant == "reader":
            return _measure(_reader_batches(a.view, a.batch, a.hw_load, dev, a.crop), a.seconds, 3, sync)
        cfg, flags = {}, {}
        for m in variant.split("+"):
            if m != "dali":
                cfg.update(mods[m][0]), flags.update(mods[m][1])
        old = {k: getattr(dali, k) for k in flags}
        try:
            for k, v in flags.items():
                setattr(dali, k, v)
            return _measure(loader(**cfg), a.seconds, 3, sync)
        finally:
            for k, v in old.items():
                setattr(dali, k, v)

    res = {"bench": "loader_probe", "view": a.view, "batch": a.batch, "hw_decoder_load": a.hw_load, "cpu_topology": _cpu_topology()}
    res["pytorch"] = _measure(loader("pytorch"), a.seconds, 3, sync)  # first: its workers fork before DALI's threads exist
    print("pytorch", res["pytorch"], flush=True)
    v = res["variants"] = {}

    def attempt(name):
        try:
            v[name] = run(name)
        except Exception as e:  # noqa: BLE001 - one failing variant must not cost the others
            v[name] = f"error: {type(e).__name__}: {str(e)[:200]}"
        print(name, v[name], flush=True)
    for name in a.variants.split(","):
        attempt(name)
    ok = {k: r["img_s"] for k, r in v.items() if isinstance(r, dict)}
    if "cpu100" in ok and ("threads4" in ok or "dali" in ok):
        # the host share that balances the two decoders: the host pipeline gets 3/4 of the threads and the hardware
        # decoder's pipeline 1/4 (fastft.loading.dali._DaliBackend), so each is expected at its rate measured with those threads
        host = ok["cpu100"] * 0.75
        gpu = ok.get("threads4", ok.get("dali"))
        share = round(100 * host / (host + gpu))
        res["balanced_cpu_share"] = share / 100
        if 0 < share < 100 and f"cpu{share}" not in v:
            attempt(f"cpu{share}")
            ok = {k: r["img_s"] for k, r in v.items() if isinstance(r, dict)}
    if "dali" in ok:  # then the modifiers that each gained > 3 % together (the fastest of each kind)
        gain = sorted((k for k in ok if k in mods and ok[k] > 1.03 * ok["dali"]), key=ok.get, reverse=True)
        combo, seen = [], set()
        for k in gain:
            kind = next(iter({**mods[k][0], **mods[k][1]}))  # num_threads, cpu_decode, prefetch, or the flag
            if kind not in seen:
                combo.append(k), seen.add(kind)
        if len(combo) > 1:
            attempt("+".join(combo))
            ok = {k: r["img_s"] for k, r in v.items() if isinstance(r, dict)}
    if ok:
        best = max((k for k in ok if k != "reader"), key=ok.get, default=None)
        if best:
            res["best"], res["best_vs_pytorch"] = best, round(ok[best] / res["pytorch"]["img_s"], 2)
    write({**res, **hardware()}, a.out)


if __name__ == "__main__":
    main()
