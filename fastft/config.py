"""Typed configs from YAML files and ``key=value`` overrides, strictly: unknown keys and wrong types are errors.

Every command that takes a config has one frozen dataclass; this module fills it. YAML values and CLI overrides go
through the same checks, so a typo fails before any work starts, naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml

from .errors import FastFTError


def _check(name: str, value, tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errs = []
        for alt in typing.get_args(tp):
            try:
                return _check(name, value, alt)
            except FastFTError as e:
                errs.append(str(e))
        raise FastFTError(f"{name}: {value!r} is not a valid {' or '.join(_tname(a) for a in typing.get_args(tp))}")
    if tp is type(None):
        if value is None:
            return None
        raise FastFTError(f"{name}: expected null")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            example = f"[{value}]" if isinstance(value, str) else "[a, b]"
            raise FastFTError(f"{name}: expected a list, got {value!r} (on the command line: {name.split(': ')[-1]}={example})")
        (inner, *_) = typing.get_args(tp) or (typing.Any,)
        return tuple(_check(f"{name}[]", v, inner) for v in value)
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise FastFTError(f"{name}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FastFTError(f"{name}: expected an integer, got {value!r}")
    if tp in (str, float) and not isinstance(value, tp):
        raise FastFTError(f"{name}: expected {_tname(tp)}, got {value!r}")
    return value


def _tname(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def parse_override(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise FastFTError(f"override {s!r} must look like key=value")
    k, v = s.split("=", 1)
    return k.strip(), yaml.safe_load(v) if v != "" else ""


def build(cls, data: dict, where: str = "config"):
    """Instantiate dataclass ``cls`` from ``data`` with strict key and type checks."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(fields), n=1)
        raise FastFTError(f"{where}: unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else "") +
                          f"; valid keys: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise FastFTError(f"{where}: missing required key(s) {missing}")
    kw = {k: _check(f"{where}: {k}", v, hints[k]) for k, v in data.items()}
    return cls(**kw)


def load(cls, path: str | Path | None = None, overrides: list[str] = ()):
    data = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FastFTError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise FastFTError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise FastFTError(f"config file {p} must be a mapping of key: value")
        if {"run_id", "identity", "config"} <= set(data):  # a run directory's config.json: its resolved config
            data = dict(data["config"])
    for o in overrides:
        k, v = parse_override(o)
        data[k] = v
    return build(cls, data, str(path) if path else "config")


def to_dict(cfg) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
