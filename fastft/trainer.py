"""Kept for one release: the trainer moved to the package :mod:`fastft.train` (config, optim, step, checkpoint,
preempt, tracking, loop); this module re-exports its names."""
from .train import *  # noqa: F401,F403
from .train import __all__  # noqa: F401
from .train.checkpoint import get_rng as _get_rng, set_rng as _set_rng  # noqa: F401 - old private names
from .train.config import FREEZABLE  # noqa: F401
from .train.loop import train  # noqa: F401
from .train.optim import param_groups, set_lr, sgd  # noqa: F401
from .train.preempt import Preempt as _Preempt, Preempted  # noqa: F401
from .train.step import Step, cuda_autocast, evaluate  # noqa: F401
