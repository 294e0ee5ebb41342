"""Preemption: SIGTERM / SIGUSR1 / Ctrl-C end a run at a step boundary with a checkpoint and a non-zero exit (a
scheduler requeues; re-running resumes), all ranks agreeing on the step."""
from __future__ import annotations

import signal
import sys
import time

import torch


class Preempt:
    """SIGTERM / SIGUSR1 / Ctrl-C → finish the current step, checkpoint, exit non-zero (a scheduler requeues; re-running
    resumes). A second Ctrl-C stops at once, losing the steps since the last checkpoint."""

    def __init__(self):
        self.flag = False
        self.signum = signal.SIGTERM
        self.t_int = 0.0
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:  # started in the background (nohup, a batch job)
                continue
            try:
                self._old[s] = signal.signal(s, self._set)
            except ValueError:  # not the main thread
                pass
        return self

    def _set(self, signum, _frame):
        if signum == signal.SIGINT:
            # a launcher (torchrun) passes the terminal's Ctrl-C on: a second SIGINT within 2 s is the same keypress
            if self.flag and time.monotonic() - self.t_int > 2.0:
                raise KeyboardInterrupt
            if not self.flag:
                self.t_int = time.monotonic()
                print("\nfastft: stopping after this step to checkpoint (Ctrl-C again stops at once)", file=sys.stderr, flush=True)
        if not self.flag:
            self.signum = signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM
        self.flag = True

    def __exit__(self, *a):
        for s, h in self._old.items():
            signal.signal(s, h)


class Preempted(SystemExit):
    """Raised after the preemption checkpoint: exit code 143 (128 + SIGTERM), or 130 after Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))


def should_stop(acc, pre: Preempt, step: int, last: bool) -> bool:
    """Whether to stop after this step. Ranks agree (a collective) every 10 global steps and at each epoch's last
    step, which every rank reaches together: epochs shorter than 10 steps (small §4.4 sets) still stop."""
    if acc.num_processes == 1:
        return pre.flag
    if step % 10 and not last:
        return False
    flag = torch.tensor([1.0 if pre.flag else 0.0], device=acc.device)
    return bool(acc.reduce(flag, "sum").item() > 0)
