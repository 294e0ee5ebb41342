"""The claim language, whole: what a plan's ``claims:`` may say (validated when a plan loads, before any work) and how
``fastft report`` checks each on the runs, paired by seed, with the evidence and a verdict. Torch-free.

Kinds: ``{a, b}`` (a beats b; a side may name a measure, ``ft-near:svm``, or be a difference of terms),
``{best, key, value}``, ``{gain, key, from, to}`` (with ``vs``: more than another template's gain) and
``{trend, [vs,] key, direction, [range]}``; see :func:`claims`. Significance: every 95 % t-interval on the claimed side of 0;
identical per-seed values give no interval and fall back to a one-sided sign test; fewer than ``MIN_SEEDS`` seeds at a
point give "too few seeds"."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..analysis import registry
from ..errors import FastFTError
from .collect import counted
from .stats import _ci, _t95


# the paper's findings a plan checks (fastft report.claims): a beats b, paired by seed at each common grid point;
# ``value`` of grid key ``key`` is ``best`` for a template; grid key ``key`` going ``from`` → ``to`` is a ``gain`` for
# a template (more than for ``vs``); a template's top-1 (or its gain over ``vs``) has a ``trend`` up / down along ``key``
CLAIM_KINDS = {("a", "b"), ("best", "key", "value"), ("gain", "key", "from", "to"), ("gain", "vs", "key", "from", "to"),
               ("trend", "key", "direction"), ("trend", "vs", "key", "direction"),
               ("trend", "key", "direction", "range"), ("trend", "vs", "key", "direction", "range")}  # range: [lo, hi] of key


SET_KEYS = ("classes", "images")  # trend keys read from instru-grid set names k<classes>_n<images> (Fig. 12, 14)


def claim_measures() -> dict[str, str]:
    """What an ``{a, b}`` claim may compare (``ft-near:svm``; top-1 by default) → the report's column holding it: the
    run's top-1 / top-5, and the measures each ``fastft analyze`` analysis offers (:mod:`fastft.analysis.registry`:
    SVM on fc7, a layer's probe, conv5 filters' mean sensitivity: the mean AP of each class's top-5 filters) with,
    ``_before``, its source model's on the same view (Table 3's "before fine-tuning", Fig. 10's dashed lines)."""
    return {"top1": "top1", "top5": "top5", **registry.measures()}


def check_claim(c, plan: dict, p: Path) -> None:
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
    rng = c.get("range")
    if "range" in c and not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                          for x in rng) and rng[0] < rng[1]):
        raise FastFTError(f"plan {p}: claim {c['text']!r}: range must be [lo, hi] with lo < hi (the trend's span of "
                          f"{c['key']!r}, ends included); got {rng!r}")
    from ..data.subsets import grid_set

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
        if not isinstance(values, list):  # a key that follows another (freeze: copy) is no axis
            raise FastFTError(f"plan {p}: claim {c['text']!r}: {c['key']!r} follows {values!r} in the grid of {t!r}; name {values!r}")
        if "trend" in c and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise FastFTError(f"plan {p}: claim {c['text']!r}: a trend needs numbers along {c['key']!r}; the grid of {t!r} has {values}")
        if rng and sum(rng[0] <= v <= rng[1] for v in values) < 2:
            raise FastFTError(f"plan {p}: claim {c['text']!r}: range {rng} holds fewer than 2 of {t}'s {c['key']} values {values}")
        for v in (c[k] for k in ("value", "from", "to") if k in c):
            if v not in values:
                raise FastFTError(f"plan {p}: claim {c['text']!r}: {c['key']}={v!r} is not in its grid {values}")


MIN_SEEDS = 3  # a claim checked on fewer seeds gets the verdict "too few seeds", whatever its numbers


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
      scratch shrinks with more images per class); ``range: [lo, hi]`` limits it to those values of ``key`` (Yosinski
      et al.: AnB falls with n from 3 on).

    An ``{a, b}`` side without a grid (a base network) is compared with the other at each of its grid points."""
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
                d = _minus(a, b).dropna()
                analysis = {x: a for side in (c["a"], c["b"]) for x in map(str.strip, side.split(" - "))
                            if (a := registry.offering(x.partition(":")[2]))}  # terms from `fastft analyze`: which one
                missing = [x for x in analysis if _measure(g, x).isna().all()]
                run = " and ".join(f"fastft analyze {k} RUNS_DIR --plan {plan}" for k in sorted({analysis[x].name for x in missing}))
                fastft, verdict = _paired_verdict([x for _, x in d.groupby(level="grid")],
                                                  empty=f"no analysis results for {', '.join(missing)}: run {run}" if missing else
                                                  "no seed with both finished",
                                                  digits=max([2, *(a.digits for a in analysis.values())]))
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
        return _minus(left, right)
    t, _, m = term.partition(":")
    col = claim_measures()[m or "top1"]
    rows = g[g["template"] == t]
    values = rows[col] if col in rows else pd.Series(float("nan"), index=rows.index)
    return pd.Series(values.to_numpy(dtype=float), index=pd.MultiIndex.from_arrays([rows["grid"], rows["seed"]])).groupby(level=[0, 1]).mean()


def _minus(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a − b`` per (grid point, seed); a side without a grid (a base network) is compared, seed by seed, at every
    grid point of the other (AnB+ at each n against baseB: Yosinski et al. Fig. 2)."""
    def gridless(x: pd.Series) -> bool:
        return len(x) > 0 and set(x.index.get_level_values(0)) == {""}

    def spread(x: pd.Series, like: pd.Series) -> pd.Series:
        by_seed = x.droplevel(0)
        return pd.Series(by_seed.reindex(like.index.get_level_values(1)).to_numpy(), index=like.index)

    if gridless(a) and len(b) and not gridless(b):
        a = spread(a, b)
    elif gridless(b) and len(a) and not gridless(a):
        b = spread(b, a)
    return a - b


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
    if c.get("range") and key in t:  # the span the claim is about (AnB falls with n beyond 3), ends included
        t = t[pd.to_numeric(t[key], errors="coerce").between(*c["range"])]
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
