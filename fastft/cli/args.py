"""Command-line options generated from a config dataclass, so each default exists once — in the dataclass: the
option's type, default and (for a ``tuple``) arity come from the field; only the help text is the CLI's."""
from __future__ import annotations

import dataclasses
import typing


def add_options(parser, cls, helps: dict[str, str], choices: dict[str, tuple] | None = None) -> None:
    """``--kebab-name`` for each field of ``cls`` named in ``helps`` (in that order)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, help in helps.items():
        f, tp = fields[name], hints[name]
        flag = "--" + name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action="store_true", default=f.default, help=help)
        elif typing.get_origin(tp) is tuple:
            parser.add_argument(flag, nargs="*", default=list(f.default), help=help)
        else:
            parser.add_argument(flag, type=tp, default=f.default, choices=(choices or {}).get(name), help=help)


def config_from(cls, args, names, **overrides):
    """``cls`` from the parsed options ``names`` (tuples as tuples), with ``overrides`` on top."""
    hints = typing.get_type_hints(cls)
    kw = {n: tuple(getattr(args, n)) if typing.get_origin(hints[n]) is tuple else getattr(args, n) for n in names}
    return cls(**{**kw, **overrides})
