"""Kept for one release: this module moved to :mod:`fastft.data.store` (the format, reading, verification) and
:mod:`fastft.data.views` (views). Its names read through from there, and assigning one here (``monkeypatch.setattr``)
sets it where it is read (see :mod:`fastft.util.shim`)."""
from .data import store as _store, views as _views
from .util.shim import moved

moved(__name__, _store, _views)
