"""Every progress bar fastft shows (shard, verify, resolve, sweep, train, features): a tqdm bar on a terminal, and
where the stream is a file or a pipe (a SLURM job's output, ``nohup``, ``> log``) plain lines instead, one per
:data:`LOG_EVERY_S` and one at the end: tqdm's own redraws are carriage returns that turn a log into one
megabyte-long line that ``less`` and ``grep`` cannot read.
"""
from __future__ import annotations

import sys

from . import env

LOG_EVERY_S = env.seconds(env.PROGRESS_LOG, 30)  # a log's line per bar at most this often (and at each state change)


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + the bar + padding) into one line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        for part in s.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


def _terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(iterable=None, *, enabled: bool | None = True, **kw):
    """``tqdm(iterable, **kw)`` on a terminal; lines in a log. ``enabled``: False hides it; None shows it on a terminal
    only (a short-lived bar whose lines would only clutter a log)."""
    from tqdm import tqdm

    stream = kw.pop("file", None) or sys.stderr
    terminal = _terminal(stream)
    if enabled is False or enabled is None and not terminal:
        return tqdm(iterable, disable=True, **kw)
    if not terminal:
        kw.pop("dynamic_ncols", None)
        every = max(kw.get("mininterval", 0), LOG_EVERY_S)  # tqdm's monitor forces a redraw after maxinterval
        kw.update(file=_Lines(stream), mininterval=every, maxinterval=max(every, kw.get("maxinterval", 10)), ncols=100)
    else:
        kw["file"] = stream
    return tqdm(iterable, **kw)
