"""Files written whole or not at all: the one atomic-write helper every module uses.

A file that a later step reads (a store's manifest and shard records, a run's ``config.json``, ``final.json``,
``model.pt``, checkpoint files and markers, ``sweep.json``, analysis results) is written to a temp file in the same
directory, fsynced, renamed over the target and the directory fsynced: a crash or a full disk leaves the old file or
none, never half of one, and the rename survives a power cut. The temp name carries the host and PID, so two processes
writing one path (sweeps sharing a runs directory) never write into each other's temp file; it ends in ``.tmp``, which
is what the store's clean-up removes after a kill.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """``with atomic_file(p) as f: f.write(...)`` — a binary file that appears at ``p`` only when the block ends
    without an exception (for writers that stream, e.g. ``torch.save``)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_write(path: str | Path, data: bytes | str) -> None:
    """Write ``path`` whole or not at all (``str`` as UTF-8)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str | Path, obj) -> None:
    """``obj`` as indented, strict JSON (a NaN is an error here, not a bare ``NaN`` a later reader chokes on; see
    :func:`fastft.guard.finite`), atomically."""
    fsync_write(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")
