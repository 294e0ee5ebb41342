"""Kept for one release: this module moved to the package :mod:`fastft.data.shard`. Its names read through from there, and
assigning one here (``fastft.shard.X = v``, ``monkeypatch.setattr``) sets it there (see :mod:`fastft.util.shim`)."""
from .data import shard as _home
from .util.shim import moved

moved(__name__, _home)
