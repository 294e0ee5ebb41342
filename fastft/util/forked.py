"""What a forked run's child does first (:mod:`fastft.study.launch`): become ``python -m fastft <argv>`` with the
run's environment, working directory, log file and default signal handlers — before importing any of fastft's
modules, some of which read ``FASTFT_*`` variables when imported. Imports nothing of fastft at the top for that reason."""
from __future__ import annotations

import os
import signal
import sys
import threading
from multiprocessing import context as _mp_context, forkserver as _forkserver, popen_forkserver as _popen_forkserver
from multiprocessing.connection import wait as _wait
from pathlib import Path

# multiprocessing's forkserver handle reads a child's exit code from a pipe on the first poll that finds the child
# gone, and is not thread-safe: two threads polling at once both see the pipe ready, one reads the code and the other
# reads end-of-file and writes 255 over it (a run's exit code lost). Every poll reaches it — fastft's, and
# multiprocessing's own (each Process.start() and active_children() polls every child, from whatever thread) — so
# the lock is in the handle itself. ``tests/test_launch.py`` polls one ended run from many threads, those included.
_READ_LOCK = threading.Lock()


class _LockedPopen(_popen_forkserver.Popen):
    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if not _wait([self.sentinel], 0 if flag == os.WNOHANG else None):  # reads nothing: no lock needed
                return None
            with _READ_LOCK:
                if self.returncode is None:  # another thread may have read it meanwhile
                    try:
                        self.returncode = _forkserver.read_signed(self.sentinel)
                    except (OSError, EOFError):  # the fork server itself was killed
                        self.returncode = 255
        return self.returncode


class ForkedRun(_mp_context.ForkServerProcess):
    """A process forked from the fork server whose exit code every thread reads safely (:class:`_LockedPopen`)."""

    @staticmethod
    def _Popen(process_obj):
        return _LockedPopen(process_obj)


def run_cli(argv: list[str], env: dict, cwd: str, log: str, err: str | None = None) -> None:
    """In the forked child: become what ``python -m fastft <argv>`` with ``env`` in ``cwd``, writing to ``log`` (and
    its stderr to ``err`` if given), would be."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    sys.stdout.flush(), sys.stderr.flush()
    for target, fds in ((log, (1,) if err else (1, 2)), (err, (2,))):
        if target:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for n in fds:
                os.dup2(fd, n)
            os.close(fd)
    if "torch" in sys.modules:  # OpenMP read OMP_NUM_THREADS when the server loaded it: the run's own value applies
        import torch

        n = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(n) if n.isdigit() and int(n) > 0 else len(os.sched_getaffinity(0)))
    sys.argv = [str(Path(sys.executable)), "-m", "fastft", *argv]
    from ..cli import main  # fastft's modules: imported after the environment is set

    try:
        rc = main(argv)
    finally:
        sys.stdout.flush(), sys.stderr.flush()
    sys.exit(rc or 0)
