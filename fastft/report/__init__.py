"""``fastft report``: run directories → tables (CSV + Markdown: mean ± std and 95 % CI over seeds, paper numbers
alongside; the study's comparisons paired by seed; each plan's claims checked) and figures. Torch-free.

The package, in the order of the flow: :mod:`.collect` (run directories → rows), :mod:`.stats` (over seeds),
:mod:`.claims` (the claim language: validation and verdicts), :mod:`.tables` (``report.md``), :mod:`.figures`.
Runs gathered from many machines report the same: only run directories are read.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..files import fsync_write
from .claims import claims, scoreboard
from .collect import collect, counted
from .figures import beats_figure, figures, gain_lines
from .stats import filter_beats, model_rank, paired, plan_report, summarize
from .tables import _problem_runs, markdown

__all__ = ["beats_figure", "claims", "collect", "counted", "figures", "filter_beats", "gain_lines", "markdown", "paired",
           "plan_report", "scoreboard", "summarize", "write_report"]


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
    fsync_write(out / "report.md", markdown(summary, runs, pairs, beats, found) if not summary.empty else
                                   "\n".join(["# fastft report", "", "no finished runs to report yet", "", *_problem_runs(runs.drop_duplicates("run_id"))]))
    figs = figures(summary, runs, curves, out) if not summary.empty else []
    for (plan, grid), b in beats.groupby(["plan", "grid"], sort=False):  # Fig. 9 as a matrix, mean over seeds
        order = (plan_report(runs[runs["plan"] == plan]) or {}).get("order", [])
        names = sorted(set(b["a"]) | set(b["b"]), key=model_rank(order))
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
