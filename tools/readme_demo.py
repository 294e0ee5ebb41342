"""Regenerate the README's excerpt of ``fastft demo``: run the demo as a new user does (``fastft demo`` in an empty
directory, default settings), time it, and write its excerpt (``fastft.demo.excerpt``) with the wall time and this
machine's CPUs between the README's ``demo-output`` markers. ``tests/test_sweep_report.py::test_demo_end_to_end``
runs the same demo and fails when the README's excerpt is not what it prints, so the README cannot drift.

Usage: ``python tools/readme_demo.py [--from-output FILE]`` (FILE: a saved ``fastft demo`` output, to re-use one run).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastft.demo import README_BEGIN as BEGIN, README_END as END, excerpt, readme_block

ROOT = Path(__file__).resolve().parents[1]


def run_demo() -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "fastft", "demo"], cwd=d, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"fastft demo failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout, time.time() - t0


def cpu_name() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{len(os.sched_getaffinity(0))} cores of {model}, no GPU"


def block(output: str, wall_s: float) -> str:
    return "\n".join([BEGIN, f"Output ({wall_s:.0f} s in all on {cpu_name()}; excerpt):", "", "```", *excerpt(output),
                      "```", END])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-output", help="a saved `fastft demo` output instead of a new run (its wall time is read "
                                          "from its last timestamp)")
    a = ap.parse_args()
    if a.from_output:
        output = Path(a.from_output).read_text()
        wall = float(re.findall(r"^\[\s*(\d+\.\d+)s\]", output, re.M)[-1])
    else:
        output, wall = run_demo()
    readme = ROOT / "README.md"
    text = readme.read_text()
    readme.write_text(text.replace(readme_block(text), block(output, wall)))
    print(f"README.md: demo excerpt of a {wall:.0f} s run written")


if __name__ == "__main__":
    main()
