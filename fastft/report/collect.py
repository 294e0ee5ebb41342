"""Run directories → the report's rows: one per (run, plan it serves), with its final numbers, plan membership,
the paper's numbers and its ``fastft analyze`` results, and one per (run, epoch) for the curves. Reads only run
directories (``config.json``, ``final.json``, ``metrics.jsonl``, ``sweep.json``, ``analysis/``), found recursively."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from ..errors import FastFTError
from ..runs import locate, memberships, read_final, read_metrics, run_dirs
from ..subsets import grid_set


def collect(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run, one row per run × epoch)."""
    rows, curves = [], []
    for d, cfg in run_dirs(runs_dir):
        fin = read_final(d) or {}  # a damaged summary counts as not finished
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
    from ..store import view_tag

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
