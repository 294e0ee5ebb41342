"""``fastft sweep``: a plan × seeds → a DAG of training runs (pretrain → fine-tunes), run locally or on SLURM.

A plan (YAML) names a subset construction, the seeds, shared training settings and run templates::

    name: near-far-instru
    construction: instru                # fastft subsets list
    params: {}                          # construction parameters ("store" as a value = the store's class list)
    seeds: [0, 1, 2, 3, 4]
    defaults: {epochs: 100}             # TrainConfig keys shared by every run
    runs:
      - {name: near, set: near}                                  # pretrain (scratch)
      - {name: ft-near, set: target, mode: finetune, source: near,        # paper: the numbers it is reported next to
         paper: {top1: 67.12, svm: 66.70, svm_before: 60.06, probes: {fc7: 59.08, fc8: 60.86}, ref: "Table 3"}}
      - {name: freeze, set: target, mode: finetune, source: near, grid: {freeze: [1, 2, 3]}}
    claims:                             # the paper's findings, checked by fastft report (see CLAIM_KINDS)
      - {a: ft-near, b: ft-far, text: "the near source fine-tunes better", ref: "§4.3"}
      - {trend: ft-near, vs: scratch, key: images, direction: down, text: "the gain shrinks with more images"}

Each (template × grid point × seed) is one run; ``source: <template>`` makes it depend on that template's run of
the same seed. A run's id is the trainer's (hash of data, model, protocol, seed, source id), computed before anything
trains, so re-running a sweep skips finished runs, resumes interrupted ones (the trainer resumes from its newest
complete checkpoint) and retries failed ones up to ``--retries`` times. Two sweeps on the same plan never train the
same run twice: a run is claimed by creating ``<out>/claims/<id>`` exclusively. A claim is a lease: the sweep that
holds it refreshes its mtime every ``CLAIM_HEARTBEAT_S`` while the run trains, and a claim whose sweep is gone is
taken over (on the same host: its pid is dead; from another host sharing the runs directory: not refreshed for
``CLAIM_STALE_S``, by the file system's clock, so the hosts' clocks need not agree). The plans of one sweep run as one
DAG (``merge``); on SLURM a run shared by plans is one array task the others wait for (``write_slurm``). Every run
directory gets a ``sweep.json`` listing each (plan, template, grid values, seed, paper reference, WordNet distance) it
serves — a run shared by two plans (the INSTRU near/far models) is trained once and reported in
both — all the report needs, so runs gathered from many machines report the same way.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .errors import FastFTError
from .files import write_json

PLAN_KEYS = {"name", "construction", "params", "seeds", "defaults", "runs", "description", "claims"}
# the paper's findings a plan checks (fastft report.claims): a beats b, paired by seed at each common grid point;
# ``value`` of grid key ``key`` is ``best`` for a template; grid key ``key`` going ``from`` → ``to`` is a ``gain`` for
# a template (more than for ``vs``); a template's top-1 (or its gain over ``vs``) has a ``trend`` up / down along ``key``
CLAIM_KINDS = {("a", "b"), ("best", "key", "value"), ("gain", "key", "from", "to"), ("gain", "vs", "key", "from", "to"),
               ("trend", "key", "direction"), ("trend", "vs", "key", "direction")}
SET_KEYS = ("classes", "images")  # trend keys read from instru-grid set names k<classes>_n<images> (Fig. 12, 14)
RUN_KEYS = {"name", "set", "mode", "source", "grid", "paper", "overrides"}
PAPER_KEYS = {"top1", "std", "ref", "svm", "svm_before", "probes", "probes_before",  # the paper's numbers a run is reported next to
              "filters_beats"}  # Fig. 9: {other template: % of classes where this model's conv5 filters are more sensitive}
ILSVRC_TRAIN_PER_CLASS = 1281167 / 1000  # nominal, for cost estimates without a store


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
    for c in plan.get("claims") or []:
        _check_claim(c, plan, p)
    plan.setdefault("seeds", [0, 1, 2, 3, 4])
    plan.setdefault("params", {})
    plan.setdefault("defaults", {})
    plan["_path"] = str(p)
    return plan


def claim_measures() -> dict[str, str]:
    """What an ``{a, b}`` claim may compare (``ft-near:svm``; top-1 by default) → the report's column holding it: the
    run's top-1 / top-5, the ``fastft analyze`` results on its view (SVM on fc7, a layer's probe, conv5 filters' mean
    sensitivity: the mean AP of each class's top-5 filters) and, ``_before``, its source model's on the same view
    (Table 3's "before fine-tuning", Fig. 10's dashed lines)."""
    from .model import LAYERS

    return {"top1": "top1", "top5": "top5", "svm": "svm_top1", "svm_before": "svm_before_top1",
            "filters": "mean_sensitivity", "filters_before": "filters_before_mean_sensitivity",
            **{f"probe_{x}": f"probe_{x}" for x in LAYERS}, **{f"probe_before_{x}": f"probe_before_{x}" for x in LAYERS}}


def _check_claim(c, plan: dict, p: Path) -> None:
    """A claim names templates of the plan (``a`` / ``b``: with a measure, ``ft-near:svm``, or the difference of such
    terms, ``ft-near:svm - ft-far:svm``) and, for ``best`` / ``gain`` / ``trend``, one of their grid keys (a trend: a
    numeric one, or ``classes`` / ``images`` of instru-grid set names) and its values."""
    kind = next((k for k in CLAIM_KINDS if isinstance(c, dict) and set(c) - {"text", "ref"} == set(k)), None)
    if kind is None or not isinstance(c.get("text"), str):
        raise FastFTError(f"plan {p}: claim {c!r} must have a text and one of the key sets {sorted(sorted(k) for k in CLAIM_KINDS)}")
    runs = {r["name"]: r for r in plan["runs"]}
    terms = [x.strip() for k in ("a", "b") if k in c for x in str(c[k]).split(" - ")]  # a side: one term, or a difference
    for t in terms + [c[k] for k in ("best", "gain", "trend", "vs") if k in c]:
        t, _, metric = str(t).partition(":") if "a" in c else (t, "", "")
        if t not in runs:
            raise FastFTError(f"plan {p}: claim {c['text']!r} names {t!r}, which is not a run of the plan")
        if metric and metric not in claim_measures():
            raise FastFTError(f"plan {p}: claim {c['text']!r}: {metric!r} is not a measure of a run; "
                              f"measures: {', '.join(claim_measures())}")
    if "trend" in c and c["direction"] not in ("up", "down"):
        raise FastFTError(f"plan {p}: claim {c['text']!r}: direction must be 'up' or 'down', not {c['direction']!r}")
    from .subsets import grid_set

    for t in (c[k] for k in ("best", "gain", "trend", "vs") if k in c):
        grid = runs[t].get("grid") or {}
        if "trend" in c and c["key"] in SET_KEYS and "set" in grid:
            bad = [v for v in grid["set"] if grid_set(v) is None]
            if bad:
                raise FastFTError(f"plan {p}: claim {c['text']!r}: {c['key']!r} is read from set names k<classes>_n<images>, "
                                  f"and the grid of {t!r} has set(s) {bad}")
            continue
        values = grid.get(c["key"])
        if values is None:
            raise FastFTError(f"plan {p}: claim {c['text']!r}: {c['key']!r} is not a grid key of {t!r}"
                              + (f" (nor {' / '.join(SET_KEYS)} of a set grid)" if "trend" in c else ""))
        if "trend" in c and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise FastFTError(f"plan {p}: claim {c['text']!r}: a trend needs numbers along {c['key']!r}; the grid of {t!r} has {values}")
        for v in (c[k] for k in ("value", "from", "to") if k in c):
            if v not in values:
                raise FastFTError(f"plan {p}: claim {c['text']!r}: {c['key']}={v!r} is not in its grid {values}")


def expand(plan: dict, seeds: list[int] | None = None) -> list[RunSpec]:
    """Plan → run specs in dependency order (a source before its fine-tunes)."""
    out: list[RunSpec] = []
    order = _topo(plan["runs"])
    for seed in seeds if seeds is not None else plan["seeds"]:
        by_template: dict[str, list[RunSpec]] = {}
        for t in order:
            grid = t.get("grid") or {}
            keys = sorted(grid)
            for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
                g = dict(zip(keys, values))
                suffix = "".join(f"-{k}{v}" for k, v in g.items())
                ov = {**plan["defaults"], **(t.get("overrides") or {}), "set": t["set"], "mode": t.get("mode", "scratch"), "seed": seed, **g}
                rs = RunSpec(key=f"{t['name']}{suffix}-s{seed}", template=t["name"], seed=seed, overrides=ov, grid=g,
                             labels={"plan": plan["name"], "template": t["name"], "grid": g, "seed": seed, "set": t["set"],
                                     "mode": ov["mode"], "source_template": t.get("source"), "paper": t.get("paper"),
                                     "claims": plan.get("claims")})
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


# ---------------------------------------------------------------- binding a plan to a store
def prepare(plan: dict, runs: list[RunSpec], store: str | None, out: Path, progress: bool = False) -> dict:
    """Make the specs (one per seed), resolve views, compute run ids and directories. Returns {seed: spec path}."""
    from .config import build
    from .store import fill_store_params, open_view
    from .subsets import load_spec, make
    from .trainer import TrainConfig, resolve_device, run_dir_for, run_identity, view_path_for
    from . import runs as runs_mod

    out.mkdir(parents=True, exist_ok=True)
    specs = {}
    params = fill_store_params(dict(plan["params"]), store, f"plan {plan['name']}")
    for seed in sorted({r.seed for r in runs}):
        p = out / "specs" / f"{plan['name']}-seed{seed}.json"
        spec = make(plan["construction"], seed, **params)
        if p.exists() and load_spec(p).hash != spec.hash:
            raise FastFTError(f"{p} exists with different content (plan changed?); use a new --out")
        spec.save(p)
        specs[seed] = p
    if store:
        _resolve_views(specs, {(r.seed, r.overrides["set"]) for r in runs}, store, out / "views", progress, plan["name"])
    by_key = {r.key: r for r in runs}
    for r in runs:
        spec = load_spec(specs[r.seed])
        if r.overrides["set"] not in spec.sets:
            raise FastFTError(f"run {r.key}: construction {plan['construction']} has no set {r.overrides['set']!r} (it has {list(spec.sets)})")
        r.overrides.update(spec=str(specs[r.seed]), out=str(out), name=r.key)
        if store:
            r.overrides["store"] = str(store)
        if r.labels["mode"] == "finetune" and r.labels.get("source_template"):
            r.labels["distance"] = _distance(spec, by_key[r.deps[0]].overrides["set"], r.overrides["set"])
        if not store:  # estimate from nominal ILSVRC2012 counts; a pseudo id lets the cost count shared runs once
            cs = spec.sets[r.overrides["set"]]
            per_class = min(cs.cap or 1e9, ILSVRC_TRAIN_PER_CLASS)
            r.images_per_epoch = len(cs.classes) * max(per_class, int(r.overrides.get("augment_to", 0)))  # §4.6 copies
            from .trainer import IDENTITY_KEYS

            cfg = build(TrainConfig, r.overrides, f"run {r.key}")
            ident = {k: getattr(cfg, k) for k in IDENTITY_KEYS}
            ident.update(lr=cfg.base_lr, classes=list(cs.classes), cap=cs.cap,
                         source=by_key[r.deps[0]].pseudo_id if r.deps else None)
            r.pseudo_id = runs_mod.run_id(ident)
            continue
        src_dir = by_key[r.deps[0]].run_dir if r.deps else None
        cfg = build(TrainConfig, {**r.overrides, **({"source": str(src_dir)} if src_dir else {})}, f"run {r.key}")
        cfg.validate()
        view = open_view(view_path_for(cfg), check_store=False)  # the run verifies its shards when it starts
        try:
            view.check_crop(cfg.crop)
        except FastFTError as e:
            raise FastFTError(f"run {r.key}: {e}") from None
        # §4.6 copies grow each class to augment_to (exact when no class already has more)
        r.images_per_epoch = max(view.split("train")["samples"], view.num_classes * cfg.augment_to)
        _, precision = resolve_device(cfg)
        src = by_key[r.deps[0]].run_id if r.deps else None
        r.run_id = runs_mod.run_id(run_identity(cfg, view.meta, precision, src))
        r.run_dir = run_dir_for(cfg, r.run_id)
        existing = sorted(out.glob(f"*-{r.run_id}"))
        if existing and r.run_dir not in existing:  # the same run made by another plan: reuse it, never train it twice
            r.run_dir = existing[0]
            r.overrides["name"] = existing[0].name[: -len(r.run_id) - 1]
    return specs


POOL_AFTER_S = 2.0  # views are resolved by several processes when the first took this long


def _resolve_views(specs: dict, pairs: set, store: str, views_dir: Path, progress: bool, plan: str) -> None:
    """Resolve the views a plan needs that do not exist yet (each (seed, set) once), with a progress bar. Where one
    takes seconds (ILSVRC2012: a 500-class view is 640k samples), the rest are resolved by several processes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from tqdm import tqdm

    from .pipelines import usable_cores
    from .store import open_store, shared_view, view_content
    from .subsets import load_spec

    todo = []
    for seed, name in sorted(pairs):
        if name in json.loads(Path(specs[seed]).read_text())["sets"]:  # else prepare names the mistake below
            if not (shared_view(specs[seed], name, store, views_dir, existing_only=True) / "view.json").exists():
                todo.append((str(specs[seed]), name))
    if not todo:
        return
    # views of equal content share their files (store.view_content): one of each is resolved, the others then link
    st, unique, same = open_store(store), {}, []
    for sp, name in todo:
        content = view_content(load_spec(sp), name, st, views_dir)
        if content in unique:
            same.append((sp, name))
        else:
            unique[content] = (sp, name)
    todo = list(unique.values())
    with tqdm(total=len(todo) + len(same), unit="view", desc=f"{plan}: resolve views", disable=not progress,
              dynamic_ncols=True) as bar:
        t = time.time()
        shared_view(*todo[0], store, views_dir)
        bar.update()
        rest = todo[1:]
        workers = min(len(rest), usable_cores(), 8)
        if workers < 2 or time.time() - t < POOL_AFTER_S:  # small views: a process pool would cost more than it saves
            rest, same = rest + same, []
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:  # spawn: this process has torch loaded
                for f in as_completed([ex.submit(shared_view, sp, name, store, views_dir) for sp, name in rest]):
                    f.result()
                    bar.update()
            rest = []
        for sp, name in rest + same:
            shared_view(sp, name, store, views_dir)
            bar.update()


def _distance(spec, source_set: str, target_set: str) -> float:
    return _wup_nearest(tuple(spec.sets[target_set].classes), tuple(spec.sets[source_set].classes))


@functools.lru_cache(maxsize=256)
def _wup_nearest(targets: tuple, sources: tuple) -> float:
    """Once per class sets: a §4.4 grid fine-tunes the same classes from the same source at many image counts."""
    from .taxonomy import load

    return round(load().distance(list(targets), list(sources))["wup_nearest"], 4)


def cost(runs: list[RunSpec], epochs_default: int = 100, seen: set | None = None) -> dict:
    """Runs and image-iterations, counting a run shared with another plan (same id) once (pass one ``seen`` set)."""
    seen = set() if seen is None else seen
    uniq = []
    for r in runs:
        rid = r.run_id or r.pseudo_id or r.key
        if rid not in seen:
            seen.add(rid)
            uniq.append(r)
    iters = sum(r.images_per_epoch * int(r.overrides.get("epochs", epochs_default)) for r in uniq)
    return {"runs": len(uniq), "image_iterations": iters, "shared": len(runs) - len(uniq)}


# ---------------------------------------------------------------- local execution
# a sweep refreshes the claims of its running runs this often; a claim from another host not refreshed for
# CLAIM_STALE_S means that its sweep (or host) is gone. FASTFT_CLAIM_* change them (all sweeps on a runs directory
# must agree: the stale time must stay well above the heartbeat)
CLAIM_HEARTBEAT_S = float(os.environ.get("FASTFT_CLAIM_HEARTBEAT_S", 30))
CLAIM_STALE_S = float(os.environ.get("FASTFT_CLAIM_STALE_S", 600))


def _claim(out: Path, r: RunSpec) -> bool:
    d = out / "claims"
    d.mkdir(exist_ok=True)
    f = d / r.run_id
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            return True
        except FileExistsError:
            if _stale(f) is None:
                return False
            _take_over(f)
    return False


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _holder(claim: Path) -> str:
    try:
        return "pid {1} on {0}".format(*claim.read_text().split())
    except (OSError, IndexError):
        return "another sweep"


def _stale(claim: Path, now: float | None = None) -> float | None:
    """Why a claim no longer holds: -1 if it names a dead process on this host, else the seconds since its sweep
    last refreshed it if that is over ``CLAIM_STALE_S``; None while it holds (or is gone). ``now``: :func:`_fs_now`."""
    try:
        host, _, pid = claim.read_text().partition(" ")
        if host == socket.gethostname() and pid.isdigit():
            return -1.0 if not _alive(int(pid)) else None
        age = (now or _fs_now(claim.parent)) - claim.stat().st_mtime
    except FileNotFoundError:
        return None
    return age if age > CLAIM_STALE_S else None


def _fs_now(d: Path) -> float:
    """The time by the clock that stamps the claims (an NFS server's): the mtime of a file touched now."""
    d.mkdir(parents=True, exist_ok=True)
    p = d / f".now-{socket.gethostname()}-{os.getpid()}"
    p.touch()
    try:
        return p.stat().st_mtime
    finally:
        p.unlink(missing_ok=True)


def _take_over(claim: Path) -> None:
    """Remove a stale claim so that it can be claimed again. Two sweeps may both find it stale: it is moved aside
    (only one rename succeeds) and put back if it was refreshed meanwhile (then it was not stale after all)."""
    aside = claim.with_name(f".{claim.name}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(claim, aside)
    except FileNotFoundError:
        return
    try:
        if _stale(aside) is None:
            os.link(aside, claim)  # a fresh claim (taken over by another sweep just now): put it back
    except FileExistsError:
        pass
    finally:
        aside.unlink(missing_ok=True)


def _heartbeat(out: Path, runs) -> None:
    for r in runs:
        try:
            os.utime(out / "claims" / r.run_id)  # no times given: the file system's clock (an NFS server's)
        except FileNotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def state(out: Path, r: RunSpec) -> str:
    """Where a run stands, from its directory and claim alone (what ``--dry-run`` shows for a sweep in progress):
    finished, running (claimed by a live sweep, or by another host), failed, interrupted (has a complete checkpoint:
    the next sweep resumes it), or to run."""
    from .runs import complete_checkpoints

    if r.run_dir is None:
        return "to run"
    if (r.run_dir / "final.json").exists():
        return "finished"
    claim = out / "claims" / (r.run_id or "")
    if r.run_id and claim.exists() and _stale(claim) is None:
        host = claim.read_text().partition(" ")[0]
        return "running" if host == socket.gethostname() else f"running on {host}"
    if (r.run_dir / "failed.json").exists():
        return "failed"
    return "interrupted" if complete_checkpoints(r.run_dir) else "to run"


def _release(out: Path, r: RunSpec) -> None:
    (out / "claims" / r.run_id).unlink(missing_ok=True)


def run_local(runs: list[RunSpec], out: Path, slots: list[dict], retries: int = 1, progress: bool = True,
              poll: float = 0.5) -> dict:
    """Run the DAG with one process per slot (a slot = env vars, e.g. CUDA_VISIBLE_DEVICES). Returns the summary."""
    from tqdm import tqdm

    state = {r.key: "pending" for r in runs}
    attempts = {r.key: 0 for r in runs}
    by_key = {r.key: r for r in runs}
    running: dict[str, tuple[subprocess.Popen, dict, object]] = {}
    free = list(slots)
    for r in runs:
        if (r.run_dir / "final.json").exists():
            state[r.key] = "done"
            _record_membership(r)
    bar = tqdm(total=len(runs), initial=sum(s == "done" for s in state.values()), unit="run", desc="sweep", disable=not progress,
               dynamic_ncols=True)
    t0 = beat = time.time()

    last = {}

    def status():
        c = {k: sum(1 for s in state.values() if s == k) for k in ("done", "running", "failed", "skipped", "elsewhere")}
        c = {k: v for k, v in c.items() if v}
        if c != last:  # redraw on change only (logs stay readable when stdout is a file)
            bar.set_postfix(c)
            last.clear()
            last.update(c)

    def terminated(*_):
        raise Terminated

    old_term = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        while True:
            # finished processes
            for key, (proc, slot, logf) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                logf.close()
                r = by_key[key]
                del running[key]
                free.append(slot)
                _release(out, r)
                if rc == 0 and (r.run_dir / "final.json").exists():
                    state[key] = "done"
                    bar.update(1)
                elif attempts[key] <= retries:
                    state[key] = "pending"
                    bar.write(f"run {key} failed (exit {rc}); retrying ({attempts[key]}/{retries}) — log {r.run_dir / 'sweep.log'}")
                else:
                    state[key] = "failed"
                    tail = (r.run_dir / "sweep.log").read_text()[-3000:] if (r.run_dir / "sweep.log").exists() else ""
                    (r.run_dir / "failed.json").write_text(json.dumps({"exit_code": rc, "attempts": attempts[key], "log_tail": tail}, indent=1))
                    bar.write(f"run {key} FAILED (exit {rc}) after {attempts[key]} attempts — log {r.run_dir / 'sweep.log'}")
            now = None  # every CLAIM_HEARTBEAT_S: refresh this sweep's claims, look for others' stale ones
            if time.time() - beat > CLAIM_HEARTBEAT_S:
                _heartbeat(out, (by_key[k] for k in running))
                beat, now = time.time(), _fs_now(out / "claims")
            # runs trained by another sweep process
            for key, s in state.items():
                if s == "elsewhere":
                    r = by_key[key]
                    claim = out / "claims" / r.run_id
                    if (r.run_dir / "final.json").exists():
                        state[key] = "done"
                        bar.update(1)
                    elif not claim.exists():
                        state[key] = "pending"
                    elif now and (age := _stale(claim, now)) is not None:
                        state[key] = "pending"
                        if age > 0:
                            bar.write(f"run {key}: its claim ({_holder(claim)}) was not refreshed for {_dur(age)}: "
                                      "that sweep is gone; taking the run over (it resumes from its last checkpoint)")
            # dependents of failed runs
            for r in runs:
                if state[r.key] == "pending" and any(state[d] in ("failed", "skipped") for d in r.deps):
                    state[r.key] = "skipped"
            # launch what is ready
            for r in runs:
                if not free:
                    break
                if state[r.key] != "pending" or any(state[d] != "done" for d in r.deps):
                    continue
                if (r.run_dir / "final.json").exists():
                    state[r.key] = "done"
                    bar.update(1)
                    continue
                if not _claim(out, r):
                    state[r.key] = "elsewhere"
                    claim = out / "claims" / r.run_id
                    bar.write(f"run {r.key} is being trained by {_holder(claim)} (claim {claim}); waiting for it. If that "
                              f"sweep is gone (its host died), this sweep takes the run over once the claim has not been "
                              f"refreshed for {_dur(CLAIM_STALE_S)} (or at once if you delete the claim)")
                    continue
                slot = free.pop(0)
                _record_membership(r)
                (r.run_dir / "failed.json").unlink(missing_ok=True)
                attempts[r.key] += 1
                src = by_key[r.deps[0]].run_dir if r.deps else None
                cmd = [sys.executable, "-m", "fastft", "train", *r.args(src), "progress=false"]
                logf = open(r.run_dir / "sweep.log", "a")
                logf.write(f"$ {shlex.join(cmd)}\n")
                logf.flush()
                proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, **slot})
                running[r.key] = (proc, slot, logf)
                state[r.key] = "running"
            status()
            if not running and not any(s in ("pending", "elsewhere") for s in state.values()):
                break
            time.sleep(poll)
    except (KeyboardInterrupt, Terminated):
        _stop_runs(running, out, by_key, bar)
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    bar.close()
    summary = {k: [key for key, s in state.items() if s == k] for k in ("done", "failed", "skipped")}
    summary["secs"] = round(time.time() - t0, 1)
    return summary


class Terminated(SystemExit):
    """SIGTERM to a sweep: its running runs checkpoint and stop, then it exits 143 (re-running resumes them)."""

    def __init__(self):
        super().__init__(143)


def _stop_runs(running: dict, out: Path, by_key: dict, bar) -> None:
    """Ctrl-C or SIGTERM: every running run gets SIGTERM (it checkpoints after its current step and exits) and the
    sweep waits for each, so that no trainer outlives the sweep to race the next one on the same run directory."""
    if not running:
        return
    bar.write(f"sweep stopping: {len(running)} running run(s) checkpoint and stop; re-run the same command to resume")
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for key, (proc, _, logf) in list(running.items()):
        try:
            proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: the runs got it too and stop without checkpointing
            proc.kill()
            proc.wait()
        logf.close()
        _release(out, by_key[key])
        del running[key]


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


def _record_membership(r: RunSpec) -> None:
    """``sweep.json`` lists every (plan, template, grid, seed) a run serves: one run can belong to several plans."""
    r.run_dir.mkdir(parents=True, exist_ok=True)
    p = r.run_dir / "sweep.json"
    d = json.loads(p.read_text()) if p.exists() else {"run_id": r.run_id, "memberships": []}
    for x in [r, *r.also]:
        plan = x.labels["plan"]
        entry = {**x.labels, "key": x.key[len(plan) + 1:] if x.key.startswith(f"{plan}/") else x.key}
        d["memberships"] = [m for m in d["memberships"] if (m["plan"], m["key"]) != (entry["plan"], entry["key"])] + [entry]
    write_json(p, d)


def gpu_ids(gpus: str) -> list[str]:
    """``--gpus``: ``all``, or indices into the GPUs this process may use. Under ``CUDA_VISIBLE_DEVICES`` (a SLURM
    allocation sets it) index i is its i-th entry, as in PyTorch, so a run never lands on a GPU outside the allocation."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [g.strip() for g in env.split(",") if g.strip()] if env is not None else None
    if gpus == "all":
        if visible is None:
            import torch

            visible = [str(i) for i in range(torch.cuda.device_count())]
        if not visible:
            raise FastFTError("--gpus all: no GPU is visible here (leave --gpus out to run on the CPU)")
        return visible
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if len(set(ids)) < len(ids):
        raise FastFTError(f"--gpus {gpus} names a GPU twice; use --per-gpu N to pack N runs on each GPU")
    if visible is not None:
        bad = [g for g in ids if not g.isdigit() or int(g) >= len(visible)]
        if bad:
            raise FastFTError(f"--gpus {gpus}: CUDA_VISIBLE_DEVICES={env} leaves {len(visible)} GPU(s), so give indices "
                              f"0..{len(visible) - 1} (or all); {bad} are not")
        return [visible[int(g)] for g in ids]
    return ids


def slots_for(gpus: str | None, per_gpu: int, parallel: int) -> list[dict]:
    """``--gpus 0,1 --per-gpu 2`` → 4 slots (two runs share each GPU); no GPUs → ``parallel`` CPU slots."""
    if gpus:
        ids = gpu_ids(gpus)
        # runs sharing a GPU split its memory for the decoded-image cache (see fastft.pipelines._CacheBackend)
        # and the runs on the node split its host memory for the cache's second tier (pipelines.host_cache_budget)
        return [{"CUDA_VISIBLE_DEVICES": g, "FASTFT_GPU_SHARE": str(per_gpu), "FASTFT_NODE_RUNS": str(len(ids) * per_gpu)}
                for g in ids for _ in range(per_gpu)]
    from .pipelines import usable_cores

    n = max(1, parallel)  # the runs split the node's cores: torch's threads and (FASTFT_NODE_RUNS) the loaders'
    return [{"OMP_NUM_THREADS": str(max(1, usable_cores() // n)), "FASTFT_NODE_RUNS": str(n)} for _ in range(n)]


# ---------------------------------------------------------------- SLURM
@dataclass
class SlurmLevel:
    """One job array: the runs of one dependency level of a plan, one per task."""
    name: str        # "<plan>-level<k>-<hash of its runs>": the array's job name and its files'
    script: Path
    runs: list
    after: list      # (level name, or "job:<id>" of an earlier submission; task index): tasks it waits for (afterok)


def write_slurm(runs: list[RunSpec], out: Path, plan: dict, partition: str | None = None, time_limit: str = "24:00:00",
                extra: list[str] = (), placed: dict | None = None) -> list[SlurmLevel]:
    """One job array per dependency level of a plan (a GPU per task). A run that is finished, or already placed —
    ``placed``: run id → (level name or ``job:<id>``, task), shared by the plans of one sweep, pre-filled with the
    tasks of earlier submissions still queued (:func:`queued_submissions`), and filled here — is not listed again:
    the arrays that need it wait for the one task that trains it (``afterok`` on that task). So a run shared by plans
    (the INSTRU near/far models) is trained by one task, never by two at once. Files are named by their runs' ids:
    a later sweep never rewrites the list a queued array reads."""
    placed = {} if placed is None else placed
    level: dict[str, int] = {}
    for r in runs:
        level[r.key] = 1 + max((level[d] for d in r.deps), default=-1)
    by_key = {r.key: r for r in runs}
    d = out / "slurm"
    d.mkdir(parents=True, exist_ok=True)
    levels = []
    for lv in sorted(set(level.values())):
        members = [r for r in runs if level[r.key] == lv and r.run_id not in placed and not (r.run_dir / "final.json").exists()]
        if not members:
            continue
        name = f"{plan['name']}-level{lv}-{hashlib.sha256(' '.join(r.run_id for r in members).encode()).hexdigest()[:8]}"
        after = sorted({placed[by_key[x].run_id] for r in members for x in r.deps if by_key[x].run_id in placed})
        for i, r in enumerate(members):
            placed[r.run_id] = (name, i)
        lst = d / f"{name}.txt"
        lst.write_text("\n".join(shlex.join(["train", *r.args(by_key[r.deps[0]].run_dir if r.deps else None), "progress=false"])
                                 for r in members) + "\n")
        head = ["#!/bin/bash", f"#SBATCH --job-name=fastft-{name}", f"#SBATCH --array=0-{len(members) - 1}",
                "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=16", f"#SBATCH --time={time_limit}", "#SBATCH --requeue",
                "#SBATCH --signal=B:TERM@120", f"#SBATCH --output={d}/%x-%A_%a.out"]
        if partition:
            head.append(f"#SBATCH --partition={partition}")
        head += [f"#SBATCH {x}" for x in extra]
        body = ["set -uo pipefail",
                f'eval "set -- $(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(lst))})"',
                "# SIGTERM reaches this shell 120 s before the time limit (--signal=B:TERM@120), or on preemption. It is passed to",
                "# the trainer, which finishes its step, checkpoints and exits 143; the task is then requeued (a time limit does",
                "# not requeue by itself; a preempted task may already be) and its next start resumes from that checkpoint.",
                "child=",
                "on_term() {",
                '  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null',
                '  rc=143; [ -n "$child" ] && { wait "$child"; rc=$?; }',
                '  [ "$rc" -eq 143 ] && { scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" || true; }',
                '  exit "$rc"',
                "}",
                "trap on_term TERM",
                f'{shlex.quote(sys.executable)} -m fastft "$@" &',
                "child=$!",
                'wait "$child"']
        sh = d / f"{name}.sbatch"
        sh.write_text("\n".join(head + [""] + body) + "\n")
        levels.append(SlurmLevel(name, sh, members, after))
    return levels


def write_submit(levels: list[SlurmLevel], out: Path) -> Path:
    """``<out>/slurm/submit-<hash>.sh``: ``sbatch`` for each array in order, each with ``afterok`` on exactly the tasks
    it waits for; prints ``<level> <job id>`` per array (what ``--submit`` records)."""
    var = {L.name: f"J{i}" for i, L in enumerate(levels)}
    lines = ["#!/bin/bash", "# written by fastft sweep --backend slurm; run it once (or pass --submit)", "set -euo pipefail"]
    for L in levels:
        deps = ":".join(f"{ref[4:]}_{t}" if ref.startswith("job:") else f"${{{var[ref]}}}_{t}" for ref, t in L.after)
        dep = f"--dependency=afterok:{deps} " if deps else ""
        lines += [f"{var[L.name]}=$(sbatch --parsable {dep}{shlex.quote(str(L.script))} | cut -d';' -f1)",
                  f'echo "{L.name} ${{{var[L.name]}}}"']
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:8]
    p = out / "slurm" / f"submit-{digest}.sh"
    p.write_text("\n".join(lines) + "\n")
    return p


def submit_slurm(levels: list[SlurmLevel], out: Path) -> dict[str, str]:
    """Run the submit script; record each run's task (``<out>/slurm/submitted.json``: run id → ``<job id>_<task>``)
    so that a later sweep makes its arrays wait for these tasks instead of listing their runs again."""
    script = write_submit(levels, out)
    try:
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise FastFTError("bash not found") from None
    ids = dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)
    reg_path = out / "slurm" / "submitted.json"
    reg = json.loads(reg_path.read_text()) if reg_path.exists() else {}
    for L in levels:
        if L.name in ids:
            reg.update({run.run_id: f"{ids[L.name]}_{i}" for i, run in enumerate(L.runs)})
    reg_path.write_text(json.dumps(reg, indent=1) + "\n")
    if r.returncode:
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        if "sbatch: command not found" in r.stderr or "sbatch: not found" in r.stderr:
            err = "sbatch not found: run on a SLURM login node, or submit later with bash " + str(script)
        raise FastFTError(f"submitting {script} failed after {len(ids)} of {len(levels)} job arrays: {err}")
    return ids


def queued_submissions(out: Path) -> dict:
    """Runs of earlier ``--submit`` sweeps whose task is still queued or running (``squeue``): run id → ("job:<id>",
    task). Empty where there is no record or no ``squeue``."""
    reg_path = out / "slurm" / "submitted.json"
    if not reg_path.exists():
        return {}
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-u", os.environ.get("USER", "")], capture_output=True, text=True)
    except FileNotFoundError:
        return {}
    live = set(r.stdout.split()) if r.returncode == 0 else set()
    out_ = {}
    for run_id, task in json.loads(reg_path.read_text()).items():
        if task in live:
            job, _, t = task.rpartition("_")
            out_[run_id] = (f"job:{job}", int(t))
    return out_
