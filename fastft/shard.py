"""Kept for one release: this module moved to the package :mod:`fastft.data.shard` (config, inputs, convert, writer).
Its names read through from there, and assigning one here (``fastft.shard.MAX_PIXELS = …``, ``monkeypatch.setattr``)
sets it where it is read (see :mod:`fastft.util.shim`)."""
from .data import shard as _home
from .data.shard import config as _config, convert as _convert, inputs as _inputs, writer as _writer
from .util.shim import moved

moved(__name__, _home, _config, _inputs, _convert, _writer)
