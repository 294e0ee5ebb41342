"""Shard-writer throughput: `fastft shard` with all cores vs single-core PIL decode → resize → encode, same run.

Builds an ImageNet-like tree (ImageNet's typical sizes, 500x375 … 640x480, JPEG q90; real wnids) in a temp dir,
then measures on the same machine in the same process:
  * baseline: one core doing what a naive converter does per image (PIL open, convert RGB, resize 256x256, JPEG q90);
  * fastft:   `write_store` with N workers (DCT-domain downscale, ordered pool, tar + index + sha256 writing).
Prints one JSON object (hardware named). Usage: python benchmarks/shard_throughput.py [--images 2000] [--workers N]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_tree(root: Path, n: int, classes: list[str]) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        c = classes[i % len(classes)]
        w, h = random.Random(i).choice([(500, 375), (375, 500), (500, 333), (500, 400), (640, 480)])
        lo = rng.integers(0, 255, (h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(lo).resize((w, h), Image.BICUBIC), dtype=np.float32) + rng.normal(0, 8, (h, w, 3))
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{c}_{i}.JPEG", quality=90)


def baseline(files: list[Path], seconds: float = 8.0) -> float:
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        im = Image.open(files[n % len(files)]).convert("RGB").resize((256, 256), Image.BILINEAR)
        im.save(io.BytesIO(), "JPEG", quality=90)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    a = ap.parse_args()
    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.taxonomy import load

    classes = list(load().wnids[:20])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ILSVRC2012"
        make_tree(root, a.images, classes)
        files = sorted((root / "train").rglob("*.JPEG"))
        base = baseline(files)
        t0 = time.perf_counter()
        m = write_store(root, Path(tmp) / "store", ShardConfig(classes=tuple(classes)), workers=a.workers, progress=False)
        secs = time.perf_counter() - t0
    rate = m["totals"]["inputs"] / secs
    print(json.dumps({
        "benchmark": "shard_throughput", "images": a.images, "input": "ImageNet-like JPEG 500x375..640x480 q90", "output": "256x256 q90",
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "workers": a.workers,
        "baseline_pil_one_core_img_s": round(base, 1), "fastft_shard_img_s": round(rate, 1),
        "fastft_per_worker_img_s": round(rate / a.workers, 1), "speedup_vs_one_core": round(rate / base, 2),
        "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
