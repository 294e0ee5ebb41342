"""Kept for one release: the command line moved to the package :mod:`fastft.cli` (one module per command group);
this module re-exports the names that lived here."""
from .cli.analyze import cmd_analyze  # noqa: F401
from .cli.bench import cmd_bench  # noqa: F401
from .cli.study import STATE_ORDER, cmd_demo, cmd_report, cmd_sweep  # noqa: F401
from .cli.train import cmd_train, loader_factory  # noqa: F401
