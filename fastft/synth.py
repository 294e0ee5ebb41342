"""Kept for one release: this module moved to the module :mod:`fastft.data.synth`. Its names read through from there, and
assigning one here (``fastft.synth.X = v``, ``monkeypatch.setattr``) sets it there (see :mod:`fastft.util.shim`)."""
from .data import synth as _home
from .util.shim import moved

moved(__name__, _home)
