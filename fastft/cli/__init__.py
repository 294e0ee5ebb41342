"""The ``fastft`` command line: one subcommand per step of the flow, each a thin layer over a library function; one
module per command group (:mod:`.data`, :mod:`.train`, :mod:`.study`, :mod:`.analyze`, :mod:`.bench`), each with
its ``add_commands``.

User mistakes (:class:`FastFTError`) print one line ``fastft: error: …`` and exit 2; nothing imports this package
but the entry point.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import FastFTError

GROUPS = ("data", "train", "study", "analyze", "bench")  # in the order of the flow


class _Help(argparse.HelpFormatter):
    """Help that names each option's default (unless it is empty or the help already says it); a description or epilog
    with line breaks (e.g. train's table of config keys) is printed as written, others are wrapped."""

    def _fill_text(self, text, width, indent):
        return "".join(indent + line for line in text.splitlines(keepends=True)) if "\n" in text else super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if action.option_strings and not (d is None or d is False or d == [] or d == argparse.SUPPRESS) and "default" not in h:
            h += f" (default: {action.default})"
        return h


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*a, **kw)



def build_parser() -> argparse.ArgumentParser:
    import importlib

    from .. import __version__

    p = _Parser(prog="fastft", description="Transfer-learning studies on ImageNet subsets chosen through WordNet, "
                                "at the speed of the GPU: shard → subsets → train → sweep → report.")
    p.add_argument("--version", action="version", version=f"fastft {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    for g in GROUPS:
        importlib.import_module(f".{g}", __name__).add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except FastFTError as e:
        print(f"fastft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastft: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly (before OSError: it is one)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"fastft: error: no space left on the device{where}; free space and re-run the same command (it resumes: "
              "finished shards and complete checkpoints are kept)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
