"""Old module paths kept for one release: a module whose contents moved is turned into a view of where they live now.

``moved(__name__, home, …)``, called by the old module, makes every name of the new ``home`` modules (functions,
classes, settings; private ones too) readable through the old path, and — what a plain ``from new import *`` would
not give — *writable* through it: ``old.X = v`` (or ``monkeypatch.setattr(old, "X", v)``, and its undo) rebinds ``X``
in every home where the same object is bound, so the code that reads ``X`` there sees it, as it did when it all was
one module. Reads are live too (a setting changed in its home reads back changed).
"""
from __future__ import annotations

import sys
import types

_MISSING = object()


def _names(home: types.ModuleType) -> list[str]:
    """What a home offers: every non-dunder name bound to something other than a module."""
    return [k for k, v in vars(home).items() if not k.startswith("__") and not isinstance(v, types.ModuleType)]


def moved(name: str, *homes: types.ModuleType) -> None:
    """Make the module ``name`` forward to ``homes`` (the first that has a name is the one it is read from)."""
    owners: dict[str, list[types.ModuleType]] = {}
    for home in homes:
        for k in _names(home):
            owners.setdefault(k, []).append(home)
    public = sorted({k for home in homes for k in getattr(home, "__all__", [n for n in _names(home) if not n.startswith("_")])})

    class _Moved(types.ModuleType):
        def __getattr__(self, key):  # only for names not in the old module's own namespace: all the moved ones
            for home in owners.get(key, ()):
                value = getattr(home, key, _MISSING)
                if value is not _MISSING:
                    return value
            raise AttributeError(f"module {self.__name__!r} has no attribute {key!r}")

        def __setattr__(self, key, value):
            if key not in owners:
                return super().__setattr__(key, value)
            current = getattr(self, key)
            for home in owners[key]:  # every alias of the old binding (a function imported into a sibling module)
                if getattr(home, key, _MISSING) is current:
                    setattr(home, key, value)

        def __delattr__(self, key):
            if key not in owners:
                return super().__delattr__(key)
            raise AttributeError(f"{self.__name__}.{key} lives in {owners[key][0].__name__}: delete it there")

        def __dir__(self):
            return sorted(set(super().__dir__()) | set(owners))

    module = sys.modules[name]
    module.__all__ = public
    module.__class__ = _Moved
