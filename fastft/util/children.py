"""Worker processes that end with the process that started them.

A pool's workers (``fastft shard``'s encoders, the sweep's view resolvers, the demo's image writers) wait for work on
a pipe whose write end every worker also holds, so when their parent is killed (SIGKILL, the out-of-memory killer,
``timeout``) nothing tells them: they wait forever — and a forked shard worker also holds the store's lock, so every
re-run is refused as "being written by another process". :func:`die_with_parent` (a pool's ``initializer``) has the
kernel kill the worker when its parent dies (Linux's ``PR_SET_PDEATHSIG``; elsewhere a thread that watches the
parent's pid), and ends a worker whose parent is already gone.

A sweep's runs are not its children in that sense (a run forked by the preloaded launcher is the fork server's, which
lives while any run does): :func:`supervisor` names the sweep in each run's environment and :func:`stop_when_gone`,
in the run, sends the run its own SIGTERM when the sweep dies — the run checkpoints and stops, as when preempted,
instead of training on unwatched, its claim no longer refreshed, until another sweep takes the run over beside it.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

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


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_ticks(pid: int | str = "self") -> int | None:
    """A process's start time in clock ticks after boot (Linux: /proc/<pid>/stat field 22); None where unreadable."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _started(pid: int) -> str | None:
    """A process's identity while it lives (its start time: with its pid, unique); None once it is gone. Where
    /proc cannot be read, "alive" while the pid exists."""
    if (ticks := start_ticks(pid)) is not None:
        return str(ticks)
    return "alive" if not Path("/proc/self/stat").exists() and alive(pid) else None


def supervisor() -> str:
    """This process as a run's supervisor: the value of ``FASTFT_SUPERVISOR`` it gives the runs it starts."""
    return f"{os.getpid()} {_started(os.getpid())}"


def stop_when_gone(value: str | None, say=print, every: float = 1.0) -> None:
    """In a run started by a sweep (``value``: its ``FASTFT_SUPERVISOR``): a daemon thread that sends this process
    SIGTERM once the sweep is gone (its pid ended, or now names another process)."""
    try:
        pid, started = value.split(" ", 1)
        pid = int(pid)
    except (AttributeError, ValueError):
        return

    def watch():
        while _started(pid) == started:
            time.sleep(every)
        say(f"the sweep that started this run (pid {pid}) is gone: checkpointing and stopping (a sweep re-run resumes it)")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="fastft-supervisor-watch").start()
