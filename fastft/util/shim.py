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
    """Make the module ``name`` forward to ``homes`` (the first that has a name is the one it is read from).

    Each moved name is a property of the module's class, not an entry of its namespace: a data descriptor is what
    ``monkeypatch.setattr`` reads the old value through and restores by assignment (with a plain entry it would
    delete it on undo)."""
    owners: dict[str, list[types.ModuleType]] = {}
    for home in homes:
        for k in _names(home):
            owners.setdefault(k, []).append(home)
    public = sorted({k for home in homes for k in getattr(home, "__all__", [n for n in _names(home) if not n.startswith("_")])})
    module = sys.modules[name]
    for k in owners:
        module.__dict__.pop(k, None)  # (a name the shim itself imported would hide the property)
    namespace = {k: _forward(k, owners[k]) for k in owners}
    namespace["__dir__"] = lambda self: sorted(set(self.__dict__) | set(owners))
    module.__all__ = public
    module.__class__ = type("_Moved", (types.ModuleType,), namespace)


def _forward(key: str, homes: list[types.ModuleType]) -> property:
    def get(self):
        for home in homes:
            value = getattr(home, key, _MISSING)
            if value is not _MISSING:
                return value
        raise AttributeError(f"module {self.__name__!r} has no attribute {key!r}")

    def put(self, value):
        current = get(self)
        for home in homes:  # every alias of the old binding (a function imported into a sibling module)
            if getattr(home, key, _MISSING) is current:
                setattr(home, key, value)

    def delete(self):
        raise AttributeError(f"{self.__name__}.{key} lives in {homes[0].__name__}: delete it there")
    return property(get, put, delete)
