"""Helpers for tests that run the real ``fastft`` CLI in a subprocess (shared by the trainer and run-state tests)."""
import json
import os
import subprocess
import sys
from pathlib import Path

SMALL = ["width=0.25", "crop=71", "batch_size=32", "init=paper-scaled", "plateau_epochs=0", "progress=false", "num_threads=1"]


def fastft(*args, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "fastft", *map(str, args)], capture_output=True, text=True, env=e, timeout=600)
    if check and r.returncode:
        raise AssertionError(f"fastft {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


def run_dir(out: Path, name: str) -> Path:
    (d,) = [p for p in out.iterdir() if p.name.startswith(name + "-")]
    return d


def metrics(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]


def strip_speed(ms: list[dict]) -> list[dict]:
    """Epoch records without the wall-clock fields (what differs between two runs of the same computation)."""
    return [{k: v for k, v in x.items() if k not in ("img_per_s", "train_secs")} for x in ms]
