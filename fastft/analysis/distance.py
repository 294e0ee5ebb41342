"""A feature-based source→target distance next to the WordNet one: the mean over target classes of the cosine
distance from the class's mean fc7 feature to the nearest source class mean (val split features, one model: for a
study's pairs the source model, what fine-tuning starts from). The result, ``<run>/analysis/distance-<target view
tag>.json``, gives the report ``feature_cosine_nearest`` for the runs fine-tuned from that model on that target."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FastFTError
from .extract import features, run_model_spec
from .registry import save
from .targets import distance_targets


def feature_distance(run, source_view, target_view, device: str = "auto", layer: str | None = None) -> dict:
    """Mean over target classes of the cosine distance from the target class's mean feature to the nearest source
    class mean (val split features of one model; ``layer``: default the model's pooled features, fc7 for AlexNets),
    next to the WordNet distance of the same class sets."""
    layer = layer or run_model_spec(run).feature_layer
    from ..data.views import open_view
    from ..data.taxonomy import load

    sv, tv = open_view(source_view), open_view(target_view)
    fs, ys = features(run, sv, "val", (layer,), device=device)
    ft, yt = features(run, tv, "val", (layer,), device=device)
    mean = lambda f, y, k: np.stack([np.asarray(f[layer][y == c], np.float32).mean(0) for c in range(k)])  # noqa: E731
    ms, mt = mean(fs, ys, sv.num_classes), mean(ft, yt, tv.num_classes)
    unit = lambda m: m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)  # noqa: E731
    cos = unit(mt) @ unit(ms).T
    feat = float(np.mean(1 - cos.max(axis=1)))
    h = load()  # a store's own class names have no WordNet distance (None)
    wn = h.distance(tv.classes, sv.classes)["wup_nearest"] if all(c in h.label for c in tv.classes + sv.classes) else None
    res = {"analysis": "distance", "layer": layer, "source_view": str(source_view), "target_view": str(target_view),
           "summary": {"feature_cosine_nearest": round(feat, 4), "wordnet_wup_nearest": None if wn is None else round(wn, 4)}}
    save(run, "distance", res, tv)
    return res


def cli(a) -> None:
    """``fastft analyze distance``: each fine-tuned run's pair (or ``--view`` and ``--source-view`` for the first run)."""
    if bool(a.source_view) != bool(a.view):
        raise FastFTError("analyze distance takes both --view (the target) and --source-view, or neither (each "
                          "fine-tuned run's source and target, measured in the source model)")
    pairs = [(a.runs[0], a.source_view, a.view)] if a.view else distance_targets(a.runs, a.plan)
    for model, sview, tview in pairs:
        res = feature_distance(model, sview, tview, a.device)
        r = res["summary"]
        wn = "–" if r["wordnet_wup_nearest"] is None else f"{r['wordnet_wup_nearest']:.4f}"  # – : not wnids
        print(f"{Path(model).name}: {Path(sview).name} -> {Path(tview).name}: feature ({res['layer']} cosine, nearest) "
              f"{r['feature_cosine_nearest']:.4f}, WordNet {wn}")
