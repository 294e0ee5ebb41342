"""Table 3's linear SVM on fc7 (on any model: its pooled features, the spec's ``features`` layer — fc7 for the
AlexNets and VGG, ``pool`` for ResNets): L2-normalised features, ``sklearn.svm.LinearSVC(C=1.0)``, trained on the view's
train split and tested on its val split (a fixed recipe, so numbers compare across runs); the result
``<run>/analysis/svm-<view tag>.json`` gives the report ``svm_top1`` (``svm_before_top1`` for a source model)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .extract import features, run_model_spec
from .registry import save
from .targets import each_view


def svm(run, view, device: str = "auto", layer: str | None = None) -> dict:
    layer = layer or run_model_spec(run).feature_layer
    tr, ytr = features(run, view, "train", (layer,), device=device)
    te, yte = features(run, view, "val", (layer,), device=device)
    acc = svm_accuracy(np.asarray(tr[layer], np.float32), ytr, np.asarray(te[layer], np.float32), yte)
    res = {"analysis": "svm", "layer": layer, "view": str(view), "train_n": len(ytr), "test_n": len(yte),
           "summary": {"svm_top1": round(100 * acc, 2)}}
    save(run, "svm", res, view)
    return res


def svm_accuracy(xtr, ytr, xte, yte, C: float = 1.0) -> float:
    """Top-1 of ``LinearSVC(C)`` on L2-normalised features. Its one-vs-rest problems are solved one per thread
    (liblinear releases the GIL): the same problems ``LinearSVC`` solves one after another — identical coefficients,
    a fixed liblinear seed — as many at once as cores and memory allow. At study size (a 100-class target's 120k
    training images, 4096-d fc7) one after another took ~100 s per 12k images on one core."""
    from joblib import parallel_config
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    x = np.ascontiguousarray(norm(np.asarray(xtr, np.float64)))  # liblinear's dtype: converted once, shared by the threads
    jobs = _svm_threads(x)
    if sys.stderr.isatty():  # minutes at study size, with no progress of its own
        print(f"linear SVM: {x.shape[0]} x {x.shape[1]} features, {len(np.unique(ytr))} classes, {jobs} threads", file=sys.stderr)
    with parallel_config(backend="threading"):
        clf = OneVsRestClassifier(LinearSVC(C=C, max_iter=5000, random_state=0), n_jobs=jobs).fit(x, ytr)
    return float((clf.predict(norm(np.asarray(xte, np.float64))) == yte).mean())


def _svm_threads(x: np.ndarray) -> int:
    """Threads for :func:`svm_accuracy`: each holds liblinear's copy of the non-zero features (16 bytes each); at most
    half the available memory, and the usable cores."""
    from ..util.env import usable_cores

    try:
        import psutil

        avail = psutil.virtual_memory().available
    except ImportError:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    per_thread = 16 * (np.count_nonzero(x) + 2 * len(x))
    return max(1, min(usable_cores(), int(0.5 * avail // max(per_thread, 1))))


def cli(a) -> None:
    """``fastft analyze svm``: every run on its target view(s)."""
    for view, runs, _ in each_view(a):
        for run in runs:
            r = svm(run, view, a.device)
            print(f"{Path(run).name}: linear SVM on {r['layer']}: {r['summary']['svm_top1']:.2f}% ({r['test_n']} test images)")
