"""What a forked run's child does first (:mod:`fastft.study.launch`): become ``python -m fastft <argv>`` with the
run's environment, working directory, log file and default signal handlers — before importing any of fastft's
modules, some of which read ``FASTFT_*`` variables when imported. Imports nothing of fastft at the top for that reason."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


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
