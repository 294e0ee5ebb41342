"""Figs. 8-9: conv5's filters as class detectors — on any model, its last conv layer (the spec's ``conv``: conv5 of
the AlexNets and VGG, ``layer4`` of a ResNet). A filter's response to an image is its spatial max (256 scores);
AP per (class, filter) as ``sklearn.metrics.average_precision_score`` on the val split; a model's sensitivity for a
class is the mean AP of its top-5 filters, and model A beats B on a class when its sensitivity is higher. Each run's
per-class sensitivities land in ``<run>/analysis/filters-<view tag>.json`` (the report pairs models by seed from
them: Fig. 9); with ``out``, the comparison of the models given, top-5 precision-recall curves and the matrix figure."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FastFTError
from ..files import write_json
from ..report.figures import beats_figure
from .extract import channels, features, load_model
from .registry import save
from .targets import each_view


def filter_ap(scores: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """AP[class, filter] of each filter's score as a detector of each class — scikit-learn's
    ``average_precision_score`` (Σ (R_t − R_{t−1}) P_t over distinct thresholds, ties in one step), computed for all
    classes at once per filter: one sort per filter instead of one sklearn call per (class, filter) pair."""
    n, nf = scores.shape
    onehot = np.zeros((n, classes), np.float64)
    onehot[np.arange(n), labels] = 1
    npos = onehot.sum(0)
    ap = np.full((classes, nf), np.nan)
    has = npos > 0
    for f in range(nf):
        order = np.argsort(-scores[:, f], kind="stable")
        s = scores[order, f]
        ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each distinct threshold
        tp = np.cumsum(onehot[order], axis=0)[ends]            # [thresholds, classes]
        precision = tp / (ends + 1)[:, None]
        recall = tp[:, has] / npos[has]
        dr = np.diff(np.vstack([np.zeros((1, recall.shape[1])), recall]), axis=0)
        ap[has, f] = (dr * precision[:, has]).sum(0)
    return ap


def sensitivity(ap: np.ndarray, top: int = 5) -> np.ndarray:
    """Per class: mean AP of the ``top`` best filters."""
    return np.sort(ap, axis=1)[:, -top:].mean(axis=1)


def filters(runs: list, view, device: str = "auto", out: str | Path | None = None, pr_classes: int = 3) -> dict:
    from ..data.views import open_view

    view = open_view(view) if not hasattr(view, "meta") else view
    sens, names, aps = {}, [], {}
    for run in runs:
        model, mf = load_model(run)
        layer = _conv_layer(mf)
        f, y = features(run, view, "val", (layer,), device=device)
        c5 = np.asarray(f[layer], np.float32)
        ch = channels(model, mf, layer)
        scores = c5.reshape(len(y), ch, -1).max(axis=2)
        ap = filter_ap(scores, y, view.num_classes)
        name = Path(run).name
        names.append(name)
        sens[name], aps[name] = sensitivity(ap), (ap, scores, y)
        save(run, "filters", {"analysis": "filters", "layer": layer, "view": str(view.path), "summary": {"mean_sensitivity": round(float(np.nanmean(sens[name])), 4)},
                               "sensitivity": sens[name].round(4).tolist(), "top5_filters": np.argsort(-ap, axis=1)[:, :5].tolist()}, view)
    beats = {a: {b: round(100 * float(np.mean(sens[a] > sens[b])), 2) for b in names if b != a} for a in names}
    res = {"analysis": "filters", "view": str(view.path), "models": names, "percent_of_classes_a_beats_b": beats,
           "mean_sensitivity": {k: round(float(np.nanmean(v)), 4) for k, v in sens.items()}}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "filters.json", res)
        _pr_figure(aps, view, out / "filters-pr.png", pr_classes)
        res["figure"] = str(out / "filters-pr.png")
        if len(names) > 1:  # Fig. 9 compares models: with one there is nothing to draw (its sensitivity is saved)
            beats_figure(beats, names, out / "filters-beats.png")
            res["beats_figure"] = str(out / "filters-beats.png")
    return res


def _conv_layer(mf) -> str:
    """The model's last conv layer, by the name its spec gives it."""
    from ..models import spec

    layer = spec(mf.model_name).conv
    if layer is None:
        raise FastFTError(f"{mf.path}: model {mf.model_name} names no conv layer (its ModelSpec's conv), which the "
                          "filters analysis reads")
    return layer


def _pr_figure(aps: dict, view, path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    models = list(aps)
    fig, axes = plt.subplots(len(models), k, figsize=(3.2 * k, 2.8 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        ap, scores, y = aps[m]
        for c in range(min(k, ap.shape[0])):
            ax = axes[i][c]
            for f in np.argsort(-ap[c])[:5]:
                p, r, _ = precision_recall_curve(y == c, scores[:, f])
                ax.plot(r, p, label=f"filter {f} AP {ap[c, f]:.2f}")
            ax.set(title=f"{m[:18]} · {view.classes[c]}", xlabel="recall", ylabel="precision")
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cli(a) -> None:
    """``fastft analyze filters``: the models of each target view compared (figures under ``--out``, one directory
    per view when there are several)."""
    for view, runs, several in each_view(a):
        out = a.out and (Path(a.out) / view.name if several else a.out)
        r = filters(runs, view, a.device, out=out)
        print(json.dumps({k: r[k] for k in ("mean_sensitivity", "percent_of_classes_a_beats_b")}, indent=1))
        if r.get("figure"):
            print(f"precision-recall curves: {r['figure']}")
        if r.get("beats_figure"):
            print(f"classes where A beats B (Fig. 9): {r['beats_figure']}")
        elif len(r["models"]) == 1:
            print(f"one model on {view.name}: its sensitivity is saved with the run; Fig. 9 (A beats B) needs two or "
                  "more models on the same view (e.g. the source and its fine-tune)")
