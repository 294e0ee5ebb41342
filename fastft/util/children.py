"""Worker processes that end with the process that started them.

A pool's workers (``fastft shard``'s encoders, the sweep's view resolvers, the demo's image writers) wait for work on
a pipe whose write end every worker also holds, so when their parent is killed (SIGKILL, the out-of-memory killer,
``timeout``) nothing tells them: they wait forever — and a forked shard worker also holds the store's lock, so every
re-run is refused as "being written by another process". :func:`die_with_parent` (a pool's ``initializer``) has the
kernel kill the worker when its parent dies (Linux's ``PR_SET_PDEATHSIG``; elsewhere a thread that watches the
parent's pid), and ends a worker whose parent is already gone.
"""
from __future__ import annotations

import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, ignore_sigint: bool = False) -> None:
    """In a new worker: end when process ``parent`` does. ``ignore_sigint``: leave Ctrl-C to the parent, which stops
    the pool (no traceback from each worker)."""
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _pdeathsig():
        threading.Thread(target=_watch, args=(parent,), daemon=True, name="fastft-parent-watch").start()
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _pdeathsig() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
