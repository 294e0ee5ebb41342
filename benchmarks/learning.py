"""Does the paper's recipe learn? Loss curves of `fastft train` with several init × preprocessing recipes, in one run.

Builds a synthetic store (fastft synth → shard, real ILSVRC2012 layout and wnids), then trains the same scratch run
with each recipe (``init:preprocess``; the optimiser is fastft's default, Caffe's: biases at 2x LR, no decay) through
the real CLI, and prints one JSON object: per recipe the train loss and top-1 per epoch, ``final_train_loss`` and
its ratio to ln C, whether the learning guard flagged the run (or it failed: NaN). It also measures, at initialisation,
each layer's activations (mean, and their spread across samples: how much the layer's output depends on the image)
and its weight gradient relative to the weight, for the benchmark's size and for the paper's full size (width 1.0,
227 crops of 256×256), so the curves can be read against the signal each recipe starts with.

CPU default (the demo's size, a few minutes on 2 cores):
    python benchmarks/learning.py --out benchmarks/results/learning-cpu2-<date>.json
Full size on a GPU (issue "proven on the GPU"):
    python benchmarks/learning.py --classes 100 --per-class 1300 --size 256 --crop 227 --width 1.0 --batch 256 \
        --epochs 15 --precision fp32,bf16 --variants paper:caffe,paper:imagenet --parallel 1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_VARIANTS = "paper:caffe,paper-scaled:caffe,paper-scaled:imagenet,paper:imagenet,kaiming:imagenet,kaiming:caffe"


def build_store(work: Path, classes: int, per_class: int, size: int) -> tuple[Path, Path]:
    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.subsets import make
    from fastft.data.synth import demo_classes, synth
    from fastft.data.taxonomy import load

    h = load()
    wnids = demo_classes(max(8, -(-classes // 3)))[:classes]
    if len(wnids) < classes:  # more classes than the three branches spread: every k-th ILSVRC class
        wnids = h.wnids[:: max(1, 1000 // classes)][:classes]
    tree, store, spec = work / "tree", work / "store", work / "spec.json"
    if not (store / "manifest.json").exists():
        synth(tree, classes=wnids, train_per_class=per_class, val_per_class=max(10, per_class // 10),
              size=round(size * 1.2), seed=0)
        write_store(tree, store, ShardConfig(resize=f"{size}x{size}", allow_missing=True), progress=False)
    make("all", 0, within=sorted(wnids, key=h.label.__getitem__)).save(spec)
    return store, spec


def train(store: Path, spec: Path, out: Path, a, init: str, pre: str, precision: str) -> dict:
    name = f"{init}-{pre}-{precision}"
    args = [f"spec={spec}", "set=target", f"store={store}", f"out={out}", f"name={name}", f"init={init}", f"preprocess={pre}",
            f"width={a.width}", f"crop={a.crop}", f"batch_size={a.batch}", f"epochs={a.epochs}", f"lr_step={a.lr_step}",
            f"precision={precision}", "progress=false", f"num_threads={a.threads}"]
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "fastft", "train", *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    (d,) = [p for p in out.iterdir() if p.name.startswith(name + "-")]
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    res = {"init": init, "preprocessing": pre, "precision": precision, "exit_code": r.returncode,
           "wall_s": round(time.time() - t0, 1), "train_loss": [round(m["train_loss"], 4) for m in metrics],
           "top1": [round(m.get("top1", float("nan")), 2) for m in metrics]}
    if (d / "final.json").exists():
        fin = json.loads((d / "final.json").read_text())
        res.update(final_train_loss=fin.get("train_loss"), final_top1=fin.get("top1"), learned=fin.get("learned"),
                   flags=fin.get("flags", []))
    if (d / "failed.json").exists():
        res.update(failed=json.loads((d / "failed.json").read_text())["reason"], learned=False)
    return res


def init_signal(view: Path, width: float, crop: int, recipes: list[tuple[str, str]], classes: int) -> dict:
    """Per recipe and layer at initialisation (train mode, one batch of 64): activation mean, spread across samples
    (std over the batch, averaged over units) and |grad W| / |W|."""
    import torch
    import torch.nn.functional as F

    from fastft.model import LAYERS, AlexNet, ModelConfig
    from fastft.loading import Loader, LoaderConfig

    out = {}
    for init, pre in recipes:
        x, y, _ = next(iter(Loader(view, "train", LoaderConfig(batch_size=64, crop=crop, num_threads=1, preprocess=pre),
                                   seed=0).epoch(0)))
        torch.manual_seed(0)
        m = AlexNet(ModelConfig(classes, width, crop, init=init)).train()
        taps = m(x, taps=LAYERS)
        F.cross_entropy(taps["fc8"], y).backward()
        rows = {}
        for layer in LAYERS:
            act = taps[layer].detach().flatten(1)
            w = getattr(m, layer)[0 if layer.startswith("conv") else 1].weight
            rows[layer] = {"mean": float(f"{act.mean():.4g}"), "spread": float(f"{act.std(0).mean():.4g}"),
                           "grad_rel": float(f"{w.grad.norm() / w.norm():.4g}")}
        out[f"{init}:{pre}"] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--size", type=int, default=80, help="stored image side (the paper: 256)")
    p.add_argument("--crop", type=int, default=71)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr-step", type=int, default=10)
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated init:preprocess recipes")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--work", help="keep the store and runs here (default: a temporary directory)")
    p.add_argument("--no-full-size-signal", action="store_true", help="skip the full-size init measurement")
    p.add_argument("--out")
    a = p.parse_args()
    recipes = [tuple(v.split(":")) for v in a.variants.split(",")]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="fastft-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    store, spec = build_store(work, a.classes, a.per_class, a.size)
    runs = work / "runs"
    runs.mkdir(exist_ok=True)
    jobs = [(i, pre, prec) for i, pre in recipes for prec in a.precision.split(",")]
    with ThreadPoolExecutor(a.parallel) as pool:
        results = list(pool.map(lambda j: train(store, spec, runs, a, *j), jobs))
    from fastft.data.views import shared_view
    import torch

    view = shared_view(spec, "target", store, runs / "views", existing_only=True)
    signal = {f"width {a.width}, crop {a.crop}": init_signal(view, a.width, a.crop, recipes, a.classes)}
    if not a.no_full_size_signal and (a.width, a.crop) != (1.0, 227):
        big_store, big_spec = build_store(work / "full-size", min(a.classes, 24), 4, 256)
        big_view = shared_view(big_spec, "target", big_store, work / "full-size" / "views")
        signal["width 1.0, crop 227 (the paper's size)"] = init_signal(big_view, 1.0, 227, recipes, min(a.classes, 24))
    res = {"benchmark": "learning", "num_classes": a.classes, "ln_classes": round(math.log(a.classes), 4),
           "train_per_class": a.per_class, "image_size": a.size, "crop": a.crop, "width": a.width, "batch_size": a.batch,
           "epochs": a.epochs, "lr_step": a.lr_step, "data": "fastft synth (hierarchy-structured synthetic images)",
           "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "runs": results, "init_signal": signal}
    for r in results:
        if r.get("final_train_loss") is not None:
            r["final_vs_ln_classes"] = round(r["final_train_loss"] / math.log(a.classes), 3)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
