"""``report.md``: per plan, the summary table (paper numbers alongside), the plan's claims checked, the paired
comparisons it names and the analyses' tables (Table 3's SVM, Fig. 9, Fig. 10's probes); the runs that failed or did
not learn first."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..models import all_layers
from .claims import scoreboard
from .stats import _ci, paired, plan_report


def _pm(m, s) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.2f} ± " + ("–" if s is None or math.isnan(s) else f"{s:.2f}")  # –: one seed, no spread to show


def _probe_layers(s: pd.DataFrame) -> list[str]:
    """The layers with probe accuracies in the summary (after or before fine-tuning), in network order."""
    return [l for l in all_layers() if any(c in s and s[c].notna().any() for c in (f"probe_{l}", f"probe_before_{l}"))]


def _values(row, prefix: str, layers: list[str]) -> list[float]:
    return [getattr(row, f"{prefix}{l}", float("nan")) for l in layers]


def _label(r) -> str:
    """A summary row's name in the analysis tables: its template, and its grid point if it has one."""
    return f"{r.template} {r.grid or ''}".strip()


def _num(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.2f}"




def _features(runs: pd.DataFrame) -> str:
    """The layer(s) the SVM and the feature distance read for these runs' models (fc7 for the AlexNets and VGG, pool
    for ResNets: :attr:`fastft.models.ModelSpec.features`)."""
    from .. import models

    names = runs["model"].dropna().unique() if "model" in runs else ["alexnet"]
    return " / ".join(sorted({models.spec(m).feature_layer for m in names if m in models.REGISTRY} or {"fc7"}))


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
        lines += [f"## {plan if plan != '-' else 'Runs outside any plan (fastft train)'}", "", "| run | tested on | grid | seeds | top-1 | 95 % CI | top-5 | WordNet distance | paper top-1 | Δ vs paper |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in s.itertuples():
            paper = _pm(r.paper_top1, r.paper_std) if pd.notna(r.paper_std) else _num(r.paper_top1)  # Table 3 gives no std
            delta = f"{r.delta_vs_paper:+.2f}" if pd.notna(r.delta_vs_paper) else "–"
            dist = f"{r.distance:.3f}" if pd.notna(r.distance) else "–"
            lines.append(f"| {r.template} | {r.tested_on} | {r.grid or '–'} | {r.seeds} | {_pm(r.top1_mean, r.top1_std if r.seeds > 1 else None)} | {_ci(r.top1_ci95)} | "
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
        elif plan != "-" and plan_report(runs[runs["plan"] == plan]) is None:  # a plan that names none: none made up
            lines += ["No paired comparisons: the plan names none (`report: {pairs: [[a, b], …]}`; add it and run the sweep "
                      "again, which trains nothing that is finished and records the plan anew).", ""]
        if "svm_top1" in s and s["svm_top1"].notna().any():
            layer = _features(runs[runs["plan"] == plan])
            lines += [f"Linear SVM on {layer} (Table 3: before fine-tuning = the source model's {layer} on the target):", "",
                      "| run | SVM after | SVM before | paper after | paper before |", "|---|---:|---:|---:|---:|"]
            for r in s[s["svm_top1"].notna()].itertuples():
                cells = [getattr(r, k, float("nan")) for k in ("svm_top1", "svm_before_top1", "paper_svm", "paper_svm_before")]
                lines.append(f"| {_label(r)} | " + " | ".join(_num(x) for x in cells) + " |")
            lines.append("")
        if "feature_cosine_nearest" in s and s["feature_cosine_nearest"].notna().any():
            lines += ["Source → target distance (WordNet: 1 − Wu-Palmer to the nearest source class; features: 1 − cosine of "
                      f"class-mean {_features(runs[runs['plan'] == plan])} to the nearest source class, in the source model), mean over seeds:", "",
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
    damaged = one[one["damaged"].notna()] if "damaged" in one else one.iloc[:0]
    if not len(flagged) and not len(failed) and not len(damaged):
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
    if len(damaged):
        lines += [f"**{len(damaged)} run(s) have a summary their records contradict** (not counted as finished; re-running "
                  "each redoes its end from its last checkpoint):", "", "| run | plan | template | seed | why |", "|---|---|---|---:|---|"]
        lines += [f"| {r.run} | {r.plan} | {r.template} | {r.seed} | {r.damaged} |" for r in damaged.itertuples()]
        lines.append("")
    return lines


def _failure_reason(run_dir: str) -> str:
    from ..guard import failure

    return (failure(Path(run_dir)) or {}).get("reason", "?")
