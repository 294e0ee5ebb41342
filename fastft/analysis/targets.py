"""Which runs an analysis works on, on which views: a run trained on a target set on its own view, a source model on
the views of the runs fine-tuned from it (Table 3's "before fine-tuning"), and each fine-tune's (source model, source
view, target view) for the feature distance. Torch-free; also the grouping ``fastft analyze`` prints."""
from __future__ import annotations

from pathlib import Path

from ..errors import FastFTError
from ..runs import is_finished, locate, memberships, read_config, run_dirs


def _expand(paths: list, plan: str | None) -> tuple[list[tuple[Path, dict]], list[tuple[Path, dict]]]:
    """(the runs ``paths`` name, with their configs; every run beside them). ``paths`` are run directories, or
    directories of runs — their finished runs, only ``plan``'s if given."""
    runs, beside = [], {}
    for p in map(Path, paths):
        if (p / "config.json").exists():
            cfg = read_config(p)  # a damaged one is named first
            if not is_finished(p):  # named, not found: say so before looking for its views or its model file
                raise FastFTError(f"run {p} has not finished (no model to analyse): finish it with "
                                  f"`fastft train {p}/config.yaml`, or leave it out")
            runs.append((p, cfg))
            beside.update(run_dirs(p.parent))
        elif p.is_dir():
            here = run_dirs(p)
            found = [(d, cfg) for d, cfg in here if is_finished(d) and (plan is None or plan in _plans(d))]
            if not found:
                plans = sorted({q for d, _ in here for q in _plans(d)})
                theirs = (f" (its plans: {', '.join(plans)})" if plans else
                          " (its runs belong to no plan: they were trained by fastft train; leave --plan out)" if here else "")
                raise FastFTError(f"{p} holds no finished runs" + (f" of plan {plan!r}{theirs}" if plan else ""))
            runs += found
            beside.update(here)
        else:
            raise FastFTError(f"{p} is neither a run directory (config.json) nor a directory of runs")
    return runs, list(beside.items())


def analysis_targets(paths: list, view=None, plan: str | None = None) -> list[tuple[Path, list[Path]]]:
    """What ``fastft analyze`` works on: ``(view, runs)`` groups, in the order the runs come.

    ``paths`` are run directories, or directories of runs (their finished runs; only ``plan``'s if given). With
    ``view``, every run on it. Without, each run on its target view(s), as ``fastft report`` pairs results: a run
    trained on a target set on its own view; a source model on the views of the runs fine-tuned from it, found beside
    it (Table 3's "before fine-tuning"; with ``plan``, that plan's fine-tunes). So one call analyses a five-seed
    study, each seed's models on that seed's target, and ``filters`` / ``probes`` compare the models of one view."""
    from ..data.subsets import is_target_set

    runs, beside = _expand(paths, plan)
    if view is not None:
        return [(Path(view), [r for r, _ in runs])]
    tuned: dict | None = None  # source run -> views of the runs fine-tuned from it
    groups: dict = {}
    for r, cfg in runs:
        c = cfg["config"]
        if is_target_set(c.get("set")):
            views = [locate(c.get("view"), r, "views")]
        else:
            if tuned is None:
                tuned = {}
                for d, cd in beside:
                    src, v = locate(cd["config"].get("source"), d), locate(cd["config"].get("view"), d, "views")
                    if src is not None and v is not None and (plan is None or plan in _plans(d)):
                        tuned.setdefault(src.resolve(), []).append(v)
            views = sorted(set(tuned.get(r.resolve(), [])))
        views = [v for v in views if v is not None]
        if not views:
            raise FastFTError(f"{r} was trained on set {c.get('set')!r} and no run beside it was fine-tuned from it, "
                              "so its target view is unknown: give --view")
        for v in views:
            groups.setdefault(v.resolve(), []).append(r)
    return list(groups.items())


def distance_targets(paths: list, plan: str | None = None) -> list[tuple[Path, Path, Path]]:
    """``(source model, source view, target view)`` for each fine-tuned run among ``paths`` (as in
    :func:`analysis_targets`): the feature distance of a study's source→target pairs, measured in the source model's
    fc7 — what fine-tuning starts from. Each pair once."""
    runs, beside = _expand(paths, plan)
    configs = {d.resolve(): cfg for d, cfg in beside}
    out = {}
    for r, cfg in runs:
        src = locate(cfg["config"].get("source"), r)
        scfg = configs.get(src.resolve()) if src is not None else None
        if scfg is None and src is not None and (src / "config.json").exists():  # a source kept elsewhere
            scfg = read_config(src)
        sview = locate(scfg["config"].get("view"), src, "views") if scfg else None
        tview = locate(cfg["config"].get("view"), r, "views")
        if sview is not None and tview is not None:
            out.setdefault((src.resolve(), tview.resolve()), (src, sview, tview))
    if not out:
        raise FastFTError("no fine-tuned runs with their source runs and views among " + ", ".join(map(str, paths)) +
                          "; for other pairs give --view (target) and --source-view")
    return list(out.values())


def _plans(run: Path) -> set[str]:
    """The plans a run serves (its ``sweep.json``)."""
    return {m["plan"] for m in memberships(run) if m.get("plan")}


def each_view(a):
    """``fastft analyze <name> RUNS`` on each ``(view, runs, one of several)`` of :func:`analysis_targets`, saying
    which as it goes (``a``: the parsed arguments: ``runs``, ``view``, ``plan``)."""
    groups = analysis_targets(a.runs, a.view, a.plan)
    if a.view is None:
        print(f"{sum(len(r) for _, r in groups)} analyses of {len({x for _, r in groups for x in r})} runs on "
              f"{len(groups)} target views (each run's own, or its fine-tunes')")
    for view, runs in groups:
        if len(groups) > 1:
            print(f"== view {view}")
        yield view, runs, len(groups) > 1
