"""Kept for one release: this module moved to the module :mod:`fastft.data.spool`. Its names read through from there, and
assigning one here (``fastft.spool.X = v``, ``monkeypatch.setattr``) sets it there (see :mod:`fastft.util.shim`)."""
from .data import spool as _home
from .util.shim import moved

moved(__name__, _home)
