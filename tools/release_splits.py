"""Pin the class lists of every study subset: each plan in ``plans/`` × its seeds, by spec hash.

Writes ``plans/splits.json``: per plan, the construction, its parameters and, per seed, the subset spec's content
hash (over the class lists, caps, seed, hierarchy version and rule) with the size of every set. The tests re-derive
every hash, so a change to the hierarchy, the branch rules or a construction that would silently change a released
split fails CI instead. ``--specs DIR`` also writes each spec file (the class lists themselves) for others to reuse;
``fastft subsets make CONSTRUCTION --seed S`` regenerates any one of them, and its hash says it is the same.

Usage: ``python tools/release_splits.py [--out plans/splits.json] [--specs DIR]``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastft.data.subsets import make
from fastft.sweep import load_plan

ROOT = Path(__file__).resolve().parents[1]


def splits(plans_dir: Path = ROOT / "plans", specs_dir: Path | None = None) -> dict:
    out = {}
    for p in sorted(plans_dir.glob("*.yaml")):
        plan = load_plan(p)
        seeds = {}
        for seed in plan["seeds"]:
            spec = make(plan["construction"], seed, **plan["params"])
            seeds[str(seed)] = {"hash": spec.hash, "sets": {k: len(v.classes) for k, v in spec.sets.items()}}
            if specs_dir is not None:
                spec.save(specs_dir / f"{plan['name']}-seed{seed}.json")
        out[plan["name"]] = {"construction": plan["construction"], "params": plan["params"], "seeds": seeds}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "plans" / "splits.json"))
    ap.add_argument("--specs", help="also write every spec file (class lists) into this folder")
    a = ap.parse_args()
    if a.specs:
        Path(a.specs).mkdir(parents=True, exist_ok=True)
    res = splits(specs_dir=Path(a.specs) if a.specs else None)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}: {sum(len(v['seeds']) for v in res.values())} subsets of {len(res)} plans")


if __name__ == "__main__":
    main()
