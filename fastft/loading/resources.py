"""Resource policy: how much of the node's host memory a loader may pin for the cache's host tier."""
from __future__ import annotations

from pathlib import Path

from ..util.env import node_share


def host_cache_budget(world_size: int = 1) -> float:
    """``host_cache_gb: auto``: half of this machine's memory (or of the job's cgroup limit, under SLURM), split among
    the loaders on the node (:func:`fastft.util.env.node_share`: every rank of a multi-GPU run caches the whole split, since its
    samples change every epoch), and never more than 80 % of what is free now."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line) \
        if Path("/proc/meminfo").exists() else {}
    kb = lambda k: float(info.get(k, "0 kB").split()[0]) * 1024  # noqa: E731
    total, avail = kb("MemTotal"), kb("MemAvailable")
    cg = Path("/sys/fs/cgroup/memory.max")
    if cg.exists() and cg.read_text().strip().isdigit():
        total = min(total, float(cg.read_text().strip()))
    return max(0.0, min(0.5 * total / node_share(world_size), 0.8 * avail))
