"""The paper's §4.3 analyses on trained runs (``fastft analyze``), one module each, with fixed recipes so numbers
compare across runs:

* :mod:`.linear_svm` — a linear SVM on fc7 (Table 3);
* :mod:`.conv5_filters` — per-filter AP on conv5 and "model A beats B" (Figs. 8-9);
* :mod:`.layer_probes` — a linear probe per layer on the full feature maps, in bounded memory (Fig. 10);
* :mod:`.class_models` — class-model images (Fig. 11);
* :mod:`.distance` — a feature-based source–target distance next to the WordNet one;

on what they share: :mod:`.extract` (the model, its features on a view, cached on disk), :mod:`.targets` (which runs
on which views) and :mod:`.registry` (each analysis's name, result files, report columns and claim measures: what
``fastft report`` reads). Results are JSON files in ``<run>/analysis/``.

The registry and the targets are torch-free, and so is importing this package: the analyses' names are loaded from
their modules on first use (``fastft.analysis.svm``), so that the report and the plans read the registry without
importing torch.
"""
from __future__ import annotations

import importlib

from .registry import REGISTRY, Analysis, register  # noqa: F401
from .targets import analysis_targets, distance_targets  # noqa: F401

# public name -> the module defining it (imported on first use: these import torch)
_LAZY = {
    **dict.fromkeys(("load_model", "model_preprocess", "features", "pooled"), "extract"),
    **dict.fromkeys(("svm", "svm_accuracy", "_svm_threads"), "linear_svm"),
    **dict.fromkeys(("filter_ap", "sensitivity", "filters"), "conv5_filters"),
    **dict.fromkeys(("probes", "probe_accuracy"), "layer_probes"),
    "class_images": "class_models",
    "feature_distance": "distance",
}
# names the single-module fastft.analysis had from elsewhere, kept for one release
_ELSEWHERE = {"LAYERS": "fastft.models.alexnet", "AlexNet": "fastft.models.alexnet", "view_tag": "fastft.store",
              "beats_figure": "fastft.report.figures", "ModelFile": "fastft.weights", "read_model": "fastft.weights"}

__all__ = ["Analysis", "REGISTRY", "analysis_targets", "distance_targets", "register",
           *(n for n in _LAZY if not n.startswith("_"))]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _ELSEWHERE:
        value = getattr(importlib.import_module(_ELSEWHERE[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_ELSEWHERE})
