"""The report's statistics over seeds: per-template summaries (mean ± std, 95 % t-interval), the study's comparisons
paired by seed (the pairs its plan names: ``report: {pairs: …}``), and Fig. 9's % of classes where one model's conv5
filters beat another's. Rows are ordered as people read them (plans in the paper's order, models in the order the plan
gives, numbers in names read as numbers)."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..analysis import registry
from .collect import counted


def _natural(text) -> tuple:
    """Sort key reading the numbers in a label as numbers: ``set=k100_n30`` before ``set=k100_n120``, ``lr=0.0005``
    before ``lr=0.001``."""
    return tuple((0, float(t), "") if t[0].isdigit() else (1, 0, t) for t in re.split(r"(\d+(?:\.\d+)?)", str(text or "")) if t)


def plan_report(rows: pd.DataFrame) -> dict | None:
    """A plan's ``report:`` settings as its runs recorded them (``sweep.json``): ``{"pairs": [(a, b), …], "order":
    [template, …]}``; None for runs of a plan without them (or recorded before plans had them)."""
    listed = rows["report"].dropna() if "report" in rows else []
    if not len(listed):
        return None
    spec = json.loads(listed.iloc[0])
    return {"pairs": [tuple(x) for x in spec.get("pairs") or []], "order": list(spec.get("order") or [])}


def pairs_of(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """The comparisons a plan names (none without a ``report:`` key)."""
    return (plan_report(rows) or {}).get("pairs", [])


def model_rank(order) -> Callable[[str], tuple]:
    """Sort key of template names: those in ``order`` first, in its order; the others after, by name."""
    order = list(order)
    return lambda m: (order.index(m) if m in order else len(order), _natural(m))


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
    averaged = registry.averaged()  # the analyses' columns (fastft.analysis.registry)
    extra = {c: (c, "mean") for c in done.columns if c in averaged}
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
    """The comparisons each plan names (``report: {pairs: [[a, b], …]}``, e.g. fine-tuned from near / far vs scratch,
    near vs far), paired by seed at each grid point of the plan: a seed is one class draw, so the per-seed difference
    removes the draw's difficulty. Mean difference, its 95 % t-interval half-width and the seeds where a wins."""
    done = counted(runs)
    pairs = {plan: pairs_of(g) for plan, g in runs.groupby("plan", sort=False)}
    rows = []
    for (plan, grid), g in done.groupby(["plan", "grid"], sort=False, dropna=False):
        by = g.pivot_table(index="seed", columns="template", values="top1", aggfunc="mean")
        for a, b in pairs[plan]:
            if a in by and b in by:
                d = (by[a] - by[b]).dropna()
                if len(d):
                    sd = d.std() if len(d) > 1 else float("nan")
                    rows.append({"plan": plan, "grid": grid, "a": a, "b": b, "seeds": len(d), "delta_mean": d.mean(),
                                 "delta_ci95": _t95(len(d)) * sd / math.sqrt(len(d)), "a_wins": int((d > 0).sum())})
    out = pd.DataFrame(rows, columns=["plan", "grid", "a", "b", "seeds", "delta_mean", "delta_ci95", "a_wins"])
    out["pair"] = [pairs[p].index((a, b)) for p, a, b in zip(out["plan"], out["a"], out["b"])]
    return _in_order(out, "pair", "grid").drop(columns="pair")  # a comparison's rows together, along the grid


def filter_beats(runs: pd.DataFrame) -> pd.DataFrame:
    """Fig. 9: for each pair of models on one target — the fine-tuned ones, their source models before fine-tuning
    (``fastft analyze filters`` on the target) and scratch — the percentage of the target's classes where A's conv5
    filters are more sensitive than B's (mean AP of the top-5 filters), per seed, then mean ± std over seeds; A before
    B in the order the plan gives (``report: {order: …}``)."""
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
    rank = {plan: model_rank((plan_report(g) or {}).get("order", [])) for plan, g in runs.groupby("plan", sort=False)}
    values: dict = {}
    for (plan, _, _), (grid, models) in groups.items():
        names = sorted(models, key=rank[plan])
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
    out["ra"], out["rb"] = ([rank[p](m) for p, m in zip(out["plan"], out[x])] for x in ("a", "b"))
    return _in_order(out, "grid", "ra", "rb").drop(columns=["ra", "rb"])

def _ci(x: float, digits: int = 2) -> str:
    return "–" if pd.isna(x) else f"±{x:.{digits}f}"
