"""``fastft report``: run directories → tables (CSV + Markdown: mean ± std and 95 % CI over seeds, paper numbers alongside;
the study's comparisons paired by seed) and figures.

Reads only run directories (``config.json``, ``final.json``, ``metrics.jsonl``, ``sweep.json``), found recursively, so
runs gathered from many machines report the same. Plans come in the paper's order (the sections their ``claims:``
cite); each plan's findings are checked on its runs (:func:`claims`). Figures (PNG):

* ``curves-<plan>.png`` — test top-1 and train loss per epoch, mean over seeds, one line per run template / grid point
  (the paper's Fig. 4 for the LR plan, Fig. 5 for the source-size plan); a grid plan gets a row of panels per
  template, its grid points shaded in order;
* ``final-<plan>.png`` — final top-1, mean ± std over seeds, paper values as markers (Tables 2 and 3); a bar per row
  of the table, horizontal when there are more than ``MAX_COLUMNS``;
* ``grid-<plan>-<key>.png`` — top-1 against a grid key (freeze → Fig. 13, images per class → Fig. 12, lr → Fig. 4),
  a hue per template shaded by the other grid key (classes, augmentation);
* ``gains-<plan>.png`` — per images per class: fine-tuned − scratch, near − far (Fig. 12 e/f), augmented − not (Fig. 14);
* ``probes-<plan>.png`` — linear-probe accuracy per layer, one line per model, source models before fine-tuning
  dashed, and the per-layer gains (Fig. 10; after ``fastft analyze probes``);
* ``filters-<plan>.png`` (and ``filters.csv``) — % of classes where model A's conv5 filters are more sensitive than
  B's, mean over seeds (Fig. 9; after ``fastft analyze filters``);
* ``distance.png`` — fine-tuned top-1 against the WordNet source→target distance.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from .errors import FastFTError
from .runs import locate, memberships, read_metrics, run_dirs
from .subsets import grid_set, is_target_set

GAIN_PAIRS = (("ft-near", "scratch"), ("ft-far", "scratch"), ("ft-near", "ft-far"))  # the study's comparisons
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")  # probe columns in network order


def collect(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, one row per run × epoch)."""
    rows, curves = [], []
    for d, cfg in run_dirs(runs_dir):
        fin = json.loads((d / "final.json").read_text()) if (d / "final.json").exists() else {}
        for sw in memberships(d):  # one row per plan the run serves
            _collect_one(d, cfg, cfg["config"], sw, fin, rows, curves)
    if not rows:
        raise FastFTError(f"no run directories (config.json) under {runs_dir}")
    runs = pd.DataFrame(rows)
    return runs.sort_values("plan", key=lambda c: c.map(_plan_sections(runs)), kind="stable").reset_index(drop=True), pd.DataFrame(curves)


def counted(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that enter means, comparisons and claims: finished ones, without those the learning guard flagged
    "did not learn" unless the report was asked to include them (``counted`` set by :func:`write_report`)."""
    if "counted" in runs:
        return runs[runs["counted"]]
    return runs[runs["finished"] & runs["learned"]] if "learned" in runs else runs[runs["finished"]]


def _plan_sections(runs: pd.DataFrame) -> dict:
    """Plans in the paper's order: each by the first section (``§4.3``) its claims cite; others after, as found."""
    out = {}
    for plan, g in runs.groupby("plan", sort=False):
        refs = [c.get("ref", "") for x in g.get("claims", pd.Series(dtype=object)).dropna()[:1] for c in json.loads(x)]
        secs = [tuple(int(n) for n in m.split(".")) for ref in refs for m in re.findall(r"§(\d+(?:\.\d+)*)", ref)]
        out[plan] = min(secs) if secs else (float("inf"),)
    return out


def _collect_one(d: Path, cfg: dict, c: dict, sw: dict, fin: dict, rows: list, curves: list) -> None:
    paper = sw.get("paper") or {}
    grid = sw.get("grid") or {}
    row = {"run": d.name, "path": str(d), "run_id": cfg["run_id"], "plan": sw.get("plan", "-"),
           "template": sw.get("template", c.get("name") or c["mode"]), "grid": ", ".join(f"{k}={v}" for k, v in grid.items()),
           "seed": c["seed"], "mode": c["mode"], "set": c.get("set"), "classes": cfg.get("num_classes"),
           "distance": sw.get("distance"), "finished": bool(fin), "failed": (d / "failed.json").exists() and not fin,
           "learned": fin.get("learned", True) is not False, "flags": "; ".join(fin.get("flags") or []),
           "top1": fin.get("top1"), "top5": fin.get("top5"), "best_top1": fin.get("best_top1"), "epochs": fin.get("epochs"),
           "wall_secs": fin.get("wall_secs"), "img_per_s": fin.get("img_per_s"),
           "paper_top1": paper.get("top1"), "paper_std": paper.get("std"), "paper_ref": paper.get("ref"),
           "paper_svm": paper.get("svm"), "paper_svm_before": paper.get("svm_before")}
    row.update({f"paper_probe_{k}": v for k, v in (paper.get("probes") or {}).items()})
    row.update({f"paper_probe_before_{k}": v for k, v in (paper.get("probes_before") or {}).items()})
    row["source_template"] = sw.get("source_template")
    row["paper_filters_beats"] = json.dumps(paper["filters_beats"]) if paper.get("filters_beats") else None
    row["claims"] = json.dumps(sw["claims"]) if sw.get("claims") else None
    row.update({f"grid_{k}": v for k, v in grid.items()})
    if (ki := grid_set(grid.get("set"))) is not None:  # instru-grid sets: classes x images per class (Fig. 12, 14)
        row.update(grid_classes=ki[0], grid_images=ki[1])
    row.update(_analyses(d, c.get("view"), c.get("source")))
    rows.append(row)
    for m in read_metrics(d):
        curves.append({"run": d.name, "plan": row["plan"], "template": row["template"], "grid": row["grid"],
                       "seed": row["seed"], **{k: m.get(k) for k in ("epoch", "top1", "train_loss", "lr")}})


def _analyses(run_dir: Path, view: str | None, source: str | None) -> dict:
    """Analysis results of a run on its own view (``fastft analyze``): SVM on fc7 and probe accuracy per layer (and
    the source model's on the same view = "before fine-tuning": Table 3, Fig. 10's dashed lines), mean filter
    sensitivity, feature distance."""
    out = {}
    view = locate(view, run_dir, "views")
    if view is None:
        return out
    from .store import view_tag

    try:
        tag = view_tag(view)
    except (FastFTError, KeyError, OSError):
        return out
    out["view_tag"] = tag
    if (run_dir / "analysis" / f"filters-{tag}.json").exists():  # per-class sensitivities: Fig. 9 pairs models by seed
        out["filters_file"] = str(run_dir / "analysis" / f"filters-{tag}.json")
    prefixes = {"svm": "", "probes": "probe_", "filters": "", "distance": ""}
    for name, pre in prefixes.items():
        p = run_dir / "analysis" / f"{name}-{tag}.json"
        if p.exists():
            out.update({f"{pre}{k}": v for k, v in json.loads(p.read_text())["summary"].items()})
    source = locate(source, run_dir)
    if source is not None:
        p = source / "analysis" / f"svm-{tag}.json"
        if p.exists():
            out["svm_before_top1"] = json.loads(p.read_text())["summary"]["svm_top1"]
        p = source / "analysis" / f"probes-{tag}.json"
        if p.exists():
            out.update({f"probe_before_{k}": v for k, v in json.loads(p.read_text())["summary"].items()})
        p = source / "analysis" / f"filters-{tag}.json"
        if p.exists():
            out["filters_before_file"] = str(p)
            out["filters_before_mean_sensitivity"] = json.loads(p.read_text())["summary"].get("mean_sensitivity")
        p = source / "analysis" / f"distance-{tag}.json"  # measured in the source model (fastft analyze distance)
        if p.exists() and "feature_cosine_nearest" not in out:
            out["feature_cosine_nearest"] = json.loads(p.read_text())["summary"]["feature_cosine_nearest"]
    return out


def _natural(text) -> tuple:
    """Sort key reading the numbers in a label as numbers: ``set=k100_n30`` before ``set=k100_n120``, ``lr=0.0005``
    before ``lr=0.001``."""
    return tuple((0, float(t), "") if t[0].isdigit() else (1, 0, t) for t in re.split(r"(\d+(?:\.\d+)?)", str(text or "")) if t)


def _in_order(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """Rows by plan (in the order first seen), then ``cols``, names read naturally (see :func:`_natural`)."""
    if df.empty:
        return df
    plans = {p: i for i, p in enumerate(dict.fromkeys(df["plan"]))}
    key = lambda c: c.map(plans) if c.name == "plan" else c.map(_natural) if c.name in ("template", "grid") else c  # noqa: E731
    return df.sort_values(["plan", *cols], key=key, kind="stable").reset_index(drop=True)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    done = counted(runs)
    if done.empty:
        return pd.DataFrame()
    done = done.assign(top5=done["top5"].where(done["classes"] > 5))  # top-5 of <= 5 classes is 100 % by construction
    g = done.groupby(["plan", "template", "grid"], sort=False, dropna=False)
    extra = {c: (c, "mean") for c in done.columns
             if c in ("svm_top1", "svm_before_top1", "mean_sensitivity", "filters_before_mean_sensitivity", "feature_cosine_nearest")
             or c.startswith("probe_")}
    extra.update({c: (c, "first") for c in done.columns if c.startswith(("paper_svm", "paper_probe_")) or c == "source_template"})
    out = g.agg(tested_on=("set", "first"), seeds=("seed", "nunique"), top1_mean=("top1", "mean"), top1_std=("top1", "std"), top5_mean=("top5", "mean"),
                distance=("distance", "mean"), paper_top1=("paper_top1", "first"), paper_std=("paper_std", "first"),
                paper_ref=("paper_ref", "first"), **extra).reset_index()
    out["top1_std"] = out["top1_std"].fillna(0.0)
    n = g["top1"].count().to_numpy()
    out["top1_ci95"] = [_t95(k) * sd / math.sqrt(k) for k, sd in zip(n, out["top1_std"])]
    out["delta_vs_paper"] = out["top1_mean"] - out["paper_top1"]
    return _in_order(out, "template", "grid")


def _t95(n: int) -> float:
    """Half-width factor of a two-sided 95 % Student-t interval from n values (nan below 2)."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n >= 2 else float("nan")


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """The study's comparisons (``GAIN_PAIRS``: fine-tuned from near / far vs scratch, near vs far), paired by seed at
    each grid point of a plan: a seed is one class draw, so the per-seed difference removes the draw's difficulty.
    Mean difference, its 95 % t-interval half-width and the seeds where the first model wins."""
    done = counted(runs)
    rows = []
    for (plan, grid), g in done.groupby(["plan", "grid"], sort=False, dropna=False):
        by = g.pivot_table(index="seed", columns="template", values="top1", aggfunc="mean")
        for a, b in GAIN_PAIRS:
            if a in by and b in by:
                d = (by[a] - by[b]).dropna()
                if len(d):
                    sd = d.std() if len(d) > 1 else float("nan")
                    rows.append({"plan": plan, "grid": grid, "a": a, "b": b, "seeds": len(d), "delta_mean": d.mean(),
                                 "delta_ci95": _t95(len(d)) * sd / math.sqrt(len(d)), "a_wins": int((d > 0).sum())})
    out = pd.DataFrame(rows, columns=["plan", "grid", "a", "b", "seeds", "delta_mean", "delta_ci95", "a_wins"])
    out["pair"] = [GAIN_PAIRS.index((a, b)) for a, b in zip(out["a"], out["b"])]
    return _in_order(out, "pair", "grid").drop(columns="pair")  # a comparison's rows together, along the grid


def claims(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's findings a plan lists (``claims:``), checked on its finished runs, paired by seed:

    * ``{a, b}``: a beats b at each grid point both have — "holds" where every 95 % interval of the paired difference
      is above 0, "not significant" where the means are but an interval is not, else how many points it holds at;
      a side may name a measure other than top-1 (``ft-near:svm`` vs ``ft-near:svm_before``: ``sweep.claim_measures``)
      or be a difference (near's lead over far before fine-tuning vs after: Fig. 10 (b));
    * ``{best, key, value}``: along grid key ``key`` (averaged over any other keys), ``value`` has the best mean top-1;
    * ``{gain, key, from, to}``: the template at ``key=to`` beats itself at ``key=from`` (the other keys fixed); with
      ``vs``: by more than ``vs`` gains from the same change (§4.6: augmentation helps scratch more than fine-tuning);
    * ``{trend, [vs,] key, direction}``: the template's top-1 (or its gain over ``vs``, paired by seed) goes ``up`` or
      ``down`` along ``key``: per seed and series (the other keys fixed), Spearman's ρ between the key and the value;
      "holds" where the mean ρ of every series is significantly in that direction (§4.4: the gain of fine-tuning over
      scratch shrinks with more images per class)."""
    import numpy as np

    cols = ["plan", "claim", "ref", "fastft", "verdict"]
    done = counted(runs)
    out = []
    if "claims" not in done:
        return pd.DataFrame(out, columns=cols)
    for plan, g in done.groupby("plan", sort=False):
        listed = g["claims"].dropna()
        for c in json.loads(listed.iloc[0]) if len(listed) else []:
            grid = g["grid_" + c["key"]] if "key" in c and "grid_" + c["key"] in g else None
            others = [k for k in g.columns if k.startswith("grid_") and k not in ("grid_" + c.get("key", ""), "grid_classes", "grid_images")]
            if "a" in c:
                a, b = _measure(g, c["a"]), _measure(g, c["b"])
                d = (a - b).dropna()
                analysis = {x.strip(): m[1] for side in (c["a"], c["b"]) for x in side.split(" - ")
                            if (m := re.search(r":(svm|probe|filters)", x))}  # terms from `fastft analyze`: which one
                missing = [x for x in analysis if _measure(g, x).isna().all()]
                run = " and ".join(f"fastft analyze {k.replace('probe', 'probes')} RUNS_DIR --plan {plan}"
                                   for k in sorted({analysis[x] for x in missing}))
                fastft, verdict = _paired_verdict([x for _, x in d.groupby(level="grid")],
                                                  empty=f"no analysis results for {', '.join(missing)}: run {run}" if missing else
                                                  "no seed with both finished",
                                                  digits=3 if ":filters" in c["a"] + c["b"] else 2)  # an AP in [0, 1]
            elif "gain" in c:
                d = _gain(g, c["gain"], c, grid, others)
                if c.get("vs"):  # the gain exceeds the other template's, paired by seed and grid point
                    d = (d - _gain(g, c["vs"], c, grid, others)).dropna()
                levels = [n for n in d.index.names if n != "seed"]
                fastft, verdict = _paired_verdict([x.dropna() for _, x in d.groupby(level=levels)] if levels else [d.dropna()])
            elif "trend" in c:
                fastft, verdict = _trend(g, c)
            else:
                t = g[g["template"] == c["best"]]
                means = t.groupby("grid_" + c["key"])["top1"].mean() if grid is not None and len(t) else pd.Series(dtype=float)
                if means.empty:
                    fastft, verdict = "no finished runs", "no data"
                else:
                    by_seed = t.pivot_table(index="seed", columns="grid_" + c["key"], values="top1").dropna()
                    wins = int((by_seed.idxmax(axis=1) == c["value"]).sum()) if len(by_seed) else 0
                    best = means.idxmax()
                    fastft = (f"best {c['key']}={_g(best)} ({means[best]:.2f}); {c['key']}={_g(c['value'])}: "
                              f"{means.get(c['value'], np.nan):.2f}; best in {wins}/{len(by_seed)} seeds")
                    verdict = "holds" if best == c["value"] else "does not hold"
                    if len(by_seed) < MIN_SEEDS:
                        verdict = f"too few seeds ({len(by_seed)}; {MIN_SEEDS} needed)"
            out.append([plan, c["text"], c.get("ref", ""), fastft, verdict])
    return pd.DataFrame(out, columns=cols)


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def scoreboard(found: pd.DataFrame) -> str:
    """One line over all plans' claims: how many get each verdict (as the tables word them)."""
    v = found["verdict"]
    parts = [("holds", v == "holds"), ("same direction, not significant", v == "same direction, not significant"),
             ("holds at some grid points", v.str.startswith("holds at")), ("does not hold", v.str.startswith("does not hold")),
             ("too few seeds", v.str.startswith("too few seeds")), ("no data yet", v == "no data")]
    return f"**The paper's findings, checked: {len(found)}** — " + " · ".join(f"{w}: {int(m.sum())}" for w, m in parts if m.any()) + "."


def _measure(g: pd.DataFrame, term: str) -> pd.Series:
    """An ``{a, b}`` claim's side ``template[:measure]`` (``sweep.claim_measures``), or the difference of two
    (``near:x - far:x``), per (grid point, seed)."""
    if " - " in term:  # a - b - c = (a - b) - c
        left, right = (_measure(g, x.strip()) for x in term.rsplit(" - ", 1))
        return left - right
    from .sweep import claim_measures

    t, _, m = term.partition(":")
    col = claim_measures()[m or "top1"]
    rows = g[g["template"] == t]
    values = rows[col] if col in rows else pd.Series(float("nan"), index=rows.index)
    return pd.Series(values.to_numpy(dtype=float), index=pd.MultiIndex.from_arrays([rows["grid"], rows["seed"]])).groupby(level=[0, 1]).mean()


def _gain(g: pd.DataFrame, template: str, c: dict, grid: pd.Series | None, others: list[str]) -> pd.Series:
    """A template's top-1 at ``key=to`` minus at ``key=from``, per seed and setting of the other grid keys."""
    t = g[g["template"] == template]
    rows = t[grid.loc[t.index].isin([c["from"], c["to"]])] if grid is not None else t.iloc[:0]
    pivot = rows.pivot_table(index=[k for k in others if rows[k].notna().any()] + ["seed"], columns="grid_" + c["key"], values="top1") \
        if len(rows) else pd.DataFrame()
    return pivot[c["to"]] - pivot[c["from"]] if {c["from"], c["to"]} <= set(pivot) else pd.Series(dtype=float)


def _trend(g: pd.DataFrame, c: dict) -> tuple[str, str]:
    """A ``trend`` claim on one plan's finished runs → (what fastft found, the verdict); see :func:`claims`."""
    key = "grid_" + c["key"]
    t = g[g["template"].isin([c["trend"], c.get("vs")])]
    if key not in t or t[key].isna().all():
        return "no finished runs along " + c["key"], "no data"
    derived = ["grid_classes", "grid_images"] if c["key"] in ("classes", "images") else []
    others = [k for k in t.columns if k.startswith("grid_") and k != key and t[k].notna().any()
              and not (derived and k == "grid_set") and (k in derived or k not in ("grid_classes", "grid_images"))]
    idx = t[others].astype(str) if others else pd.DataFrame(index=t.index)
    v = t.assign(_series=idx.apply(", ".join, axis=1) if others else "").pivot_table(
        index=["_series", "seed", key], columns="template", values="top1")
    if c["trend"] not in v or (c.get("vs") and c["vs"] not in v):
        return "no finished runs of " + " and ".join(x for x in (c["trend"], c.get("vs")) if x), "no data"
    y = (v[c["trend"]] - v[c["vs"]] if c.get("vs") else v[c["trend"]]).dropna()
    points = []
    for _, series in y.groupby(level="_series", sort=False):
        rho = [s.droplevel(["_series", "seed"]).reset_index().corr(method="spearman").iloc[0, 1]
               for _, s in series.groupby(level="seed") if s.index.get_level_values(key).nunique() >= 2]
        points.append(pd.Series([r for r in rho if r == r], dtype=float))
    word = "increasing" if c["direction"] == "up" else "decreasing"
    return _paired_verdict(points, sign=1 if c["direction"] == "up" else -1, name="ρ ", ahead=(word, word), unit="series",
                           empty=f"no seed with two values of {c['key']}")


MIN_SEEDS = 3  # a claim checked on fewer seeds gets the verdict "too few seeds", whatever its numbers


def _significant(d: pd.Series) -> bool:
    """Whether per-seed values ``d`` are significantly above 0: the 95 % t-interval of their mean, above 0. Values
    that are all equal (differences of quantised accuracies, or a trend's ρ = ±1, often are) give a zero-width
    interval, which is no evidence: then the exact one-sided sign test of the claimed direction at 5 % (every seed
    above 0 and 0.5^n < 0.05, i.e. at least 5 seeds, the paper's count)."""
    n = len(d)
    if n < 2:
        return False
    sd = d.std()
    if sd == 0 or not math.isfinite(sd):
        return bool((d > 0).all()) and 0.5 ** n < 0.05
    return d.mean() - _t95(n) * sd / math.sqrt(n) > 0


def _paired_verdict(points: list, sign: int = 1, name: str = "", ahead: tuple[str, str] = ("ahead", "above 0"),
                    unit: str = "grid points", empty: str = "no seed with both finished", digits: int = 2) -> tuple[str, str]:
    """Per grid point (or series), the per-seed values (differences a − b; a trend's ρ) → (what fastft found, the
    verdict): significant where the 95 % t-interval is on the claimed side of 0 (above it; below it for ``sign=-1``)."""
    points = [d * sign for d in points if len(d)]
    if not points:
        return empty, "no data"
    stats = [(d.mean(), _t95(len(d)) * d.std() / math.sqrt(len(d)) if len(d) > 1 else float("nan"), int((d > 0).sum()), len(d))
             for d in points]
    up = sum(m > 0 for m, *_ in stats)
    sig = sum(_significant(d) for d in points)
    against = sum(_significant(-d) for d in points)  # significantly the other way
    if len(stats) == 1:
        m, ci, wins, n = stats[0]
        fastft = f"{name}{sign * m:+.{digits}f} ({_ci(ci, digits)}, 95 % CI), {ahead[0]} in {wins}/{n} seeds"
    else:
        lo, hi = sorted((sign * min(x[0] for x in stats), sign * max(x[0] for x in stats)))
        fastft = f"{name}{lo:+.{digits}f} … {hi:+.{digits}f} over {len(stats)} {unit}; {ahead[1]} at {up}, significantly at {sig}"
    fewest = min(n for *_, n in stats)
    if fewest < MIN_SEEDS:  # an interval from two seeds says little, and claims are checked to be trusted
        return fastft, f"too few seeds ({fewest}; {MIN_SEEDS} needed)"
    verdict = ("holds" if sig == len(stats) else "same direction, not significant" if up == len(stats)
               else f"holds at {up}/{len(stats)} {unit}" if up
               else "does not hold" + (" (significantly the other way)" if against == len(stats) else ""))
    return fastft, verdict


MODEL_ORDER = ("ft-near", "ft-far", "near", "far", "scratch")  # Fig. 9's models: A before B in a pair


def filter_beats(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 9: for each pair of models on one target — the fine-tuned ones, their source models before fine-tuning
    (``fastft analyze filters`` on the target) and scratch — the percentage of the target's classes where A's conv5
    filters are more sensitive than B's (mean AP of the top-5 filters), per seed, then mean ± std over seeds."""
    import numpy as np

    cols = ["plan", "grid", "a", "b", "seeds", "beats_mean", "beats_std", "b_beats_mean", "paper"]
    done = counted(runs) if "filters_file" in runs or "filters_before_file" in runs else runs.iloc[:0]
    groups: dict = {}  # (plan, seed, target view) -> (grid, {model: per-class sensitivity})
    for r in done.itertuples():
        for f, name in ((getattr(r, "filters_file", None), r.template),
                        (getattr(r, "filters_before_file", None), r.source_template)):
            if isinstance(f, str) and isinstance(name, str):
                grid, models = groups.setdefault((r.plan, r.seed, r.view_tag), (r.grid, {}))
                models.setdefault(name, np.array(json.loads(Path(f).read_text())["sensitivity"], dtype=float))
    rank = lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), _natural(m))  # noqa: E731
    values: dict = {}
    for (plan, _, _), (grid, models) in groups.items():
        names = sorted(models, key=rank)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                values.setdefault((plan, grid, a, b), []).append((100 * float(np.mean(models[a] > models[b])),
                                                                 100 * float(np.mean(models[b] > models[a]))))  # ties: neither
    paper = {(r.plan, r.template): json.loads(r.paper_filters_beats) for r in runs.itertuples()
             if isinstance(getattr(r, "paper_filters_beats", None), str)}
    rows = []
    for (plan, grid, a, b), v in values.items():
        pa, pb = paper.get((plan, a), {}).get(b), paper.get((plan, b), {}).get(a)
        ab = [x for x, _ in v]
        rows.append([plan, grid, a, b, len(v), float(np.mean(ab)), float(np.std(ab, ddof=1)) if len(v) > 1 else float("nan"),
                     float(np.mean([y for _, y in v])), pa if pa is not None else (100 - pb if pb is not None else float("nan"))])
    out = pd.DataFrame(rows, columns=cols)
    out["ra"], out["rb"] = out["a"].map(rank), out["b"].map(rank)
    return _in_order(out, "grid", "ra", "rb").drop(columns=["ra", "rb"])


def beats_figure(beats: dict, names: list[str], path: Path, title: str = "") -> Path:
    """Fig. 9 as a matrix: the percentage of the target's classes where model A (row) has the more sensitive conv5
    filters than model B (column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.array([[beats.get(a, {}).get(b, np.nan) for b in names] for a in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2.5), 1.0 * len(names) + 1.8))
    im = ax.imshow(m, vmin=0, vmax=100, cmap="RdBu_r")
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j and not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=9)
    short = [n[:20] for n in names]
    ax.set_xticks(range(len(names)), short, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), short, fontsize=8)
    ax.set(xlabel="model B", ylabel="model A")
    ax.set_title(title or "% of classes where A's conv5 filters are more sensitive (Fig. 9)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def _pm(m, s) -> str:
    return "–" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.2f} ± {0 if s is None or math.isnan(s) else s:.2f}"


def _probe_layers(s: pd.DataFrame) -> list[str]:
    """The layers with probe accuracies in the summary (after or before fine-tuning), in network order."""
    return [l for l in LAYERS if any(c in s and s[c].notna().any() for c in (f"probe_{l}", f"probe_before_{l}"))]


def _values(row, prefix: str, layers: list[str]) -> list[float]:
    return [getattr(row, f"{prefix}{l}", float("nan")) for l in layers]


def _label(r) -> str:
    """A summary row's name in the analysis tables: its template, and its grid point if it has one."""
    return f"{r.template} {r.grid or ''}".strip()


def _num(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.2f}"


def _ci(x: float, digits: int = 2) -> str:
    return "–" if pd.isna(x) else f"±{x:.{digits}f}"


def markdown(summary: pd.DataFrame, runs: pd.DataFrame, pairs: pd.DataFrame | None = None, beats: pd.DataFrame | None = None,
             found: pd.DataFrame | None = None) -> str:
    one = runs.drop_duplicates("run_id")  # a run serving several plans has a row in each
    lines = ["# fastft report", "", f"{int(one['finished'].sum())} finished runs, {int(one['failed'].sum())} failed, "
             f"{int((~one['finished'] & ~one['failed']).sum())} unfinished. Top-1 % on the validation images of the "
             "set a run trained on (\"tested on\": the target, or a source model's own classes), mean ± sample std over seeds, and the 95 % confidence interval of the mean (Student t); "
             "top-5 is left out (–) for sets of 5 classes or fewer; "
             "paper = Li, Herranz, Jiang 2019 (AlexNet on ILSVRC2012 subsets).", ""]
    lines += _problem_runs(one)
    if found is not None and len(found):
        lines += [scoreboard(found) + " Each plan's are listed under it; `claims.csv` has them all.", ""]
    pairs = paired(runs) if pairs is None else pairs
    for plan, s in summary.groupby("plan", sort=False):
        lines += [f"## {plan}", "", "| run | tested on | grid | seeds | top-1 | 95 % CI | top-5 | WordNet distance | paper top-1 | Δ vs paper |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s.itertuples():
            paper = _pm(r.paper_top1, r.paper_std) if pd.notna(r.paper_std) else _num(r.paper_top1)  # Table 3 gives no std
            delta = f"{r.delta_vs_paper:+.2f}" if pd.notna(r.delta_vs_paper) else "–"
            dist = f"{r.distance:.3f}" if pd.notna(r.distance) else "–"
            lines.append(f"| {r.template} | {r.tested_on} | {r.grid or '–'} | {r.seeds} | {_pm(r.top1_mean, r.top1_std)} | {_ci(r.top1_ci95)} | "
                         f"{_num(r.top5_mean)} | {dist} | {paper} | {delta} |")
        lines.append("")
        cl = found[found["plan"] == plan] if found is not None else []
        if len(cl):
            lines += ["The paper's findings, checked on these runs (paired by seed):", "",
                      "| paper finds | ref | fastft | verdict |", "|---|---|---|---|"]
            lines += [f"| {r.claim} | {r.ref or '–'} | {r.fastft} | **{r.verdict}** |" for r in cl.itertuples()]
            lines.append("")
        pp = pairs[pairs["plan"] == plan]
        if len(pp):
            lines += ["Paired by seed (the same class draw): difference in top-1, its 95 % CI, seeds where the first wins:", "",
                      "| comparison | grid | seeds | Δ top-1 | 95 % CI | wins |", "|---|---|---:|---:|---:|---:|"]
            for r in pp.itertuples():
                lines.append(f"| {r.a} − {r.b} | {r.grid or '–'} | {r.seeds} | {r.delta_mean:+.2f} | {_ci(r.delta_ci95)} | "
                             f"{r.a_wins}/{r.seeds} |")
            lines.append("")
        if "svm_top1" in s and s["svm_top1"].notna().any():
            lines += ["Linear SVM on fc7 (Table 3: before fine-tuning = the source model's fc7 on the target):", "",
                      "| run | SVM after | SVM before | paper after | paper before |", "|---|---:|---:|---:|---:|"]
            for r in s[s["svm_top1"].notna()].itertuples():
                cells = [getattr(r, k, float("nan")) for k in ("svm_top1", "svm_before_top1", "paper_svm", "paper_svm_before")]
                lines.append(f"| {_label(r)} | " + " | ".join(_num(x) for x in cells) + " |")
            lines.append("")
        if "feature_cosine_nearest" in s and s["feature_cosine_nearest"].notna().any():
            lines += ["Source → target distance (WordNet: 1 − Wu-Palmer to the nearest source class; features: 1 − cosine of "
                      "class-mean fc7 to the nearest source class, in the source model), mean over seeds:", "",
                      "| run | WordNet | features | top-1 |", "|---|---:|---:|---:|"]
            lines += [f"| {_label(r)} | {r.distance:.3f} | {r.feature_cosine_nearest:.4f} | {_num(r.top1_mean)} |"
                      for r in s[s["feature_cosine_nearest"].notna()].itertuples()]
            lines.append("")
        fb = beats[beats["plan"] == plan] if beats is not None else []
        if len(fb):
            lines += ["conv5 filter sensitivity (Fig. 9): the % of the target's classes where A's top-5 filters have the higher "
                      "mean AP than B's (source models: before fine-tuning, on the same target), mean ± std over seeds:", "",
                      "| A | B | grid | seeds | A more sensitive (%) | paper |", "|---|---|---|---:|---:|---:|"]
            for r in fb.itertuples():
                lines.append(f"| {r.a} | {r.b} | {r.grid or '–'} | {r.seeds} | {_pm(r.beats_mean, r.beats_std)} | {_num(r.paper)} |")
            lines.append("")
        layers = _probe_layers(s)
        if layers:
            lines += ["Linear probes per layer (top-1 %, Fig. 10; \"before fine-tuning\" = the source model's features on the "
                      "same target; the paper's values where it states them):", "",
                      "| run | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
            for r in s.itertuples():
                for prefix, name in (("probe_", _label(r)), ("probe_before_", f"{_label(r)}, before fine-tuning ({r.source_template or 'source'})")):
                    for pre, suffix in ((prefix, ""), (f"paper_{prefix}", " (paper)")):
                        vals = _values(r, pre, layers)
                        if any(pd.notna(x) for x in vals):
                            lines.append(f"| {name}{suffix} | " + " | ".join(_num(x) for x in vals) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def _problem_runs(one: pd.DataFrame) -> list[str]:
    """Runs that failed (a non-finite loss) or that the learning guard flagged, named before any table."""
    flagged = one[one["finished"] & ~one["learned"]] if "learned" in one else one.iloc[:0]
    failed = one[one["failed"]]
    if not len(flagged) and not len(failed):
        return []
    kept = "counted in the tables below (--include-flagged)" if "counted" in one and one.loc[flagged.index, "counted"].all() \
        else "left out of every mean, comparison and claim below (fastft report --include-flagged counts them)"
    lines = []
    if len(flagged):
        lines += [f"**{len(flagged)} run(s) did not learn**, {kept}:", "", "| run | plan | template | seed | why |", "|---|---|---|---:|---|"]
        lines += [f"| {r.run} | {r.plan} | {r.template} | {r.seed} | {r.flags} |" for r in flagged.itertuples()]
        lines.append("")
    if len(failed):
        lines += [f"**{len(failed)} run(s) failed** (not finished; a sweep re-run retries them):", "",
                  "| run | plan | template | seed | why |", "|---|---|---|---:|---|"]
        lines += [f"| {r.run} | {r.plan} | {r.template} | {r.seed} | {_failure_reason(r.path)} |" for r in failed.itertuples()]
        lines.append("")
    return lines


def _failure_reason(run_dir: str) -> str:
    from .guard import failure

    return (failure(Path(run_dir)) or {}).get("reason", "?")


def figures(summary: pd.DataFrame, runs: pd.DataFrame, curves: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    made = []
    for plan in summary["plan"].unique():
        c = curves[curves["plan"] == plan]
        if not c.empty:
            made.append(_curves_figure(c, plan, out, plt))
        s = summary[summary["plan"] == plan]
        # source models are tested on their own classes, not the target's: a lighter bar says so
        sets = runs[runs["plan"] == plan].groupby(["template", "grid"])["set"].first()
        on_target = [is_target_set(sets.get((t, g))) for t, g in zip(s["template"], s["grid"])]
        colors = ["#4c72b0" if x else "#a6bddb" for x in on_target]
        pos = range(len(s))
        if len(s) <= MAX_COLUMNS:
            fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(s) + 2), 4))
            ax.bar(pos, s["top1_mean"], yerr=s["top1_std"], capsize=4, color=colors)
            ax.set_xticks(pos, [f"{t}\n{g}".strip() for t, g in zip(s["template"], s["grid"])], fontsize=7)
            ax.set(ylabel="top-1 (%)")
        else:  # a grid plan: one row per template × grid point, read top to bottom like the table
            fig, ax = plt.subplots(figsize=(7, 0.2 * len(s) + 1.2))
            ax.barh(pos, s["top1_mean"], xerr=s["top1_std"], capsize=2, color=colors, height=0.7)
            ax.set_yticks(pos, [f"{t}  {g}".strip() for t, g in zip(s["template"], s["grid"])], fontsize=6)
            ax.set_ylim(len(s) - 0.5, -0.5)
            ax.set(xlabel="top-1 (%)")
        handles = [Patch(color="#4c72b0", label="fastft, on the target")]
        if not all(on_target):
            handles.append(Patch(color="#a6bddb", label="fastft, source model on its own classes"))
        if s["paper_top1"].notna().any():
            xy = (pos, s["paper_top1"]) if len(s) <= MAX_COLUMNS else (s["paper_top1"], pos)
            handles.append(ax.scatter(*xy, color="#dd8452", zorder=3, label="paper", marker="D"))
        ax.set_title(f"{plan}: final accuracy (mean ± std over seeds)")
        below = 0.14 if len(s) <= MAX_COLUMNS else 0.55 / (0.2 * len(s))  # under the x label (axes fraction)
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -below), ncol=len(handles), frameon=False)
        fig.tight_layout()
        made.append(_save(fig, out / f"final-{plan}.png"))
        r = counted(runs)
        r = r[r["plan"] == plan]
        made += _grid_figures(r, plan, out, plt)
        if _probe_layers(s):
            made.append(_probes_figure(s, plan, out, plt))
    ft = counted(runs)
    ft = ft[ft["distance"].notna()]
    if len(ft):  # WordNet distance; and the feature distance where `fastft analyze distance` measured it
        axes_x = [("distance", "WordNet distance source→target (1 − Wu-Palmer to nearest source class)")]
        if "feature_cosine_nearest" in ft and ft["feature_cosine_nearest"].notna().any():
            axes_x.append(("feature_cosine_nearest", "feature distance (1 − cosine of fc7 class means, source model)"))
        fig, axes = plt.subplots(1, len(axes_x), figsize=(6 * len(axes_x), 4), squeeze=False)
        plans = list(dict.fromkeys(ft["plan"]))
        for ax, (col, label) in zip(axes[0], axes_x):
            for p, g in ft.groupby("plan", sort=False):  # a hue per plan, a shade per template (a run per point)
                templates = sorted(set(g["template"]), key=_natural)
                for j, (t, gt) in enumerate(sorted(g.groupby("template"), key=lambda x: _natural(x[0]))):
                    ax.scatter(gt[col], gt["top1"], s=14, alpha=0.7, color=_family(plans.index(p), j, len(templates)),
                               label=f"{p}: {t}")
            ax.set(xlabel=label, ylabel="fine-tuned top-1 (%)", title="accuracy vs source–target distance")
        _legend_beside(axes[0][-1])
        fig.tight_layout()
        made.append(_save(fig, out / "distance.png"))
    return made


def _probes_figure(s: pd.DataFrame, plan: str, out: Path, plt) -> Path:
    """Fig. 10. (a) Linear-probe accuracy per layer: a solid line per model on its target, dashed in the same colour
    for its source model before fine-tuning, the paper's values as hollow markers. (b) Where the plan has ft-near and
    ft-far with both: near − far before and after fine-tuning, and after − before for each."""
    layers = _probe_layers(s)
    rows = {r.template: r for r in s.itertuples() if not r.grid}
    gains = [] if not {"ft-near", "ft-far"} <= set(rows) else [
        (label, [a - b for a, b in zip(_values(rows[x], px, layers), _values(rows[y], py, layers))], style)
        for label, x, px, y, py, style in (
            ("near − far, after fine-tuning", "ft-near", "probe_", "ft-far", "probe_", "-"),
            ("near − far, before fine-tuning", "ft-near", "probe_before_", "ft-far", "probe_before_", "--"),
            ("near: after − before", "ft-near", "probe_", "ft-near", "probe_before_", ":"),
            ("far: after − before", "ft-far", "probe_", "ft-far", "probe_before_", "-."))]
    gains = [g for g in gains if any(pd.notna(v) for v in g[1])]
    fig, axes = plt.subplots(1, 2 if gains else 1, figsize=(12 if gains else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for r in s.itertuples():
        line = None
        for prefix, style, name in (("probe_", "-", _label(r)), ("probe_before_", "--", f"{r.source_template or 'source'} (before {r.template})")):
            vals = _values(r, prefix, layers)
            if any(pd.notna(x) for x in vals):
                (line,) = ax.plot(layers, vals, linestyle=style, marker="o", label=name, **({"color": line.get_color()} if line else {}))
            paper = _values(r, f"paper_{prefix}", layers)
            if line is not None and any(pd.notna(x) for x in paper):
                ax.plot(layers, paper, linestyle="none", marker="D" if prefix == "probe_" else "s", mfc="none",
                        color=line.get_color(), label=f"{name} (paper)")
    ax.set(xlabel="layer", ylabel="linear probe top-1 (%)", title=f"{plan}: layer probes (Fig. 10 a)")
    if gains:
        _legend_beside(ax)
    else:
        ax.legend(fontsize=7)
    if gains:
        ax = axes[0][1]
        for label, vals, style in gains:
            ax.plot(layers, vals, linestyle=style, marker="o", label=label)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="layer", ylabel="gain (points)", title=f"{plan}: gains per layer (Fig. 10 b)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / f"probes-{plan}.png")


MAX_COLUMNS = 16  # bars side by side in final-<plan>.png; a plan with more (a grid) gets one row per bar
MAX_LINES = 10    # lines on one curves panel; a plan with more (a grid) gets a row of panels per template


def _curves_figure(c: pd.DataFrame, plan: str, out: Path, plt) -> Path:
    """Test top-1 and train loss per epoch, mean over seeds with ± std shaded. A grid plan (more than ``MAX_LINES``
    lines) gets one row per template, its grid points coloured in order (light → dark), the legend beside."""
    import matplotlib

    lines = list(c.groupby(["template", "grid"], sort=False).size().index)
    if len(lines) <= MAX_LINES:
        rows = [(None, lines)]
    else:  # templates without a grid (a plan's sources) share a row; each other template has its own
        per = {t: sorted([x for x in lines if x[0] == t], key=lambda x: _natural(x[1])) for t in sorted({x[0] for x in lines})}
        rows = [("", [x[0] for x in per.values() if len(x) == 1])] + [(t, x) for t, x in per.items() if len(x) > 1]
        rows = [r for r in rows if r[1]]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4 if len(rows) == 1 else 2.8 * len(rows)), squeeze=False)
    for ax, (t, keys) in zip(axes, rows):
        cmap = matplotlib.colormaps["viridis_r"]
        for i, (tt, g) in enumerate(keys):
            by = c[(c["template"] == tt) & (c["grid"] == g)].groupby("epoch")
            m, sd = by[["top1", "train_loss"]].mean(), by[["top1", "train_loss"]].std().fillna(0)
            color = cmap(0.15 + 0.85 * i / max(1, len(keys) - 1)) if t else None  # a template's grid: light → dark
            for a, k, hi in zip(ax, ("top1", "train_loss"), (100, None)):  # ± std within 0-100 %, loss >= 0
                (line,) = a.plot(m.index, m[k], color=color, lw=1.2, label=(g if t else f"{tt} {g}").strip())
                a.fill_between(m.index, (m[k] - sd[k]).clip(0, hi), (m[k] + sd[k]).clip(0, hi), color=line.get_color(),
                               alpha=0.15, linewidth=0)
        name = f"{plan}: " if t is None else f"{t}: " if t else "sources: "
        ax[0].set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{name}test accuracy (mean ± std over seeds)")
        ax[1].set(xlabel="epoch", ylabel="train loss", title=f"{name}training loss")
        if t is None:
            ax[0].legend(fontsize=7)
        else:
            ax[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, ncol=1 + len(keys) // 16)
    if len(rows) > 1:
        fig.suptitle(plan)
    fig.tight_layout()
    return _save(fig, out / f"curves-{plan}.png")


def _legend_beside(ax) -> None:
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _grid_figures(r: pd.DataFrame, plan: str, out: Path, plt) -> list[Path]:
    """Accuracy against each numeric grid key, one line per template (and per value of the other grid keys);
    gains between templates (Fig. 12 e/f) and from augmentation (Fig. 14) against images per class."""
    made = []
    keys = [k for k in r.columns if k.startswith("grid_") and k != "grid_set" and r[k].notna().any()
            and pd.api.types.is_numeric_dtype(r[k])]
    for key in [k for k in keys if r[k].nunique() >= 2 and k != "grid_classes"]:
        rr = r[r[key].notna()]
        others = [k for k in keys if k != key and rr[k].nunique() >= 2]  # a constant key (classes=100) names nothing
        fig, ax = plt.subplots(figsize=(6.5, 4))
        templates = sorted(set(rr["template"]))
        for lab, g in rr.groupby(["template"] + others, sort=True, dropna=False):
            lab = lab if isinstance(lab, tuple) else (lab,)
            name = " ".join([str(lab[0])] + [f"{o[5:]}={v:g}" for o, v in zip(others, lab[1:]) if pd.notna(v)])
            m = g.groupby(key)["top1"].agg(["mean", "std"]).fillna(0)
            ax.errorbar(m.index, m["mean"], yerr=m["std"], capsize=3, label=name,
                        **{"marker": "o", **_grid_style(rr, others, templates.index(lab[0]), lab[1:])})
        ax.set(xlabel=key[5:], ylabel="top-1 (%)", title=f"{plan}: accuracy vs {key[5:]}")
        if key in ("grid_lr", "grid_images"):
            ax.set_xscale("log")
        _legend_beside(ax)
        fig.tight_layout()
        made.append(_save(fig, out / f"grid-{plan}-{key[5:]}.png"))
    x = "grid_images" if "grid_images" in keys else None
    if x is None:
        return made
    lines = gain_lines(r, keys, x)
    if not lines:
        return made
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, gain) in enumerate(lines):
        gain = gain.dropna()
        constant = [n for n in gain.index.names if n != x and gain.index.get_level_values(n).nunique() <= 1]
        gain = gain.droplevel(constant) if constant else gain  # classes=100 throughout names nothing
        extra = [n for n in gain.index.names if n != x]
        groups = list(gain.groupby(level=extra, dropna=False)) if extra else [((), gain)]
        for j, (lab, g) in enumerate(groups):
            lab = lab if isinstance(lab, tuple) else (lab,)
            suffix = " ".join(f"{n[5:]}={v:g}" for n, v in zip(extra, lab) if pd.notna(v))
            g = g.droplevel(extra) if extra else g
            ax.plot(g.index, g.values, marker="o", color=_family(i, j, len(groups)), label=f"{name} {suffix}".strip())
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="training images per class", ylabel="top-1 gain (points)", xscale="log", title=f"{plan}: gains")
    _legend_beside(ax)
    fig.tight_layout()
    made.append(_save(fig, out / f"gains-{plan}.png"))
    return made


FAMILIES = ("Blues", "Oranges", "Greens", "Reds", "Purples", "Greys", "RdPu", "YlOrBr")  # one hue per template / comparison


def _family(i: int, j: int = 0, n: int = 1):
    """Colour ``j`` of ``n`` in hue family ``i``: a template's (or a comparison's) lines read as one family, the
    values of its other grid keys as shades, light → dark."""
    import matplotlib

    return matplotlib.colormaps[FAMILIES[i % len(FAMILIES)]](0.75 if n <= 1 else 0.3 + 0.7 * (j + 1) / n)


def gain_lines(r: pd.DataFrame, keys: list[str], x: str) -> list[tuple[str, pd.Series]]:
    """The gains figure's lines: (name, mean gain indexed by the other grid keys and ``x``) for the study's
    comparisons (``GAIN_PAIRS``) and, for templates run with and without it, augmented − not. Each gain is paired by
    seed (the same class draw), then averaged: while seeds are still training, a difference of means over different
    seeds would mix draws."""
    by_seed = r.groupby(["template"] + [k for k in keys if k != x] + [x, "seed"], dropna=False)["top1"].mean()
    mean_over_seeds = lambda d: d.dropna().groupby(level=[n for n in d.index.names if n != "seed"], dropna=False).mean()  # noqa: E731
    lines = []
    templates = set(r["template"])
    for a, b in GAIN_PAIRS:
        if a in templates and b in templates:
            lines.append((f"{a} − {b}", mean_over_seeds(by_seed.xs(a, level="template") - by_seed.xs(b, level="template"))))
    if "grid_augment_to" in keys:  # templates run with and without augmentation (a plan's sources have no grid)
        for t, g in r[r["grid_augment_to"].notna()].groupby("template"):
            if g["grid_augment_to"].nunique() == 2:
                lo, hi = sorted(g["grid_augment_to"].unique())
                mt = by_seed.xs(t, level="template")
                lines.append((f"{t}: augmented − not",
                              mean_over_seeds(mt.xs(hi, level="grid_augment_to") - mt.xs(lo, level="grid_augment_to"))))
    return lines


def _grid_style(rr: pd.DataFrame, others: list[str], t: int, values: tuple) -> dict:
    """A grid figure's line style: template ``t``'s hue, shaded by the first other grid key's value; a second key's
    value as the marker."""
    if not others:
        return {"color": _family(t)}
    levels = sorted(rr[others[0]].dropna().unique())
    style = {"color": _family(t, levels.index(values[0]) if pd.notna(values[0]) else len(levels) - 1, len(levels))}
    if len(others) > 1 and pd.notna(values[1]):
        style["marker"] = "osD^v<>"[sorted(rr[others[1]].dropna().unique()).index(values[1]) % 7]
    return style


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(runs_dir: str | Path, out: str | Path, include_flagged: bool = False) -> dict:
    """Tables and figures of the runs under ``runs_dir`` into ``out``. Runs flagged "did not learn" are listed and,
    unless ``include_flagged``, kept out of means, comparisons and claims."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, curves = collect(runs_dir)
    runs["counted"] = runs["finished"] & (runs["learned"] | include_flagged)
    curves = curves[curves["run"].isin(set(runs.loc[runs["counted"], "run"]))] if len(curves) else curves
    summary = summarize(runs)
    runs.drop(columns=["path"]).to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    pairs = paired(runs)
    pairs.to_csv(out / "paired.csv", index=False)
    tables = [out / "report.md", out / "summary.csv", out / "paired.csv", out / "runs.csv"]
    beats = filter_beats(runs)
    if len(beats):
        beats.to_csv(out / "filters.csv", index=False)
        tables.append(out / "filters.csv")
    found = claims(runs)
    if len(found):
        found.to_csv(out / "claims.csv", index=False)
        tables.append(out / "claims.csv")
    (out / "report.md").write_text(markdown(summary, runs, pairs, beats, found) if not summary.empty else
                                   "\n".join(["# fastft report", "", "no finished runs to report yet", "", *_problem_runs(runs.drop_duplicates("run_id"))]))
    figs = figures(summary, runs, curves, out) if not summary.empty else []
    for (plan, grid), b in beats.groupby(["plan", "grid"], sort=False):  # Fig. 9 as a matrix, mean over seeds
        names = sorted(set(b["a"]) | set(b["b"]), key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), _natural(m)))
        m = {a: {} for a in names}
        for r in b.itertuples():
            m[r.a][r.b], m[r.b][r.a] = r.beats_mean, r.b_beats_mean
        name = f"filters-{plan}" + (f"-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', grid)}" if grid else "")
        figs.append(beats_figure(m, names, out / f"{name}.png", f"{plan}{' ' + grid if grid else ''}: % of classes where A's conv5 "
                                                                 f"filters are more sensitive (Fig. 9; mean over {b['seeds'].max()} seeds)"))
    one = runs.drop_duplicates("run_id")  # runs, not (run, plan) rows
    return {"runs": len(one), "finished": int(one["finished"].sum()), "flagged": int((one["finished"] & ~one["learned"]).sum()),
            "failed": int(one["failed"].sum()), "tables": [str(t) for t in tables],
            "figures": [str(f) for f in figs], "summary": summary, "findings": scoreboard(found) if len(found) else None}
