"""Analyses: hand-checked AP / SVM / probe building blocks, and every analysis on a real trained run (CPU)."""
import json
from pathlib import Path
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastft import analysis as an
from fastft.errors import FastFTError
from fastft.models import build


def test_filter_ap_hand_values():
    labels = np.array([0, 1, 0, 1])
    scores = np.array([[0.1, 0.9], [0.8, 0.8], [0.2, 0.7], [0.9, 0.1]])
    ap = an.filter_ap(scores, labels, 2)
    # class 1 by filter 0: ranking 3(+),1(+) → AP 1.0; class 0 by filter 1: 0(+),1(-),2(+) → (1 + 2/3)/2
    assert ap[1, 0] == pytest.approx(1.0) and ap[0, 1] == pytest.approx((1 + 2 / 3) / 2)
    assert an.sensitivity(np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]), top=5)[0] == pytest.approx(0.4)


def test_filter_ap_equals_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (60, 4)).astype(np.float32)  # many ties
    labels = rng.integers(0, 4, 60)
    labels[labels == 3] = 2  # class 3 has no samples: AP is NaN
    ap = an.filter_ap(scores, labels, 4)
    for c in range(3):
        for f in range(4):
            assert ap[c, f] == pytest.approx(average_precision_score(labels == c, scores[:, f]))
    assert np.isnan(ap[3]).all()


def test_svm_and_probe_on_separable_data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(0, 0.1, (90, 5)) + np.eye(3, 5)[y] * 3
    assert an.svm_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 1.0
    assert an.probe_accuracy(x[::2], y[::2], x[1::2], y[1::2], 3) == 1.0
    assert an.probe_accuracy(rng.normal(size=(45, 5)), y[::2], rng.normal(size=(45, 5)), y[1::2], 3) < 0.7


def test_svm_one_problem_per_thread_equals_linear_svc():
    """The threaded one-vs-rest SVM gives LinearSVC's own predictions (same problems, same solver and seed)."""
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(6), 40)
    x = np.maximum(rng.normal(size=(240, 64)) + 1.2 * np.eye(6, 64)[y], 0)  # overlapping classes, ReLU-like zeros
    xte, yte = x[1::2], y[1::2]
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    want = (LinearSVC(C=1.0, max_iter=5000, random_state=0).fit(norm(x[::2]), y[::2]).predict(norm(xte)) == yte).mean()
    assert 0.3 < want < 1.0 and an.svm_accuracy(x[::2], y[::2], xte, yte) == pytest.approx(want)
    assert an._svm_threads(x) >= 1


@pytest.fixture(scope="module")
def trained(demo_spec, store, view_near, tmp_path_factory):
    out = tmp_path_factory.mktemp("arun")
    spec = out / "spec.json"
    demo_spec.save(spec)
    r = subprocess.run([sys.executable, "-m", "fastft", "train", f"spec={spec}", "set=near", f"store={store}", f"out={out}", "name=t",
                        "epochs=4", "lr=0.005", "width=0.25", "crop=71", "batch_size=32", "init=paper-scaled", "plateau_epochs=0", "progress=false", "num_threads=1"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    run = next(out.glob("t-*"))
    # the same architecture, untrained: what training adds is what the analyses must see
    blob = torch.load(run / "model.pt", weights_only=False)
    torch.manual_seed(0)
    m = build(**blob["model_config"])  # {"name": "alexnet", "num_classes": …, the model's keys}
    (out / "untrained").mkdir()
    torch.save({**blob, "model": m.state_dict(), "run_id": "untrained"}, out / "untrained" / "model.pt")
    return run, out / "untrained", view_near


def test_svm_filters_probes_on_trained_run(trained, tmp_path):
    run, untrained, view = trained
    s_t, s_u = an.svm(run, view.path), an.svm(untrained, view.path)
    assert s_t["summary"]["svm_top1"] > 80 and s_t["summary"]["svm_top1"] >= s_u["summary"]["svm_top1"] and json.loads((run / f"analysis/svm-{an.view_tag(view.path)}.json").read_text())["summary"] == s_t["summary"]
    cached = sorted((run / "analysis/features").glob("*.npy"))
    mtimes = [p.stat().st_mtime for p in cached]
    an.svm(run, view.path)
    assert [p.stat().st_mtime for p in cached] == mtimes, "features are cached"
    p = an.probes([run, untrained], view.path, layers=("conv1", "fc7"))["accuracy"]
    assert p[run.name]["fc7"] > p["untrained"]["fc7"] and p[run.name]["fc7"] > 60
    f = an.filters([run, untrained], view.path, out=tmp_path)
    assert f["mean_sensitivity"][run.name] > f["mean_sensitivity"]["untrained"]
    assert f["percent_of_classes_a_beats_b"][run.name]["untrained"] >= 75
    assert (tmp_path / "filters-pr.png").exists() and (tmp_path / "filters-beats.png").exists()
    one = an.filters([run], view.path, out=tmp_path / "one")  # one model: its sensitivity, no empty Fig. 9
    assert "beats_figure" not in one and not (tmp_path / "one" / "filters-beats.png").exists()
    assert one["mean_sensitivity"] == {run.name: f["mean_sensitivity"][run.name]}


def test_class_images_raise_the_class_score(trained, tmp_path):
    run, _, _ = trained
    r = an.class_images(run, [0, 3], steps=30, out=tmp_path / "cv.png")
    assert all(a > b + 1 for a, b in zip(r["score_after"], r["score_before"]))
    assert (tmp_path / "cv.png").exists()


def test_feature_distance_and_memory_budget(trained, store, demo_spec, tmp_path):
    from fastft.data.views import resolve

    run, _, view = trained
    far = resolve(demo_spec, "far", store, tmp_path / "far")
    tgt = resolve(demo_spec, "target", store, tmp_path / "target")
    d_near = an.feature_distance(run, view.path, tgt.path)["summary"]
    d_far = an.feature_distance(run, far.path, tgt.path)["summary"]
    assert d_near["wordnet_wup_nearest"] < d_far["wordnet_wup_nearest"]
    assert d_near["feature_cosine_nearest"] < d_far["feature_cosine_nearest"]
    with pytest.raises(FastFTError, match="pool=N"):
        an.features(run, view.path, "train", ("conv3",), max_gb=1e-6)


def test_report_shows_analyses(trained, tmp_path):
    import pandas as pd

    from fastft.report import write_report

    run, _, view = trained
    own_view = json.loads((run / "config.json").read_text())["config"]["view"]
    an.svm(run, own_view)
    an.probes([run], own_view, layers=("fc7", "conv1"))
    r = write_report(run.parent, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Linear SVM on fc7" in md and "| run | conv1 | fc7 |" in md  # network order, whatever order they ran in
    assert pd.read_csv(tmp_path / "runs.csv")["svm_top1"].notna().any()
    assert any(Path(f).name.startswith("probes-") for f in r["figures"])


def test_report_finds_analyses_of_a_moved_runs_directory(demo_spec, store, tmp_path):
    """A run started with a relative out: from another directory, and after its runs directory moved, the report still
    finds the run's view and so its analyses."""
    import shutil

    (tmp_path / "a").mkdir()
    demo_spec.save(tmp_path / "a" / "spec.json")
    r = subprocess.run([sys.executable, "-m", "fastft", "train", "spec=spec.json", "set=near", f"store={store}", "out=runs", "name=t",
                        "epochs=1", "width=0.25", "crop=71", "batch_size=32", "init=paper-scaled", "plateau_epochs=0", "progress=false", "num_threads=1"],
                       cwd=tmp_path / "a", capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    run = next((tmp_path / "a" / "runs").glob("t-*"))
    an.svm(run, json.loads((run / "config.json").read_text())["config"]["view"])
    shutil.move(tmp_path / "a", tmp_path / "b")
    r = subprocess.run([sys.executable, "-m", "fastft", "report", "b/runs", "--out", "rep"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Linear SVM on fc7" in (tmp_path / "rep" / "report.md").read_text()


def test_analyze_a_runs_directory_puts_each_seeds_models_on_that_seeds_target(store, tmp_path):
    """`fastft analyze svm RUNS --plan P`: fine-tunes on their own view, each source model on the view of the runs
    fine-tuned from it (its seed's target), as the report pairs Table 3's "before" with "after"."""
    import pandas as pd
    import yaml

    from fastft.report import write_report
    from fastft.data.views import view_tag

    plan = {"name": "p", "construction": "near-far", "params": {"within": "store", "target": 4, "source": 8},
            "seeds": [0, 1], "defaults": {"width": 0.25, "crop": 71, "batch_size": 32, "init": "paper-scaled", "plateau_epochs": 0, "epochs": 1, "num_threads": 1},
            "runs": [{"name": "near", "set": "near"}, {"name": "ft", "set": "target", "mode": "finetune", "source": "near"}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(plan))
    out, env = tmp_path / "runs", {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "fastft"]
    r = subprocess.run(cli + ["sweep", str(tmp_path / "p.yaml"), "--store", str(store), "--out", str(out), "--parallel", "2", "--quiet"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(cli + ["analyze", "svm", str(out), "--plan", "p"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 analyses of 4 runs on 2 target views" in r.stdout
    for seed in (0, 1):
        (near,), (ft,) = out.glob(f"near-s{seed}-*"), out.glob(f"ft-s{seed}-*")
        tag = view_tag(json.loads((ft / "config.json").read_text())["config"]["view"])
        assert [p.name for p in (ft / "analysis").glob("svm-*.json")] == [f"svm-{tag}.json"]
        assert [p.name for p in (near / "analysis").glob("svm-*.json")] == [f"svm-{tag}.json"]  # not the other seed's
    r = subprocess.run(cli + ["analyze", "distance", str(out), "--plan", "p"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.count("feature (fc7 cosine, nearest)") == 2, r.stdout + r.stderr  # a pair per seed
    write_report(out, tmp_path / "rep")
    rows = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert rows.loc[rows["template"] == "ft", "svm_before_top1"].notna().sum() == 2
    assert rows.loc[rows["template"] == "ft", "feature_cosine_nearest"].notna().sum() == 2  # measured in each seed's source
    assert "Source → target distance" in (tmp_path / "rep" / "report.md").read_text()
    r = subprocess.run(cli + ["analyze", "distance", str(out), "--view", str(out)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "or neither" in r.stderr
    r = subprocess.run(cli + ["analyze", "svm", str(out), "--plan", "q"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "no finished runs of plan 'q' (its plans: p)" in r.stderr
    alone = tmp_path / "alone"
    alone.mkdir()
    (near,) = out.glob("near-s0-*")
    (alone / near.name).symlink_to(near)  # a source model with no fine-tune beside it: its target is unknown
    r = subprocess.run(cli + ["analyze", "svm", str(alone / near.name)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "give --view" in r.stderr
    # a copy of the runs directory (the original still there) reads its own copies: its source model's target is the
    # copy's view, found from the copy's fine-tune (which recorded the original's paths)
    import shutil

    from fastft.analysis import analysis_targets

    shutil.copytree(out, tmp_path / "copy", symlinks=True)
    (copied,) = (tmp_path / "copy").glob("near-s0-*")
    ((view, group),) = analysis_targets([copied])
    assert view.is_relative_to((tmp_path / "copy").resolve()) and group == [copied], view


def test_an_unfinished_run_or_a_runs_directory_given_for_a_run_is_named_as_such(source_run, view_near, tmp_path):
    """A run that has not finished, named to `fastft analyze` (with or without --view), is named as unfinished with
    the command that finishes it — not "give --view" or "has no model.pt"; a directory of runs given where one run's
    model is read is named as such, with how many runs it holds."""
    import shutil

    from clirun import fastft
    from fastft import weights

    out, _, run = source_run
    unfinished = tmp_path / run.name
    shutil.copytree(run, unfinished, ignore=shutil.ignore_patterns("final.json", "model.pt", "analysis"))
    for extra in ([], ["--view", str(view_near.path)]):
        r = fastft("analyze", "svm", unfinished, *extra, check=False)
        assert r.returncode == 2 and "has not finished" in r.stderr and "config.yaml" in r.stderr, r.stderr[-800:]
        assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(FastFTError, match=r"is not a run directory \(no config.json\); it holds \d+ run\(s\): name one"):
        weights.read_model(out, "finetune source")


def test_a_report_of_runs_outside_any_plan_reads_as_such(source_run, tmp_path):
    """Runs trained by hand (`fastft train`, no plan): their section and figures are named for that (not `## -`,
    `curves--.png`), a single seed shows no spread (not ± 0.00), and no hint to re-run a sweep there was not."""
    from clirun import fastft

    out = source_run[0]
    fastft("report", out, "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Runs outside any plan (fastft train)" in md and "\n## -\n" not in md
    assert " ± – |" in md and "run the sweep again" not in md
    assert (tmp_path / "rep" / "curves-runs.png").exists() and not list((tmp_path / "rep").glob("*--*"))
