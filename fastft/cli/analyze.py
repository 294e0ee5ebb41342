"""``fastft analyze``: the paper's analyses on trained runs."""
from __future__ import annotations

import importlib

from ..analysis import registry


def cmd_analyze(a):
    """What ``fastft analyze <name>`` does is its module's ``cli(args)`` (see :mod:`fastft.analysis.registry`)."""
    importlib.import_module(registry.get(a.what).module).cli(a)


def add_commands(sub) -> None:
    s = sub.add_parser("analyze", help="the paper's analyses on runs: " + ", ".join(registry.REGISTRY),
                       description="Features come from the eval pipeline and are cached per run/view/layer under <run>/analysis/. "
                                   "Results land in <run>/analysis/*.json and in fastft report. A study's Table 3 and Fig. 10: "
                                   "`fastft analyze svm runs --plan near-far-instru`, `fastft analyze probes runs --plan "
                                   "near-far-instru --pool 6`, then `fastft report runs`.")
    s.add_argument("what", choices=list(registry.REGISTRY),
                   help="; ".join(f"{a.name}: {a.help}" for a in registry.REGISTRY.values()))
    s.add_argument("runs", nargs="+", help="run directories, or a runs directory (its finished runs; see --plan)")
    s.add_argument("--view", help="the (target) view: its train split trains SVM/probes, its val split tests. Default (svm, "
                                  "filters, probes): each run's target view — its own if it trained on a target set, else "
                                  "those of the runs fine-tuned from it — so one call covers every seed of a study")
    s.add_argument("--plan", help="with a runs directory: only this plan's runs (and, for a source model, its fine-tunes)")
    s.add_argument("--source-view", help="distance: the source view")
    s.add_argument("--classes", default="0,1,2,3", help="classviz: comma-separated class indices of the run's model")
    s.add_argument("--pool", type=int, help="probes: max-pool conv maps to NxN before the linear layer (default: the paper's full maps)")
    s.add_argument("--memory-gb", type=float, help="probes: features held in memory at once (default: half the free GPU memory "
                   "or RAM); a layer larger than this is streamed through the network every epoch instead")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU if there is one")
    s.add_argument("--out", help="filters: directory for filters.json and PR curves; classviz: PNG path")
    s.set_defaults(fn=cmd_analyze)
