"""The analyses ``fastft analyze`` runs and what each gives the report, in one table — torch-free, so that plans,
claims and the report know them without importing torch (an analysis's own module imports it when it runs).

An analysis is a module of this package with two functions: the analysis itself, which writes its result through
:func:`save` as ``<run>/analysis/<name>-<view tag>.json`` (``{"analysis": name, "summary": {key: number, …}, …}``),
and ``cli(args)``, what ``fastft analyze <name>`` does. Its :class:`Analysis` entry here says what the report takes
from that file: which summary keys become which columns of ``runs.csv`` (the run's own result, and its source
model's on the same view: "before fine-tuning"), which of them ``summary.csv`` averages over seeds, and the claim
measures it offers (``{a: "ft-near:svm", b: "ft-near:svm_before"}``). The view tag is what pairs a source model's
"before" with its fine-tune's "after" (Table 3); results without one (``per_view=False``) are not reported.

Adding an analysis is one new module plus a :func:`register` line below, as adding a model is in
:mod:`fastft.models` (the README's "Adding an analysis" shows one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FastFTError
from ..files import write_json
from ..data.views import view_tag

LAYER = "{layer}"  # in a column or measure name: one entry per layer of every registered model (fastft.models)


@dataclass(frozen=True)
class Analysis:
    name: str                     # fastft analyze <name>; the result file <run>/analysis/<name>-<view tag>.json
    module: str                   # defines the analysis and its cli(args) (imported only when it runs)
    help: str                     # one line for fastft analyze --help
    columns: dict = field(default_factory=dict)   # summary key -> the run's column in runs.csv
    before: dict = field(default_factory=dict)    # summary key -> column from the source model's result on the run's view
    averaged: tuple | None = None                 # columns summary.csv averages over seeds (None: every column above)
    measures: dict = field(default_factory=dict)  # claim measure (ft-near:<measure>) -> column
    keep_file: bool = False       # also <name>_file / <name>_before_file: the result's path (for report parts that
                                  # read more than its summary: Fig. 9's per-class sensitivities)
    digits: int = 2               # decimals of a claim's evidence on its measures
    per_view: bool = True         # False: one <name>.json per run, not reported


REGISTRY: dict[str, Analysis] = {}


def register(spec: Analysis) -> Analysis:
    REGISTRY[spec.name] = spec
    return spec


register(Analysis(
    "svm", "fastft.analysis.linear_svm", "linear SVM on fc7, or the model's pooled features (Table 3)",
    columns={"svm_top1": "svm_top1"}, before={"svm_top1": "svm_before_top1"},
    measures={"svm": "svm_top1", "svm_before": "svm_before_top1"}))
register(Analysis(
    "filters", "fastft.analysis.conv5_filters", "per-filter AP of conv5, or the model's last conv layer (Figs. 8-9)",
    columns={"mean_sensitivity": "mean_sensitivity"}, before={"mean_sensitivity": "filters_before_mean_sensitivity"},
    measures={"filters": "mean_sensitivity", "filters_before": "filters_before_mean_sensitivity"},
    keep_file=True, digits=3))  # an AP, in [0, 1]
register(Analysis(
    "probes", "fastft.analysis.layer_probes", "a linear classifier on each layer (Fig. 10)",
    columns={LAYER: f"probe_{LAYER}"}, before={LAYER: f"probe_before_{LAYER}"},
    measures={f"probe_{LAYER}": f"probe_{LAYER}", f"probe_before_{LAYER}": f"probe_before_{LAYER}"}))
register(Analysis(
    "classviz", "fastft.analysis.class_models", "images that maximise class scores (Fig. 11)", per_view=False))
register(Analysis(
    "distance", "fastft.analysis.distance", "source-target feature distance",
    columns={"feature_cosine_nearest": "feature_cosine_nearest", "wordnet_wup_nearest": "wordnet_wup_nearest"},
    before={"feature_cosine_nearest": "feature_cosine_nearest"},  # measured in the source model: what fine-tuning starts from
    averaged=("feature_cosine_nearest",)))


def get(name: str) -> Analysis:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FastFTError(f"analysis {name!r} is not registered; analyses: {', '.join(REGISTRY)}") from None


def expand(mapping: dict) -> dict:
    """``mapping`` with each ``{layer}`` entry made one per layer of every registered model, in network order."""
    from ..models import all_layers

    out = {}
    for k, v in mapping.items():
        for layer in all_layers() if LAYER in k else [None]:
            out[k.format(layer=layer) if layer else k] = v.format(layer=layer) if layer else v
    return out


def reported() -> list[Analysis]:
    return [a for a in REGISTRY.values() if a.per_view]


def columns(summary: dict, a: Analysis, before: bool = False) -> dict:
    """A result's summary as the report's columns (the run's own, or ``before``: its source model's)."""
    names = expand(a.before if before else a.columns)
    return {names[k]: v for k, v in summary.items() if k in names}


def averaged() -> set[str]:
    """The columns ``summary.csv`` averages over seeds."""
    return {c for a in reported() for c in (a.averaged if a.averaged is not None else
                                             [*expand(a.columns).values(), *expand(a.before).values()])}


def measures() -> dict[str, str]:
    """Every claim measure an analysis offers → its column."""
    return {m: c for a in reported() for m, c in expand(a.measures).items()}


def offering(measure: str) -> Analysis | None:
    """The analysis whose results a claim measure reads (None: the run's own top-1 / top-5)."""
    return next((a for a in reported() if measure in expand(a.measures)), None)


def result_file(run_dir: Path, name: str, tag: str | None = None) -> Path:
    """Where analysis ``name`` keeps a run's result: ``<run>/analysis/<name>-<view tag>.json`` (``<name>.json``
    without a view)."""
    return Path(run_dir) / "analysis" / (f"{name}-{tag}.json" if tag else f"{name}.json")


def save(run, name: str, res: dict, view=None) -> None:
    """Write a result (``run``: a run directory, or a model file in one) where :func:`result_file` says; with
    ``view``, tagged with it, so that the report pairs a source model's "before" result with its fine-tuned model's
    "after" on the same target view (Table 3)."""
    tag = view_tag(view) if view is not None else None
    if tag:
        res = {**res, "view_tag": tag}
    path = result_file(Path(run) if Path(run).is_dir() else Path(run).parent, name, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
