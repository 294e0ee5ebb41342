"""Plans: the YAML that names a study's construction, seeds, shared settings, run templates, the paper's findings it
checks and how its report compares the runs, validated whole when it loads (before any work); expanded into run specs
(template × grid point × seed, in dependency order), and several plans merged into one DAG. Torch-free.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..errors import FastFTError
from ..report.claims import check_claim


PLAN_KEYS = {"name", "construction", "params", "seeds", "defaults", "runs", "description", "claims", "report", "stores"}


RUN_KEYS = {"name", "set", "mode", "source", "grid", "paper", "overrides", "store"}


# stores: {name: {construction, params}}: the other stores a plan's runs read (``store: name`` in a run; the path is
# given as ``fastft sweep --store name=PATH``), each with its own subsets; a run without ``store`` reads the plan's
# store (``--store PATH``) and the plan's construction. A fine-tune may read another store than its source (a model
# trained on ImageNet subsets, fine-tuned on a folder dataset).
STORE_KEYS = {"construction", "params"}
STORE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


PAPER_KEYS = {"top1", "std", "ref", "svm", "svm_before", "probes", "probes_before",  # the paper's numbers a run is reported next to
              "filters_beats",  # Fig. 9: {other template: % of classes where this model's conv5 filters are more sensitive}
              "key"}  # per grid point: top1 / std as {value of grid key `key`: number} (Yosinski et al. Fig. 2: one per n)
PER_POINT = ("top1", "std")  # the paper's numbers that may be given per grid point


# a grid key whose value is the name of another grid key (``grid: {copy: [1, …, 7], freeze: copy}``) takes that key's
# value at every point: not an axis of its own (not in the run's key nor its grid), but set in every run's overrides


# report: the study's comparisons, a − b paired by seed at each grid point (paired.csv, report.md, gains-<plan>.png),
# and the order models are named in (Fig. 9: A before B; others after, by name)
REPORT_KEYS = {"pairs", "order"}


@dataclass
class RunSpec:
    key: str                      # "<template>[-k=v…]-s<seed>": unique inside the plan
    template: str
    seed: int
    overrides: dict               # TrainConfig values (without source)
    deps: list[str] = field(default_factory=list)
    grid: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    run_id: str | None = None
    pseudo_id: str | None = None  # dry runs without a store
    run_dir: Path | None = None
    images_per_epoch: float = 0.0
    also: list = field(default_factory=list)  # the same run in other plans (see merge): it serves them too

    def args(self, source_dir: Path | None = None) -> list[str]:
        kv = dict(self.overrides)
        if source_dir is not None:
            kv["source"] = str(source_dir)
        return [f"{k}={json.dumps(list(v)) if isinstance(v, (list, tuple)) else v}" for k, v in kv.items()]


def load_plan(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise FastFTError(f"plan {p} does not exist")
    plan = yaml.safe_load(p.read_text()) or {}
    unknown = set(plan) - PLAN_KEYS
    if unknown:
        raise FastFTError(f"plan {p}: unknown key(s) {sorted(unknown)}; valid: {sorted(PLAN_KEYS)}")
    for k in ("name", "construction", "runs"):
        if k not in plan:
            raise FastFTError(f"plan {p}: missing {k!r}")
    names = [r.get("name") for r in plan["runs"]]
    if len(set(names)) != len(names) or None in names:
        raise FastFTError(f"plan {p}: every run needs a unique name (got {names})")
    for r in plan["runs"]:
        bad = set(r) - RUN_KEYS
        if bad:
            raise FastFTError(f"plan {p}: run {r['name']!r} has unknown key(s) {sorted(bad)}; valid: {sorted(RUN_KEYS)}")
        bad = set(r.get("paper") or {}) - PAPER_KEYS
        if bad:
            raise FastFTError(f"plan {p}: run {r['name']!r} has unknown paper key(s) {sorted(bad)}; valid: {sorted(PAPER_KEYS)}")
        if r.get("source") and r["source"] not in names:
            raise FastFTError(f"plan {p}: run {r['name']!r} has source {r['source']!r}, which is not a run of the plan")
        _check_grid(r, p)
    _check_stores(plan, p)
    for c in plan.get("claims") or []:
        check_claim(c, plan, p)
    _check_report(plan.get("report"), names, p)
    plan.setdefault("seeds", [0, 1, 2, 3, 4])
    plan.setdefault("params", {})
    plan.setdefault("defaults", {})
    plan["_path"] = str(p)
    return plan


def _check_grid(r: dict, p: Path) -> None:
    """A run's ``grid``: each key a list of values or the name of another (list) key it follows; ``paper`` given per
    grid point names one of its list keys (``key``) and only values of it."""
    grid = r.get("grid") or {}
    if not isinstance(grid, dict):
        raise FastFTError(f"plan {p}: run {r['name']!r}: grid must be a mapping key -> [values]; got {grid!r}")
    for k, v in grid.items():
        if isinstance(v, str) and not isinstance(grid.get(v), list):
            raise FastFTError(f"plan {p}: run {r['name']!r}: grid {k}: {v!r} must name another grid key with a list of "
                              f"values (its list keys: {', '.join(x for x, y in grid.items() if isinstance(y, list)) or 'none'})")
        if not isinstance(v, (list, str)) or isinstance(v, list) and not v:
            raise FastFTError(f"plan {p}: run {r['name']!r}: grid {k} must be a non-empty list of values (or the name of "
                              f"another grid key it follows); got {v!r}")
    paper = r.get("paper") or {}
    if "key" not in paper:
        bad = [k for k in PER_POINT if isinstance(paper.get(k), dict)]
        if bad:
            raise FastFTError(f"plan {p}: run {r['name']!r}: paper {bad[0]} is given per grid point: name the grid key "
                              "its values are of (paper: {key: <grid key>, …})")
        return
    key, values = paper["key"], grid.get(paper["key"])
    if not isinstance(values, list):
        raise FastFTError(f"plan {p}: run {r['name']!r}: paper key {key!r} is not a grid key with values of the run "
                          f"(its grid: {', '.join(grid) or 'none'})")
    for k in PER_POINT:
        per = paper.get(k)
        if per is not None and not (isinstance(per, dict) and all(isinstance(x, (int, float)) for x in per.values())):
            raise FastFTError(f"plan {p}: run {r['name']!r}: paper {k} must be a mapping {{{key} value: number}}; got {per!r}")
        bad = [x for x in per or {} if x not in values]
        if bad:
            raise FastFTError(f"plan {p}: run {r['name']!r}: paper {k} gives {key}={bad[0]!r}, not in its grid {values}")


def paper_at(paper: dict | None, point: dict) -> dict | None:
    """The paper's numbers for one grid point: per-point ``top1`` / ``std`` (``paper: {key: …}``) taken at the point's
    value of ``key`` (None where the paper gives none); other entries as they are."""
    if not paper or "key" not in paper:
        return paper
    v = point.get(paper["key"])
    out = {k: x for k, x in paper.items() if k != "key" and k not in PER_POINT}
    out.update({k: (paper.get(k) or {}).get(v) for k in PER_POINT if paper.get(k) is not None})
    return out


def _check_stores(plan: dict, p: Path) -> None:
    """``stores: {name: {construction, params}}`` well formed, and every run's ``store`` one of them."""
    stores = plan.get("stores") or {}
    if not isinstance(stores, dict):
        raise FastFTError(f"plan {p}: stores must be a mapping name -> {{construction, params}}; got {stores!r}")
    for name, st in stores.items():
        if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
            raise FastFTError(f"plan {p}: store name {name!r} must be a letter followed by letters, digits, _ or -")
        if not isinstance(st, dict) or "construction" not in st or set(st) - STORE_KEYS:
            raise FastFTError(f"plan {p}: store {name!r} must be a mapping with construction (and params); got {st!r}")
        if not isinstance(st.get("params") or {}, dict):
            raise FastFTError(f"plan {p}: store {name!r}: params must be a mapping; got {st['params']!r}")
    for r in plan["runs"]:
        if r.get("store") is not None and r["store"] not in stores:
            listed = ", ".join(stores) or "none: add a stores: mapping"
            raise FastFTError(f"plan {p}: run {r['name']!r} reads store {r['store']!r}, which the plan's stores do not "
                              f"name (its stores: {listed})")


def _check_report(report, names: list[str], p: Path) -> None:
    """``report: {pairs: [[a, b], …], order: [template, …]}``, every name a run of the plan."""
    if report is None:
        return
    if not isinstance(report, dict) or set(report) - REPORT_KEYS:
        raise FastFTError(f"plan {p}: report must be a mapping of {sorted(REPORT_KEYS)}; got "
                          + (f"unknown key(s) {sorted(set(report) - REPORT_KEYS)}" if isinstance(report, dict) else repr(report)))
    pairs, order = report.get("pairs", []), report.get("order", [])
    if not isinstance(pairs, list) or not all(isinstance(x, list) and len(x) == 2 and x[0] != x[1]
                                              and all(isinstance(t, str) for t in x) for x in pairs):
        raise FastFTError(f"plan {p}: report.pairs must be a list of [a, b]: two different runs of the plan, compared "
                          f"as a − b; got {pairs!r}")
    if len({tuple(x) for x in pairs}) != len(pairs):
        raise FastFTError(f"plan {p}: report.pairs lists a pair twice: {pairs!r}")
    if not isinstance(order, list) or not all(isinstance(t, str) for t in order) or len(set(order)) != len(order):
        raise FastFTError(f"plan {p}: report.order must be a list of runs of the plan, each once; got {order!r}")
    for key, named in (("pairs", [t for x in pairs for t in x]), ("order", order)):
        bad = [t for t in named if t not in names]
        if bad:
            raise FastFTError(f"plan {p}: report.{key} names {', '.join(map(repr, dict.fromkeys(bad)))}, not a run of "
                              f"the plan (its runs: {', '.join(names)})")


def expand(plan: dict, seeds: list[int] | None = None) -> list[RunSpec]:
    """Plan → run specs in dependency order (a source before its fine-tunes)."""
    out: list[RunSpec] = []
    order = _topo(plan["runs"])
    for seed in seeds if seeds is not None else plan["seeds"]:
        by_template: dict[str, list[RunSpec]] = {}
        for t in order:
            grid = t.get("grid") or {}
            keys = sorted(k for k, v in grid.items() if not isinstance(v, str))
            tied = {k: v for k, v in grid.items() if isinstance(v, str)}  # follows another key (freeze: copy)
            for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
                g = dict(zip(keys, values))
                suffix = "".join(f"-{k}{v}" for k, v in g.items())
                ov = {**plan["defaults"], **(t.get("overrides") or {}), "set": t["set"], "mode": t.get("mode", "scratch"), "seed": seed, **g,
                      **{k: g[v] for k, v in tied.items()}}
                rs = RunSpec(key=f"{t['name']}{suffix}-s{seed}", template=t["name"], seed=seed, overrides=ov, grid=g,
                             labels={"plan": plan["name"], "template": t["name"], "grid": g, "seed": seed, "set": t["set"],
                                     "mode": ov["mode"], "source_template": t.get("source"), "paper": paper_at(t.get("paper"), g),
                                     "claims": plan.get("claims"), "report": plan.get("report"),
                                     "store": t.get("store")})
                if t.get("source"):
                    srcs = by_template[t["source"]]
                    if len(srcs) != 1:
                        raise FastFTError(f"run {t['name']!r}: source {t['source']!r} has a grid; a source must be a single run")
                    rs.deps = [srcs[0].key]
                by_template.setdefault(t["name"], []).append(rs)
                out.append(rs)
    return out


def _topo(templates: list[dict]) -> list[dict]:
    done, order, pending = set(), [], list(templates)
    while pending:
        progress = False
        for t in list(pending):
            if not t.get("source") or t["source"] in done:
                order.append(t)
                done.add(t["name"])
                pending.remove(t)
                progress = True
        if not progress:
            raise FastFTError(f"plan has a dependency cycle among {[t['name'] for t in pending]}")
    return order


def merge(plans_runs: list[list[RunSpec]]) -> list[RunSpec]:
    """The prepared runs of several plans as one DAG, so that one local sweep packs every plan's runs onto its GPUs
    at once (plan after plan, each plan's last runs would leave GPUs idle). Keys become ``<plan>/<key>``; a run that
    several plans share (same id) appears once and serves each of them (``also``)."""
    merged, canon = [], {}
    for runs in plans_runs:
        plan = runs[0].labels["plan"] if runs else ""
        rename = {r.key: canon[r.run_id].key if r.run_id in canon else f"{plan}/{r.key}" for r in runs}
        for r in runs:
            if r.run_id in canon:
                c = canon[r.run_id]
                c.also.append(replace(r, run_dir=c.run_dir))
                continue
            m = replace(r, key=rename[r.key], deps=[rename[d] for d in r.deps], also=[])
            canon[r.run_id] = m
            merged.append(m)
    return merged
