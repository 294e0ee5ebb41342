"""Training one run, in the order of its parts: the torch-free recipe (:mod:`.config`: keys, validation, identity,
schedule), the optimiser (:mod:`.optim`), the hot step and evaluation (:mod:`.step`), checkpoints (:mod:`.checkpoint`),
preemption (:mod:`.preempt`), the run's log and trackers (:mod:`.tracking`) and the loop that runs them as phases
(:mod:`.loop`). ``from fastft.train import TrainConfig`` does not import torch; the other names load it on first use."""
from __future__ import annotations

import importlib

from .config import (IDENTITY_KEYS, MIN_CROP, MODES, SEED_MAX, TrainConfig, key_help, lr_at, replay_config,  # noqa: F401
                     resolve_device, run_dir_for, run_identity, view_path_for)

_LAZY = {"train": "loop", "CHECK_EVERY": "loop", "param_groups": "optim", "set_lr": "optim", "sgd": "optim",
         "Step": "step", "cuda_autocast": "step", "evaluate": "step", "in_sync": "step", "Preempt": "preempt",
         "Preempted": "preempt", "should_stop": "preempt", "Checkpoints": "checkpoint", "get_rng": "checkpoint",
         "set_rng": "checkpoint", "RunLog": "tracking", "Trackers": "tracking"}

__all__ = ["IDENTITY_KEYS", "MIN_CROP", "MODES", "SEED_MAX", "TrainConfig", "key_help", "lr_at", "replay_config",
           "resolve_device", "run_dir_for", "run_identity", "view_path_for", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
