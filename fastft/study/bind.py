"""Binding a plan's runs to data: draw each seed's subsets (specs), resolve the views once (shared by equal content,
several processes for large ones), give each run its id and directory, and cost the whole (image-iterations)."""
from __future__ import annotations

import functools
import os
import json
import time
from pathlib import Path

from ..errors import FastFTError
from .plan import RunSpec


ILSVRC_TRAIN_PER_CLASS = 1281167 / 1000  # nominal, for cost estimates without a store


# ---------------------------------------------------------------- binding a plan to a store
def prepare(plan: dict, runs: list[RunSpec], store: str | None, out: Path, progress: bool = False,
            stores: dict | None = None) -> dict:
    """Make the specs (one per seed and store), resolve views, compute run ids and directories. ``store`` is the
    plan's store, ``stores`` the paths of the other stores its runs name (``{name: path}``, see the plan's
    ``stores``). Returns {(store name or None, seed): spec path}."""
    from ..config import build
    from ..data.subsets import load_spec
    from ..data.views import open_view
    from ..train.config import TrainConfig, resolve_device, run_dir_for, run_identity, view_path_for
    from .. import runs as runs_mod

    out.mkdir(parents=True, exist_ok=True)
    paths = _store_paths(plan, runs, store, stores or {})
    specs = {}
    for name in sorted({r.labels.get("store") for r in runs}, key=lambda n: n or ""):
        for seed in sorted({r.seed for r in runs if r.labels.get("store") == name}):
            specs[name, seed] = _make_spec(plan, name, seed, paths[name], out)
        if paths[name]:
            need = {(r.seed, r.overrides["set"]) for r in runs if r.labels.get("store") == name}
            _resolve_views({s: specs[name, s] for s, _ in need}, need, paths[name], out / "views", progress,
                           plan["name"] + (f"/{name}" if name else ""))
    by_key = {r.key: r for r in runs}
    for r in runs:
        where, store = r.labels.get("store"), paths[r.labels.get("store")]
        spec = load_spec(specs[where, r.seed])
        if r.overrides["set"] not in spec.sets:
            construction = plan["stores"][where]["construction"] if where else plan["construction"]
            raise FastFTError(f"run {r.key}: construction {construction} has no set {r.overrides['set']!r} (it has {list(spec.sets)})")
        r.overrides.update(spec=str(specs[where, r.seed]), out=str(out), name=r.key)
        if r.overrides.get("trackers"):  # W&B: one project per study, a group per plan, tagged by template and seed
            r.overrides.setdefault("tracker_project", Path(out).resolve().name)
            r.overrides.setdefault("tracker_group", plan["name"])
            r.overrides.setdefault("tracker_tags", [r.template, f"seed-{r.seed}"])
        if store:
            r.overrides["store"] = str(store)
        if r.labels["mode"] == "finetune" and r.labels.get("source_template"):
            src = by_key[r.deps[0]]
            r.labels["distance"] = _distance(load_spec(src.overrides["spec"]) if "spec" in src.overrides else spec,
                                             src.overrides["set"], spec, r.overrides["set"])
        if not store:  # estimate from nominal ILSVRC2012 counts; a pseudo id lets the cost count shared runs once
            cs = spec.sets[r.overrides["set"]]
            per_class = min(cs.cap or 1e9, ILSVRC_TRAIN_PER_CLASS)
            r.images_per_epoch = len(cs.classes) * max(per_class, int(r.overrides.get("augment_to", 0)))  # §4.6 copies
            from ..train.config import config_identity

            cfg = build(TrainConfig, r.overrides, f"run {r.key}")
            ident = config_identity(cfg)
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
            view.check_batch(cfg.batch_size)
        except FastFTError as e:
            raise FastFTError(f"run {r.key}: {e}") from None
        # §4.6 copies grow each class to augment_to (exact when no class already has more)
        r.images_per_epoch = max(view.split("train")["samples"], view.num_classes * cfg.augment_to)
        _, precision = resolve_device(cfg)
        src = by_key[r.deps[0]].run_id if r.deps else _file_source_id(cfg)
        r.run_id = runs_mod.run_id(run_identity(cfg, view.meta, precision, src))
        r.run_dir = run_dir_for(cfg, r.run_id)
        existing = sorted(out.glob(f"*-{r.run_id}"))
        if existing and r.run_dir not in existing:  # the same run made by another plan: reuse it, never train it twice
            r.run_dir = existing[0]
            r.overrides["name"] = existing[0].name[: -len(r.run_id) - 1]
    return specs


def _file_source_id(cfg) -> str | None:
    """A fine-tune whose source is a file or run directory given in the plan (``overrides: {source: …}``: a model.pt,
    a torchvision state dict), not one of its runs: the source's id as the trainer will compute it, read (and so
    checked) now, before any run starts."""
    if cfg.mode != "finetune" or not cfg.source:
        return None
    return _source_id(cfg.source, cfg.model)  # the path as the run is given it


@functools.lru_cache(maxsize=None)
def _source_id(path: str, model: str) -> str:
    from ..weights import read_source

    return read_source(path, model)[1]


def _store_paths(plan: dict, runs: list[RunSpec], store: str | None, stores: dict) -> dict:
    """{store name (None: the plan's own) → its path}, for the stores the runs read; a store a run names but the
    command line does not give is an error before any work (a dry run may go without paths)."""
    declared = plan.get("stores") or {}
    extra = set(stores) - set(declared)
    if extra:
        raise FastFTError(f"--store {sorted(extra)[0]}=…: plan {plan['name']} has no store {sorted(extra)[0]!r} "
                          f"(its stores: {', '.join(declared) or 'none'})")
    paths = {None: store, **{n: stores.get(n) for n in declared}}
    if not any(paths.values()):  # a dry run's estimate, from ILSVRC2012's class sizes
        return paths
    for name in sorted({r.labels.get("store") for r in runs}, key=lambda n: n or ""):
        if not paths[name]:
            raise FastFTError(f"plan {plan['name']}: runs read " + (f"store {name!r}: give --store {name}=PATH" if name
                              else "the plan's store: give --store PATH"))
    return paths


def _make_spec(plan: dict, name: str | None, seed: int, store: str | None, out: Path) -> Path:
    """The subset spec of store ``name`` (None: the plan's) for ``seed``, written once to ``out/specs/``."""
    from ..data.store import fill_store_params
    from ..data.subsets import load_spec, make

    st = plan["stores"][name] if name else {"construction": plan["construction"], "params": plan["params"]}
    what = f"plan {plan['name']}" + (f", store {name}" if name else "")
    from ..data.store import open_store

    vocabulary = open_store(store).vocabulary if store else None  # a folder store's own classes (None: ILSVRC2012's)
    try:
        spec = make(st["construction"], seed, vocabulary, **fill_store_params(dict(st.get("params") or {}), store, what))
    except FastFTError as e:
        raise FastFTError(f"{what}{f' (store {store})' if store else ''}: {e}") from None
    p = out / "specs" / (f"{plan['name']}-{name}-seed{seed}.json" if name else f"{plan['name']}-seed{seed}.json")
    if p.exists() and load_spec(p).hash != spec.hash:
        raise FastFTError(f"{p} exists with different content (plan changed?); use a new --out")
    spec.save(p)
    return p


POOL_AFTER_S = 2.0  # views are resolved by several processes when the first took this long


def _resolve_views(specs: dict, pairs: set, store: str, views_dir: Path, progress: bool, plan: str) -> None:
    """Resolve the views a plan needs that do not exist yet (each (seed, set) once), with a progress bar. Where one
    takes seconds (ILSVRC2012: a 500-class view is 640k samples), the rest are resolved by several processes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from ..util.progress import bar as progress_bar

    from ..util.children import die_with_parent
    from ..util.env import usable_cores
    from ..data.store import open_store
    from ..data.subsets import load_spec
    from ..data.views import shared_view, view_content

    todo = []
    for seed, name in sorted(pairs):
        if name in json.loads(Path(specs[seed]).read_text())["sets"]:  # else prepare names the mistake below
            if not (shared_view(specs[seed], name, store, views_dir, existing_only=True) / "view.json").exists():
                todo.append((str(specs[seed]), name))
    if not todo:
        return
    # views of equal content share their files (views.view_content): one of each is resolved, the others then link
    st, unique, same = open_store(store), {}, []
    for sp, name in todo:
        content = view_content(load_spec(sp), name, st, views_dir)
        if content in unique:
            same.append((sp, name))
        else:
            unique[content] = (sp, name)
    todo = list(unique.values())
    with progress_bar(total=len(todo) + len(same), unit="view", desc=f"{plan}: resolve views", enabled=progress,
                      dynamic_ncols=True) as bar:
        t = time.time()
        shared_view(*todo[0], store, views_dir)
        bar.update()
        rest = todo[1:]
        workers = min(len(rest), usable_cores(), 8)
        if workers < 2 or time.time() - t < POOL_AFTER_S:  # small views: a process pool would cost more than it saves
            rest, same = rest + same, []
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent,  # spawn: this
                                     initargs=(os.getpid(),)) as ex:  # process has torch loaded
                for f in as_completed([ex.submit(shared_view, sp, name, store, views_dir) for sp, name in rest]):
                    f.result()
                    bar.update()
            rest = []
        for sp, name in rest + same:
            shared_view(sp, name, store, views_dir)
            bar.update()


def _distance(source_spec, source_set: str, spec, target_set: str) -> float | None:
    """WordNet distance source → target, where both sets' classes are ILSVRC2012 wnids (None across vocabularies)."""
    from ..data.taxonomy import load

    targets, sources = tuple(spec.sets[target_set].classes), tuple(source_spec.sets[source_set].classes)
    if not all(c in load().label for c in targets + sources):
        return None
    return _wup_nearest(targets, sources)


@functools.lru_cache(maxsize=256)
def _wup_nearest(targets: tuple, sources: tuple) -> float:
    """Once per class sets: a §4.4 grid fine-tunes the same classes from the same source at many image counts."""
    from ..data.taxonomy import load

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
