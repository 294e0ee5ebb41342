"""``fastft analyze``: the paper's analyses on trained runs."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FastFTError


def cmd_analyze(a):
    from .. import analysis as an

    if a.what in ("svm", "filters", "probes"):
        groups = an.analysis_targets(a.runs, a.view, a.plan)
        if a.view is None:
            print(f"{sum(len(r) for _, r in groups)} analyses of {len({x for _, r in groups for x in r})} runs on "
                  f"{len(groups)} target views (each run's own, or its fine-tunes')")
        for view, runs in groups:
            if len(groups) > 1:
                print(f"== view {view}")
            if a.what == "svm":
                for run in runs:
                    r = an.svm(run, view, a.device)
                    print(f"{Path(run).name}: linear SVM on fc7: {r['summary']['svm_top1']:.2f}% ({r['test_n']} test images)")
            elif a.what == "filters":
                out = a.out and (Path(a.out) / view.name if len(groups) > 1 else a.out)
                r = an.filters(runs, view, a.device, out=out)
                print(json.dumps({k: r[k] for k in ("mean_sensitivity", "percent_of_classes_a_beats_b")}, indent=1))
                if r.get("figure"):
                    print(f"precision-recall curves: {r['figure']}\nclasses where A beats B (Fig. 9): {r['beats_figure']}")
            else:
                r = an.probes(runs, view, device=a.device, pool=a.pool, memory_gb=a.memory_gb)
                layers = r["layers"]
                print("run".ljust(32) + "".join(l.rjust(8) for l in layers))
                for name, accs in r["accuracy"].items():
                    print(name[:31].ljust(32) + "".join(f"{accs[l]:8.2f}" for l in layers))
    elif a.what == "classviz":
        r = an.class_images(a.runs[0], [int(c) for c in a.classes.split(",")], device=a.device,
                            out=a.out or str(Path(a.runs[0]) / "analysis" / "classviz.png"))
        print(f"class-model images: {r['image']} (class scores {['%.2f' % x for x in r['score_before']]} -> {['%.2f' % x for x in r['score_after']]})")
    elif a.what == "distance":
        if bool(a.source_view) != bool(a.view):
            raise FastFTError("analyze distance takes both --view (the target) and --source-view, or neither (each "
                              "fine-tuned run's source and target, measured in the source model)")
        pairs = [(a.runs[0], a.source_view, a.view)] if a.view else an.distance_targets(a.runs, a.plan)
        for model, sview, tview in pairs:
            r = an.feature_distance(model, sview, tview, a.device)["summary"]
            print(f"{Path(model).name}: {Path(sview).name} -> {Path(tview).name}: feature (fc7 cosine, nearest) "
                  f"{r['feature_cosine_nearest']:.4f}, WordNet {r['wordnet_wup_nearest']:.4f}")


def add_commands(sub) -> None:
    s = sub.add_parser("analyze", help="the paper's analyses on runs: svm (fc7), filters (conv5 AP), probes (conv1..fc8), classviz, distance",
                       description="Features come from the eval pipeline and are cached per run/view/layer under <run>/analysis/. "
                                   "Results land in <run>/analysis/*.json and in fastft report. A study's Table 3 and Fig. 10: "
                                   "`fastft analyze svm runs --plan near-far-instru`, `fastft analyze probes runs --plan "
                                   "near-far-instru --pool 6`, then `fastft report runs`.")
    s.add_argument("what", choices=["svm", "filters", "probes", "classviz", "distance"],
                   help="svm: linear SVM on fc7 (Table 3); filters: per-filter AP of conv5 (Figs. 8-9); probes: a linear "
                        "classifier on each layer (Fig. 10); classviz: images that maximise class scores; distance: source-"
                        "target feature distance")
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
