"""A run's checkpoints as one component: what a checkpoint holds (model, optimiser, loader position in
``state.pt``; each rank's RNG states and partial-epoch sums in ``rng-<rank>.pt``), writing it atomically across ranks,
and resuming from the newest one whose checksums verify (see :mod:`fastft.runs` for the directory protocol and
:mod:`fastft.weights` for reading without running code)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .. import runs, weights


class Checkpoints:
    """Save and resume one run's checkpoints; every rank calls both (they synchronise)."""

    def __init__(self, acc, run_dir: Path, keep: int, say=None):
        self.acc, self.run_dir, self.keep = acc, Path(run_dir), keep
        self.say = say or acc.print  # the run's log (train.log and the terminal)

    def resume(self, model, opt) -> tuple[int, dict | None, dict | None]:
        """Load the newest checkpoint that verifies into ``model`` and ``opt`` and this rank's RNG; returns (epoch to
        start from, the loader's state, the partial epoch's sums) — (0, None, None) when there is none."""
        acc = self.acc
        ckpt = runs.resume_checkpoint(self.run_dir, say=self.say, set_aside=acc.is_main_process)  # checksums verified
        if ckpt is None:
            return 0, None, None
        st, local = weights.load_checkpoint(ckpt, acc.process_index)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        partial = None
        if local is not None:
            set_rng(local["rng"])
            partial = local.get("partial")
        self.say(f"resuming {self.run_dir.name} from {ckpt.name} (epoch {st['loader']['epoch']}, step {st['loader']['step']})")
        return st["epoch"], st["loader"], partial

    def save(self, name: str, model, opt, loader, partial: dict | None) -> None:
        """Checkpoint ``name``: every rank writes its RNG file into the main rank's temporary directory, the main rank
        the shared state, then commits it (renamed complete, the oldest beyond ``keep`` removed)."""
        acc = self.acc
        tmp = runs.checkpoint_tmp(self.run_dir, name) if acc.is_main_process else self.run_dir / runs.CKPT_DIR / f"{name}.tmp"
        acc.wait_for_everyone()
        runs.save_file({"rng": get_rng(), "partial": partial}, tmp / f"rng-{acc.process_index}.pt")
        if acc.is_main_process:
            runs.save_file({"model": acc.unwrap_model(model).state_dict(), "opt": opt.state_dict(),
                            "epoch": loader.position[0], "loader": loader.state_dict()}, tmp / "state.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            runs.commit_checkpoint(self.run_dir, name, self.keep)
        acc.wait_for_everyone()


def get_rng() -> dict:
    """This process's RNG states as plain data and tensors, which :func:`fastft.weights.load` reads without running
    code (numpy's key vector as a list of ints, not an ndarray)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng(s: dict) -> None:
    """Restore what :func:`get_rng` recorded."""
    random.setstate(s["python"])
    name, keys, pos, has_gauss, gauss = s["numpy"]  # keys: a list (or an ndarray in checkpoints of earlier versions)
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
