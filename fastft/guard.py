"""The learning guard: a run whose loss turns non-finite ends at once as *failed* (never finished), and a run whose
training loss never leaves the uniform-prediction plateau (ln C for C classes) is flagged "did not learn".

A failed run leaves ``failed.json`` (why, at which step and LR) and no ``final.json``; a sweep re-run retries it like
any unfinished run, and ``fastft train`` removes the record when it starts the run again. A flagged run finishes
normally, with ``learned: false`` and the reason in ``final.json``'s ``flags``; the report shows it as such and keeps
it out of means unless asked (``fastft report --include-flagged``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import FastFTError
from .files import write_json

FAILED = "failed.json"


class Diverged(FastFTError):
    """The training loss became NaN or infinite: the run is marked failed."""


class NonFiniteWatch:
    """Finds the first step whose loss is not finite without a host synchronisation per step: each step folds its loss
    into a device scalar (the first bad step's index, or -1); the host reads it only in :meth:`check`."""

    def __init__(self, device):
        import torch

        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss, step: int) -> None:
        import torch

        bad = ~torch.isfinite(loss.detach()) & (self.first < 0)
        self.first = torch.where(bad, step, self.first)

    def check(self, acc=None) -> int | None:
        """The first bad global step seen by any rank (a collective when ``acc`` has several processes), or None."""
        first = self.first
        if acc is not None and acc.num_processes > 1:
            seen = acc.gather(first.view(1))
            seen = seen[seen >= 0]
            return int(seen.min()) if len(seen) else None
        v = int(first)
        return v if v >= 0 else None


def plateau_flag(metrics: list[dict], num_classes: int, plateau_epochs: int, tol: float) -> str | None:
    """"did not learn: …" if the training loss at epoch ``plateau_epochs`` (or the last recorded epoch, if the run is
    shorter) is not below ``(1 - tol) * ln(num_classes)``: on the plateau, or above it; None if the run left it or
    the check is off (``plateau_epochs`` or ``tol`` 0, fewer than 2 classes)."""
    if not metrics or plateau_epochs <= 0 or tol <= 0 or num_classes < 2:
        return None
    at = [m for m in metrics if m["epoch"] <= plateau_epochs][-1:] or metrics[:1]
    m = at[0]
    chance = math.log(num_classes)
    loss = m["train_loss"]
    if loss is None or not math.isfinite(loss) or loss >= (1 - tol) * chance:
        where = ("above the uniform-prediction loss ln C: worse than chance" if loss is not None and loss > (1 + tol) * chance
                 else "the uniform-prediction plateau")
        if loss is None or not math.isfinite(loss):
            return f"did not learn: train loss {loss} after {m['epoch']} epoch{'s' * (m['epoch'] != 1)}"
        return (f"did not learn: train loss {loss:.4f} = {loss / chance:.3f} x ln({num_classes}) after {m['epoch']} "
                f"epoch{'s' * (m['epoch'] != 1)} ({where}; threshold {1 - tol:.2f} x ln C)")
    return None


def finite(obj):
    """``obj`` with every non-finite float replaced by None, so that it is valid JSON (``json`` writes a bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def mark_failed(run_dir: Path, record: dict) -> None:
    """Write ``failed.json`` atomically (a later sweep or report reads it)."""
    write_json(Path(run_dir) / FAILED, finite({"status": "failed", **record}))


def failure(run_dir: Path) -> dict | None:
    """The run's failure record, if its last attempt failed (an unreadable record counts as a failure too)."""
    p = Path(run_dir) / FAILED
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {"status": "failed", "reason": f"{p} is unreadable"}


def clear_failure(run_dir: Path) -> None:
    (Path(run_dir) / FAILED).unlink(missing_ok=True)
