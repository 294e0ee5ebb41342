"""What a run tells the outside while it trains: ``train.log`` in its directory (what the terminal showed, warnings
included) and the experiment trackers researchers use — TensorBoard and W&B, through Accelerate's tracker classes.

Trackers write into the run directory (TensorBoard: ``<run>/tensorboard/``; W&B: ``<run>/wandb/``), so a run's
record travels with it. Scalars are namespaced: ``train/loss`` (per epoch) and ``train/loss_step`` (every
``log_every`` steps), ``train/lr``, ``train/img_per_s``, ``val/top1``, ``val/top5``, ``val/loss``; the x axis is the
global optimiser step. The run's config is logged as hyper-parameters. W&B runs of one study share a project (the
sweep's ``--out`` name) and are grouped by plan and tagged with template and seed. A resumed run drops the events
its killed attempt logged after the checkpoint (TensorBoard's ``purge_step``), so curves have no doubled steps.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from ..config import to_dict
from ..errors import FastFTError


class RunLog:
    """``say(msg)``: print (main rank) and append to ``<run>/train.log``; lines said before the run directory exists
    are kept and written when it is opened. Python warnings go to the log too while the run trains."""

    def __init__(self, acc):
        self.acc, self.path, self.pending, self._old = acc, None, [], None

    def open(self, run_dir: Path) -> None:
        if not self.acc.is_main_process:
            return
        self.path = Path(run_dir) / "train.log"
        self._write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} fastft {' '.join(sys.argv[1:])}".rstrip())
        for line in self.pending:
            self._write(line)
        self.pending = []
        self._old = warnings.showwarning
        warnings.showwarning = self._warning

    def say(self, msg: str) -> None:
        self.acc.print(msg)
        self.note(msg)

    def note(self, msg: str) -> None:
        """Into the log only (e.g. each epoch's summary, which the terminal shows in the progress bar)."""
        if not self.acc.is_main_process:
            return
        if self.path is None:
            self.pending.append(msg)
        else:
            self._write(msg)

    def close(self) -> None:
        if self._old is not None:
            warnings.showwarning, self._old = self._old, None

    def _write(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def _warning(self, message, category, filename, lineno, file=None, line=None):
        self._old(message, category, filename, lineno, file, line)
        self._write(f"warning: {category.__name__}: {message} ({filename}:{lineno})")


class Trackers:
    """The run's TensorBoard / W&B trackers (main rank only); a no-op without ``trackers``."""

    def __init__(self, acc, cfg, run_dir: Path, resume_step: int):
        """``resume_step``: the global steps already trained (0 on a fresh start)."""
        self.on = bool(cfg.trackers) and acc.is_main_process
        self.every, self.items = cfg.log_every, []
        if not self.on:
            return
        run_dir = Path(run_dir)
        project = cfg.tracker_project or Path(cfg.out).resolve().name
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in to_dict(cfg).items()}
        for name in cfg.trackers:
            self.items.append(_start(name, run_dir, project, cfg, resume_step))
        for t in self.items:
            t.store_init_configuration(hparams)

    def step(self, gstep: int, loss) -> None:
        """Every ``log_every`` global steps: the step's training loss (one host synchronisation)."""
        if self.on and self.every and gstep % self.every == 0:
            self._log({"train/loss_step": float(loss)}, gstep)

    def epoch(self, rec: dict, gstep: int) -> None:
        names = {"train_loss": "train/loss", "lr": "train/lr", "img_per_s": "train/img_per_s", "epoch": "train/epoch",
                 "top1": "val/top1", "top5": "val/top5", "test_loss": "val/loss"}
        if self.on:
            self._log({names[k]: v for k, v in rec.items() if k in names}, gstep)

    def finish(self) -> None:
        for t in self.items:
            t.finish()
        self.items = []

    def _log(self, values: dict, step: int) -> None:
        for t in self.items:
            t.log(values, step=step)


def _start(name: str, run_dir: Path, project: str, cfg, resume_step: int):
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    try:
        if name == "tensorboard":
            # a killed attempt's events after the checkpoint (steps > resume_step; all of them on a fresh start) are
            # dropped: those steps are trained again
            t = TensorBoardTracker("tensorboard", run_dir, purge_step=resume_step + 1)
        else:
            t = WandBTracker(project, dir=str(run_dir), name=run_dir.name, id=run_dir.name, resume="allow",
                             group=cfg.tracker_group, tags=list(cfg.tracker_tags) or None)
        if hasattr(t, "start"):  # Accelerate >= 1.0 starts trackers explicitly
            t.start()
    except ImportError as e:
        extra = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
        raise FastFTError(f"trackers: {name} needs the {extra} package ({e}); pip install 'fastft[tracking]'") from None
    return t
