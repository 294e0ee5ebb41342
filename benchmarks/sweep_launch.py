"""What a local sweep of small runs spends outside training steps, with each way of starting a run's process: the
demo's plan (near/far sources, scratch, two fine-tunes; 80 px, width 0.25) by the real ``fastft sweep`` with
``--launch fresh`` (a new interpreter per run, the baseline) and ``--launch preloaded`` (forked from a server that
imported torch, dynamo, accelerate and DALI once), alternating, in one run. Prints one JSON object: per launcher and
repeat the sweep's wall time, its efficiency (training-step seconds over slots × wall) and fixed costs summed over
runs (``final.json`` ``costs``), plus the hardware; and checks that both launchers trained the same numbers.

Usage: python benchmarks/sweep_launch.py [--seeds 0] [--repeats 2] [--parallel 2] [--out benchmarks/results/…json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def store(root: Path) -> Path:
    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.synth import synth

    synth(root / "imagenet", train_per_class=40, val_per_class=10, size=96, val_layout="devkit", broken=False, seed=0)
    write_store(root / "imagenet", root / "store", ShardConfig(resize="80x80", shard_mb=2, allow_missing=True), progress=False)
    return root / "store"


def sweep(launcher: str, plan: Path, st: Path, out: Path, seeds: str, parallel: int) -> dict:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(plan), "--store", str(st), "--out", str(out), "--seeds",
                        seeds, "--parallel", str(parallel), "--quiet", "--launch", launcher], capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        sys.exit(f"fastft sweep --launch {launcher} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    eff = _efficiency(out, wall, parallel)
    top1 = {f.parent.name: json.loads(f.read_text()).get("top1") for f in sorted(out.glob("*/final.json"))}
    return {"launcher": launcher, "wall_s": round(wall, 2), "efficiency": eff, "top1": top1}


def _efficiency(out: Path, wall: float, slots: int) -> dict | None:
    from fastft.study.local import efficiency

    return efficiency(sorted(p.parent for p in out.glob("*/final.json")), round(wall, 2), slots)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    plan = Path(str(resources.files("fastft") / "_data" / "demo_plan.yaml"))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        st = store(d)
        rows = []
        for i in range(a.repeats):
            for launcher in ("fresh", "preloaded") if i % 2 == 0 else ("preloaded", "fresh"):
                rows.append({"repeat": i, **sweep(launcher, plan, st, d / f"runs-{launcher}-{i}", a.seeds, a.parallel)})
    walls = {L: sorted(r["wall_s"] for r in rows if r["launcher"] == L) for L in ("fresh", "preloaded")}
    res = {"bench": "sweep_launch", "date": time.strftime("%Y-%m-%d"), "plan": "demo-near-far", "seeds": a.seeds,
           "parallel": a.parallel, "runs_per_sweep": len(rows[0]["top1"]),
           "hardware": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                        "gpu": None, "python": platform.python_version()},
           "median_wall_s": {L: w[len(w) // 2] for L, w in walls.items()},
           "preloaded_vs_fresh_wall": round(walls["preloaded"][len(walls["preloaded"]) // 2] / walls["fresh"][len(walls["fresh"]) // 2], 3),
           "same_results": all(r["top1"] == rows[0]["top1"] for r in rows), "sweeps": rows}
    line = json.dumps(res, indent=1)
    print(line)
    if a.out:
        Path(a.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
