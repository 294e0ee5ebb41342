"""Helpers shared by the tests: the real ``fastft`` CLI in a process of its own, run directories and metrics, a
callback that interrupts ``fastft shard``."""
import json
import os
from pathlib import Path

from fastft.study import launch

SMALL = ["width=0.25", "crop=71", "batch_size=32", "init=paper-scaled", "plateau_epochs=0", "progress=false", "num_threads=1"]


# How the tests start `fastft`: as a sweep does (forked from a server with torch, accelerate and DALI imported: the same
# process a fresh `python -m fastft` is, tests/test_launch.py; ~5 s less per call on 2 cores), or FASTFT_TEST_LAUNCH=fresh
LAUNCH = os.environ.get("FASTFT_TEST_LAUNCH") or launch.default()


def fastft(*args, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = launch.run(LAUNCH, list(map(str, args)), e, timeout=600)
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


def stop_after(n: int):
    """A ``write_store(on_shard=...)`` callback that interrupts the run (as Ctrl-C would) after ``n`` new shards."""
    def on_shard(written: int) -> None:
        if written >= n:
            raise KeyboardInterrupt(f"stopped after {written} shards")
    return on_shard
