"""Kept for one release: the input pipelines moved to the package :mod:`fastft.loading` (order, samples, dali,
augment, fallback, cache, resources, loader); this module re-exports their names.

The module-level DALI settings and ``usable_cores`` live in the modules that read them; assigning them here (as older
benchmark scripts and tests do: ``pipelines.FEED_NO_COPY = False``) sets them there, so the old spelling still takes
effect."""
import sys
import types

from .loading import *  # noqa: F401,F403
from .loading import __all__  # noqa: F401
from .loading import dali as _dali_module, resources as _resources_module
from .loading.augment import _crop, _crop_normalize, _normalize, _pil_augment, _pil_decode, _torch_augment  # noqa: F401
from .loading.cache import _CacheBackend  # noqa: F401
from .loading.dali import _dali_decode, _dali_graph, _DaliBackend, _DaliPipe, _require_dali  # noqa: F401
from .loading.fallback import _collate, _DecodeDataset, _TorchBackend  # noqa: F401
from .util.env import node_share  # noqa: F401

# old names whose value is read where it now lives: reads and writes here go there (as properties of the module's
# class, so that monkeypatch.setattr restores them there too)
_LIVE = {"EXEC_DYNAMIC": _dali_module, "FEED_NO_COPY": _dali_module, "MIXED_THREADS": _dali_module,
         "usable_cores": _resources_module}


def _live(name: str, home: types.ModuleType) -> property:
    return property(lambda self: getattr(home, name), lambda self, value: setattr(home, name, value))


sys.modules[__name__].__class__ = type("_Shim", (types.ModuleType,), {k: _live(k, m) for k, m in _LIVE.items()})
