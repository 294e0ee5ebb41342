"""What a forked run's child does first (:mod:`fastft.study.launch`): become ``python -m fastft <argv>`` with the
run's environment, working directory, log file and default signal handlers — before importing any of fastft's
modules, some of which read ``FASTFT_*`` variables when imported. Imports nothing of fastft at the top for that reason."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def run_cli(argv: list[str], env: dict, cwd: str, log: str) -> None:
    """In the forked child: become what ``python -m fastft <argv>`` with ``env`` in ``cwd``, writing to ``log``, would be."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
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
