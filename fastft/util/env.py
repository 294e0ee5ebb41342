"""The machine and the ``FASTFT_*`` environment contract, in one place: who sets each variable, who reads it.

``fastft sweep`` gives every run it starts a *slot* (environment variables); the run's loaders and cache read them to
split the node fairly among the runs packed on it. The lease settings are read by every sweep on a runs directory
(they must agree). Torch-free.
"""
from __future__ import annotations

import os

NODE_RUNS = "FASTFT_NODE_RUNS"           # set by fastft sweep per slot: runs packed on this node (cores, host memory)
GPU_SHARE = "FASTFT_GPU_SHARE"           # set by fastft sweep per slot: runs sharing this GPU (its memory for the cache)
CLAIM_HEARTBEAT = "FASTFT_CLAIM_HEARTBEAT_S"  # read by fastft sweep: how often a sweep refreshes its claims (s)
CLAIM_STALE = "FASTFT_CLAIM_STALE_S"     # read by fastft sweep: a claim older than this is taken over (s)
PROGRESS_LOG = "FASTFT_PROGRESS_LOG_S"   # read by every progress bar: in a log, a line at most this often (s)
SUPERVISOR = "FASTFT_SUPERVISOR"         # set by fastft sweep per run: "<pid> <start time>" of the sweep; read by the run


def _int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


def node_runs() -> int:
    return _int(NODE_RUNS, 1)


def gpu_share() -> int:
    return _int(GPU_SHARE, 1)


def seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def usable_cores() -> int:
    """The cores this process may run on (a SLURM job's or container's cpuset, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def node_share(world_size: int = 1) -> int:
    """How many loaders share this node's cores and memory: the runs a sweep packs on it (``FASTFT_NODE_RUNS``) ×
    this run's ranks on the node (``LOCAL_WORLD_SIZE``, set by torchrun / accelerate launch; else all ranks)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return node_runs() * max(1, local)
