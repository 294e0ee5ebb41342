"""Run directories → the report's rows: one per (run, plan it serves), with its final numbers, plan membership,
the paper's numbers and its ``fastft analyze`` results, and one per (run, epoch) for the curves. Reads only run
directories (``config.json``, ``final.json``, ``metrics.jsonl``, ``sweep.json``, ``analysis/``), found recursively."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from ..analysis import registry
from ..errors import FastFTError
from ..runs import locate, memberships, read_final, read_metrics, run_dirs
from ..data.subsets import grid_set


def collect(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, one row per run × epoch)."""
    rows, curves = [], []
    for d, cfg in run_dirs(runs_dir):
        damaged: list[str] = []
        fin = read_final(d, say=damaged.append) or {}  # a damaged summary counts as not finished, and is named
        for sw in memberships(d):  # one row per plan the run serves
            _collect_one(d, cfg, cfg["config"], sw, fin, rows, curves)
            rows[-1]["damaged"] = "; ".join(damaged) or None
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
           "seed": c["seed"], "mode": c["mode"], "model": c.get("model", "alexnet"), "set": c.get("set"), "classes": cfg.get("num_classes"),
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
    row["report"] = json.dumps(sw["report"]) if sw.get("report") is not None else None  # the plan's report: key
    row.update({f"grid_{k}": v for k, v in grid.items()})
    if (ki := grid_set(grid.get("set"))) is not None:  # instru-grid sets: classes x images per class (Fig. 12, 14)
        row.update(grid_classes=ki[0], grid_images=ki[1])
    row.update(_analyses(d, c.get("view"), c.get("source")))
    rows.append(row)
    for m in read_metrics(d):
        curves.append({"run": d.name, "plan": row["plan"], "template": row["template"], "grid": row["grid"],
                       "seed": row["seed"], **{k: m.get(k) for k in ("epoch", "top1", "train_loss", "lr")}})


def _analyses(run_dir: Path, view: str | None, source: str | None) -> dict:
    """The ``fastft analyze`` results of a run on its own view, and its source model's on the same view ("before
    fine-tuning": Table 3, Fig. 10's dashed lines), as the columns each analysis's registration names
    (:mod:`fastft.analysis.registry`: SVM on fc7, probe accuracy per layer, mean filter sensitivity, feature distance).
    A column the run's own result gives is not replaced by its source model's."""
    out = {}
    view = locate(view, run_dir, "views")
    if view is None:
        return out
    from ..data.views import view_tag

    try:
        tag = view_tag(view)
    except (FastFTError, KeyError, OSError):
        return out
    out["view_tag"] = tag
    source = locate(source, run_dir)
    for before, d in ((False, run_dir), (True, source)):
        for a in registry.reported() if d is not None else []:
            p = registry.result_file(d, a.name, tag)
            if not p.exists():
                continue
            if a.keep_file:
                out[f"{a.name}_before_file" if before else f"{a.name}_file"] = str(p)
            for col, v in registry.columns(json.loads(p.read_text())["summary"], a, before).items():
                out.setdefault(col, v)
    return out
