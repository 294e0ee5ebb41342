"""How a local sweep starts one run's process: ``fresh`` (a new interpreter per run, ``python -m fastft train …``) or
``preloaded`` (the default on Linux): a fork server that has imported torch (with ``torch._dynamo``, which every
torch optimiser imports on first use), torchvision, accelerate and DALI once, forks one child per run.

Why: a small run's fixed costs are mostly imports. On the 2-core CPU machine they were ~2.5 s of imports before
``train()`` and ~3 s more inside it (``torch.optim.SGD`` imports dynamo), against ~5 s of training steps for a demo
fine-tune (``final.json`` ``costs``; ``benchmarks/results/sweep-launch-*.json``). A forked child starts with them
imported.

A child is still one process per run, exactly as isolated as a fresh one: its own environment (the slot's, set
before anything reads it), working directory, log file as stdout and stderr, signals (SIGTERM checkpoints and stops,
as the trainer's handler does), exit code; a crash ends the child, not the server. Nothing in the server touches CUDA
or starts threads, so a fork is safe (each child initialises CUDA for itself). fastft's own modules are imported by
each child, after its environment is set (some read ``FASTFT_*`` variables when imported).
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import types

from ..util import forked

LAUNCHERS = ("preloaded", "fresh")
PRELOAD = ["torch", "torch._dynamo", "torch.optim", "torchvision", "accelerate", "numpy", "PIL.Image", "nvidia.dali.fn"]


def default(gpus: bool = False) -> str:
    """``preloaded`` for CPU slots where the OS has a fork server; ``fresh`` for GPU slots until a GPU lease shows that
    a child forked from the server (which imported DALI and torch's dynamo, and must not have initialised the CUDA
    driver) trains on its GPU: ``tests/test_gpu.py::test_a_preloaded_run_trains_on_the_gpu`` is that check, and
    ``--launch preloaded`` asks for it explicitly meanwhile."""
    return "preloaded" if not gpus and "forkserver" in mp.get_all_start_methods() else "fresh"


def check(name: str) -> str:
    from ..errors import FastFTError

    if name not in LAUNCHERS:
        raise FastFTError(f"--launch {name!r}: choose one of {', '.join(LAUNCHERS)}")
    if name == "preloaded" and "forkserver" not in mp.get_all_start_methods():
        raise FastFTError("--launch preloaded needs a fork server (Linux, macOS); use --launch fresh")
    return name


def start(launcher: str, argv: list[str], env: dict, logf, errf=None) -> "subprocess.Popen | Child":
    """Start ``fastft <argv>`` with ``env`` (the whole environment) writing to ``logf`` (an open file; stderr too,
    unless ``errf`` is given); the handle answers ``poll``, ``send_signal``, ``wait``, ``kill`` and ``pid`` as a
    ``Popen`` does."""
    if launcher == "fresh":
        return subprocess.Popen([sys.executable, "-m", "fastft", *argv], stdout=logf,
                                stderr=errf or subprocess.STDOUT, env=env)
    _context()  # the fork server's preloads
    p = forked.ForkedRun(target=forked.run_cli, args=(argv, env, os.getcwd(), logf.name, errf and errf.name), daemon=False)
    with _MAIN_LOCK, _no_main_module():
        p.start()
    return Child(p)


@contextlib.contextmanager
def _no_main_module():
    """multiprocessing makes each child re-import the parent's ``__main__`` (a user's script calling
    :func:`~fastft.study.run_local` would run again at its top level, sweep included, wherever it lacks an
    ``if __name__ == "__main__"`` guard). A run needs nothing from it: while the child is created, ``__main__`` is an
    empty module, so there is nothing to re-import."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


_CTX = None
_MAIN_LOCK = threading.Lock()  # one start at a time swaps __main__ (two at once could leave the empty one in place)


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload([m for m in PRELOAD if _importable(m)])
    return _CTX


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run(launcher: str, argv: list[str], env: dict, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``fastft <argv>`` to its end, like ``subprocess.run(..., capture_output=True, text=True, timeout=...)``."""
    import tempfile

    with tempfile.NamedTemporaryFile("w+") as o, tempfile.NamedTemporaryFile("w+") as e:
        p = start(launcher, argv, env, o, e)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
        o.seek(0), e.seek(0)
        return subprocess.CompletedProcess(argv, rc, o.read(), e.read())


class Child:
    """A forked run as a ``Popen``-like handle."""

    def __init__(self, process):
        self.process, self.pid = process, process.pid

    def poll(self) -> int | None:
        return self.process.exitcode  # None while it runs (thread-safe: forked.ForkedRun)

    def wait(self, timeout: float | None = None) -> int:
        from multiprocessing.connection import wait

        wait([self.process.sentinel], timeout)  # ready once the child has ended; reads nothing, so needs no lock
        rc = self.poll()
        if rc is None:
            raise subprocess.TimeoutExpired(f"fastft run {self.pid}", timeout)
        return rc

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
