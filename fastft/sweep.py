"""Kept for one release: ``fastft sweep`` moved to the package :mod:`fastft.study` (plan, prepare, leases, local,
slurm); this module re-exports its names."""
from .study import *  # noqa: F401,F403
from .study import __all__  # noqa: F401
from .study.leases import alive as _alive, stale as _stale, take_over as _take_over  # noqa: F401 - old private names
