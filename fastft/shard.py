"""Kept for one release: this module moved to the package :mod:`fastft.data.shard` (config, inputs, convert, writer)
and the dataset sources to :mod:`fastft.data.sources`. Its names read through from there, and assigning one here
(``fastft.shard.MAX_PIXELS = …``, ``monkeypatch.setattr``) sets it where it is read (see :mod:`fastft.util.shim`)."""
from .data import shard as _home, sources as _sources
from .data.shard import config as _config, convert as _convert, inputs as _inputs, writer as _writer
from .data.sources import base as _base, ilsvrc2012_archives as _archives, labels as _labels, tree as _tree
from .util.shim import moved

moved(__name__, _home, _config, _inputs, _convert, _writer, _sources, _base, _tree, _labels, _archives)
