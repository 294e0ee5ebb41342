"""Resource policy: how many cores a loader decodes with and how much device and host memory its decoded-image cache
may take, on a node that sweeps pack with several runs (``FASTFT_NODE_RUNS``, ``FASTFT_GPU_SHARE``) and that a
multi-GPU run shares among its ranks (``LOCAL_WORLD_SIZE``); see :mod:`fastft.util.env` for that contract."""
from __future__ import annotations

from pathlib import Path

import torch

from ..util.env import gpu_share, node_share, usable_cores


def loader_threads(num_threads: int, world_size: int = 1) -> int:
    """DALI threads / DataLoader workers: ``num_threads`` if set, else the cores this process may use (a SLURM job's
    cpuset) split among the loaders on the node."""
    return num_threads or max(1, usable_cores() // node_share(world_size))


def device_cache_budget(cache_gb: float, dev: torch.device, split_bytes: float) -> float:
    """Bytes of decoded images the cache may keep on ``dev``: ``cache_gb`` if set; else on a GPU 80 % of its free
    memory, or of its share when a sweep packs k runs on it (``FASTFT_GPU_SHARE=k``); on the CPU the whole split."""
    if cache_gb:
        return cache_gb * 1e9
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        return min(0.8 * free, 0.8 * total / gpu_share())
    return split_bytes


def host_cache_bytes(host_cache_gb: float | str, world_size: int = 1) -> float:
    """Bytes of the cache's pinned host tier: ``host_cache_gb`` GB, or with ``"auto"`` :func:`host_cache_budget`."""
    return host_cache_budget(world_size) if host_cache_gb == "auto" else float(host_cache_gb) * 1e9


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
