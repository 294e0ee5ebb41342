"""Wall time of each ``fastft analyze`` analysis on one run and view (the issue's "time per analysis for a 100-class view").

Usage: python benchmarks/analysis_timing.py RUN VIEW SOURCE_VIEW [--out FILE] [--only svm,filters,...]
Runs each analysis as a user would (the library calls behind ``fastft analyze``), on a fresh feature cache, and
prints one JSON object: seconds per analysis (feature extraction included), its headline result, the hardware.
"""
import argparse
import shutil
import time
from pathlib import Path

from fastft import analysis as an
from fastft.bench import hardware, write


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("view")
    p.add_argument("source_view")
    p.add_argument("--only", default="svm,filters,probes,classviz,distance")
    p.add_argument("--pool", type=int, default=None, help="probes: max-pool conv maps to NxN (default: full maps)")
    p.add_argument("--out")
    a = p.parse_args()
    shutil.rmtree(Path(a.run) / "analysis", ignore_errors=True)  # time the extraction too
    jobs = {
        "svm": lambda: an.svm(a.run, a.view)["summary"],
        "filters": lambda: an.filters([a.run], a.view)["mean_sensitivity"],
        "probes": lambda: an.probes([a.run], a.view, pool=a.pool)["accuracy"],
        "classviz": lambda: {"score_after": an.class_images(a.run, [0, 1, 2], out=str(Path(a.run) / "classviz.png"))["score_after"]},
        "distance": lambda: an.feature_distance(a.run, a.source_view, a.view)["summary"],
    }
    from fastft.data.views import open_view

    v = open_view(a.view)
    res = {"bench": "analysis", "run": a.run, "view": a.view, "classes": v.num_classes,
           "train_n": len(v.keys("train")), "val_n": len(v.keys("val")), "pool": a.pool, "seconds": {}, "results": {}}
    for name in a.only.split(","):
        t0 = time.perf_counter()
        try:
            res["results"][name] = jobs[name]()
        except Exception as e:  # noqa: BLE001 - one failing analysis must not hide the others' times
            res["results"][name] = f"error: {type(e).__name__}: {str(e)[:300]}"
        res["seconds"][name] = round(time.perf_counter() - t0, 2)
        print(name, res["seconds"][name], "s", flush=True)
    write({**res, **hardware()}, a.out)


if __name__ == "__main__":
    main()
