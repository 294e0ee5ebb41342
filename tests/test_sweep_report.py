"""Sweeps (expansion, ids, skip/resume/retry, concurrency), reports and the demo. SLURM: tests/test_slurm.py."""
import difflib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from fastft import study as sw
from fastft.study import bind, leases
from fastft.errors import FastFTError
from fastft.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 0.25, "crop": 71, "batch_size": 32, "init": "paper-scaled", "plateau_epochs": 0, "epochs": 2, "num_threads": 1, "lr": 0.005}


def tiny_plan(tmp_path: Path, name="tiny", extra_runs=(), **defaults) -> Path:
    plan = {"name": name, "construction": "near-far", "params": {"within": "store", "target": 4, "source": 8, "cap": 10},
            "seeds": [0], "defaults": {**SMALL, **defaults},
            "runs": [{"name": "near", "set": "near"},
                     {"name": "ft", "set": "target", "mode": "finetune", "source": "near", "grid": {"freeze": [0, 5]}},
                     *extra_runs]}
    p = tmp_path / f"{name}.yaml"
    import yaml

    p.write_text(yaml.safe_dump(plan))
    return p


def test_study_plans_expand_with_dependencies():
    counts = {}
    for p in sorted((ROOT / "plans").glob("*.yaml")):
        plan = sw.load_plan(p)
        runs = sw.expand(plan)
        keys = [r.key for r in runs]
        assert len(keys) == len(set(keys))
        by = {r.key: r for r in runs}
        for r in runs:
            for d in r.deps:
                assert by[d].seed == r.seed and keys.index(d) < keys.index(r.key)
        counts[plan["name"]] = len(runs)
    assert counts == {"augmentation": 220, "classes-images": 610, "freeze": 90, "lr": 30, "near-far-dog": 25, "near-far-instru": 25, "source-size": 70,
                      "yosinski-2014": 230}
    fr = sw.expand(sw.load_plan(ROOT / "plans/freeze.yaml"), [3])
    assert {r.key: r.deps for r in fr}["ft-near-freeze4-s3"] == ["near-s3"]


def test_dry_run_counts_shared_runs_once(tmp_path):
    a, b = sw.load_plan(ROOT / "plans/near-far-instru.yaml"), sw.load_plan(ROOT / "plans/freeze.yaml")
    ra, rb = sw.expand(a, [0]), sw.expand(b, [0])
    sw.prepare(a, ra, None, tmp_path)
    sw.prepare(b, rb, None, tmp_path)
    assert {r.key: r.pseudo_id for r in ra}["near-s0"] == {r.key: r.pseudo_id for r in rb}["near-s0"]
    seen = set()
    assert sw.cost(ra, seen=seen)["shared"] == 0 and sw.cost(rb, seen=seen)["shared"] == 2


def test_plan_mistakes_are_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nconstruction: dog\nruns: [{name: a, set: near, sourec: b}]\n")
    with pytest.raises(FastFTError, match="sourec"):
        sw.load_plan(p)
    p.write_text("name: x\nconstruction: dog\nruns: [{name: a, set: near, source: zz}]\n")
    with pytest.raises(FastFTError, match="zz"):
        sw.load_plan(p)
    p.write_text("name: x\nconstruction: dog\nruns: [{name: a, set: near, paper: {top: 50}}]\n")
    with pytest.raises(FastFTError, match="unknown paper key.*'top'"):
        sw.load_plan(p)
    p.write_text("name: x\nconstruction: dog\nruns: [{name: a, set: nearr}]\n")
    with pytest.raises(FastFTError, match="no set 'nearr'"):
        sw.prepare(sw.load_plan(p), sw.expand(sw.load_plan(p)), None, tmp_path)
    runs = "runs: [{name: a, set: near}, {name: f, set: target, grid: {freeze: [0, 1]}}, {name: g, set: target, grid: {set: [target, near]}}]\n"
    for claim, message in (("{a: a, b: zz, text: t}", "names 'zz'"), ("{a: a, text: t}", "must have a text and one of"),
                           ("{best: a, key: freeze, value: 0, text: t}", "'freeze' is not a grid key of 'a'"),
                           ("{best: f, key: freeze, value: 3, text: t}", r"freeze=3 is not in its grid \[0, 1\]"),
                           ("{gain: f, key: freeze, from: 0, to: 1}", "must have a text"),
                           ("{trend: f, key: freeze, direction: sideways, text: t}", "direction must be 'up' or 'down'"),
                           ("{a: 'a:svm', b: 'f:svm2', text: t}", "'svm2' is not a measure of a run; measures: top1, top5, svm, "),
                           ("{a: 'zz:svm', b: f, text: t}", "names 'zz'"),
                           ("{a: 'a:svm - zz:svm', b: f, text: t}", "names 'zz'"),
                           ("{gain: f, vs: g, key: freeze, from: 0, to: 1, text: t}", "'freeze' is not a grid key of 'g'"),
                           ("{trend: f, vs: a, key: freeze, direction: up, text: t}", "'freeze' is not a grid key of 'a'"),
                           ("{trend: g, key: set, direction: up, text: t}", r"a trend needs numbers along 'set'"),
                           ("{trend: g, key: images, direction: up, text: t}", r"read from set names k<classes>_n<images>.*\['target', 'near'\]")):
        p.write_text(f"name: x\nconstruction: dog\nclaims: [{claim}]\n{runs}")
        with pytest.raises(FastFTError, match=message):
            sw.load_plan(p)


def test_views_resolved_by_several_processes_equal_those_resolved_in_one(store, tmp_path, monkeypatch):
    plan = sw.load_plan(tiny_plan(tmp_path, "pool"))
    plan["seeds"] = [0, 1]
    one = sw.expand(plan)
    sw.prepare(plan, one, str(store), tmp_path / "a")
    monkeypatch.setattr(bind, "POOL_AFTER_S", 0.0)  # as for ILSVRC2012-sized views: after the first, a process pool
    pool = sw.expand(plan)
    sw.prepare(plan, pool, str(store), tmp_path / "b")
    assert [r.run_id for r in pool] == [r.run_id for r in one]
    views = sorted(p.name for p in (tmp_path / "a" / "views").iterdir() if p.name != "by-content")
    assert len(views) == 4 and views == sorted(p.name for p in (tmp_path / "b" / "views").iterdir() if p.name != "by-content")
    for v in views:
        a, b = (json.loads((tmp_path / d / "views" / v / "view.json").read_text()) for d in ("a", "b"))
        assert a["splits"] == b["splits"] and a["classes"] == b["classes"]


def test_sweep_runs_skips_and_retries(store, tmp_path):
    plan = sw.load_plan(tiny_plan(tmp_path))
    runs = sw.expand(plan)
    sw.prepare(plan, runs, str(store), tmp_path / "out")
    ids = [r.run_id for r in runs]
    again = sw.expand(plan)
    sw.prepare(plan, again, str(store), tmp_path / "out")
    assert [r.run_id for r in again] == ids, "run ids are stable"
    # every first attempt is "preempted" at step 3 (real SIGTERM); the retry resumes from its checkpoint and finishes
    slots = [{"OMP_NUM_THREADS": "1", "FASTFT_TEST_SIGTERM_AT_STEP": "3"}]
    s = sw.run_local(runs, tmp_path / "out", slots, retries=1, progress=False)
    assert sorted(s["done"]) == sorted(r.key for r in runs) and not s["failed"]
    eff = s["efficiency"]  # the sweep's share of slot-time in training steps, from every run's recorded costs
    steps = [json.loads((r.run_dir / "final.json").read_text())["costs"]["sum_step_s"] for r in runs]
    assert eff["runs"] == 3 and eff["sum_step_s"] == pytest.approx(sum(steps), abs=0.05)
    assert 0 < eff["efficiency"] < 1 and eff["efficiency"] == pytest.approx(sum(steps) / eff["wall_s"], abs=0.01)
    assert {"startup", "open_view", "loaders", "first_step", "eval", "checkpoint"} <= set(eff["fixed_s"])
    for r in runs:
        log = (r.run_dir / "sweep.log").read_text()
        assert log.count("$ ") == 2 and "resuming" in log
        assert json.loads((r.run_dir / "sweep.json").read_text())["memberships"][0]["template"] == r.template
    s = sw.run_local(again, tmp_path / "out", slots, retries=1, progress=False)
    assert sorted(s["done"]) == sorted(r.key for r in runs) and s["efficiency"] is None  # nothing trained now
    assert all((r.run_dir / "sweep.log").read_text().count("$ ") == 2 for r in runs), "finished runs are not started again"
    rep = write_report(tmp_path / "out", tmp_path / "report")
    assert rep["finished"] == 3 and any("grid-tiny-freeze" in f for f in rep["figures"])


def test_run_shared_by_two_plans_trains_once_and_reports_in_both(store, tmp_path):
    out = tmp_path / "out"
    for name in ("plana", "planb"):
        plan = sw.load_plan(tiny_plan(tmp_path, name))
        runs = [r for r in sw.expand(plan) if r.template == "near"]
        sw.prepare(plan, runs, str(store), out)
        assert sw.run_local(runs, out, [{"OMP_NUM_THREADS": "1"}], progress=False)["done"] == ["near-s0"]
    (d,) = [p for p in out.iterdir() if p.name.startswith("near-s0-")]
    assert (d / "sweep.log").read_text().count("$ ") == 1
    assert {m["plan"] for m in json.loads((d / "sweep.json").read_text())["memberships"]} == {"plana", "planb"}
    rep = write_report(out, tmp_path / "rep")
    assert set(rep["summary"]["plan"]) == {"plana", "planb"}
    assert rep["runs"] == rep["finished"] == 1 and "1 finished runs, 0 failed" in (tmp_path / "rep" / "report.md").read_text()


def test_one_sweep_runs_several_plans_as_one_dag_and_a_shared_run_once(store, tmp_path):
    a = tiny_plan(tmp_path, "pa")
    b = tiny_plan(tmp_path, "pb", extra_runs=[{"name": "ft2", "set": "target", "mode": "finetune", "source": "near", "overrides": {"lr": 0.002}}])
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(a), str(b), "--store", str(store), "--out", str(out),
                        "--parallel", "2", "--quiet"], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "plan pa: 3 done" in r.stdout and "plan pb: 1 done, 0 failed, 0 skipped (dependency failed), 3 shared" in r.stdout, r.stdout
    dirs = sorted(p for p in out.iterdir() if (p / "final.json").exists())
    assert len(dirs) == 4 and all((d / "sweep.log").read_text().count("$ ") == 1 for d in dirs), "each run trained once"
    (near,) = [d for d in dirs if d.name.startswith("near-s0-")]
    members = json.loads((near / "sweep.json").read_text())["memberships"]
    assert sorted((m["plan"], m["key"]) for m in members) == [("pa", "near-s0"), ("pb", "near-s0")]
    rep = write_report(out, tmp_path / "rep")
    assert set(rep["summary"]["plan"]) == {"pa", "pb"}


def test_failed_run_is_recorded_and_dependents_skipped(store, tmp_path):
    plan = sw.load_plan(tiny_plan(tmp_path, "fails"))
    runs = sw.expand(plan)
    sw.prepare(plan, runs, str(store), tmp_path / "out")
    s = sw.run_local(runs, tmp_path / "out", [{"FASTFT_TEST_SIGTERM_AT_STEP": "2"}], retries=0, progress=False)
    assert s["failed"] == ["near-s0"] and sorted(s["skipped"]) == ["ft-freeze0-s0", "ft-freeze5-s0"]
    f = json.loads((runs[0].run_dir / "failed.json").read_text())
    assert f["exit_code"] == 143 and "preempted" in f["log_tail"]
    # what `fastft sweep --dry-run` shows for this sweep: the source failed, its fine-tunes never started
    out = tmp_path / "out"
    assert [sw.state(out, r) for r in runs] == ["failed", "to run", "to run"]
    (runs[0].run_dir / "failed.json").unlink()
    assert sw.state(out, runs[0]) == "interrupted", "it holds the checkpoint it wrote on SIGTERM: a re-run resumes it"
    (out / "claims").mkdir(exist_ok=True)
    (out / "claims" / runs[0].run_id).write_text(f"{socket.gethostname()} {os.getpid()}")
    assert sw.state(out, runs[0]) == "running"
    r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(tmp_path / "fails.yaml"), "--store", str(store), "--out",
                        str(out), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert "1 running, 2 to run" in r.stdout and "left: 3 unfinished runs" in r.stdout, r.stdout + r.stderr


def test_two_concurrent_sweeps_train_each_run_once(store, tmp_path):
    plan = tiny_plan(tmp_path, "conc")
    cmd = [sys.executable, "-m", "fastft", "sweep", str(plan), "--store", str(store), "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = list((tmp_path / "out").glob("*/sweep.log"))
    assert len(logs) == 3 and all(l.read_text().count("$ ") == 1 for l in logs)
    assert not list((tmp_path / "out" / "claims").iterdir())


# Loaded by the sweep's runs (as ``sitecustomize``, through PYTHONPATH): after its first epoch's record a run says so
# in a file and waits until the test writes ``go``. The run that took the claim over is mid-training, holding the
# claim, for as long as the test needs to see the claim refreshed, whatever the machine's load.
_HOLD_AFTER_FIRST_EPOCH = """
import os, time
from pathlib import Path

import fastft.train.loop as _loop

_real, _dir = _loop._record, Path(os.environ["FASTFT_TEST_HOLD_DIR"])


def _record(r, rec, *a, **kw):
    _real(r, rec, *a, **kw)
    if rec.get("epoch", 0) >= 1:
        (_dir / "held").touch()
        while not (_dir / "go").exists():
            time.sleep(0.05)


_loop._record = _record
"""


def test_run_claimed_by_a_dead_host_is_waited_for_then_taken_over_once_its_claim_goes_stale(store, tmp_path):
    plan_file = tiny_plan(tmp_path, "dead")
    plan = sw.load_plan(plan_file)
    runs = sw.expand(plan)
    out = tmp_path / "out"
    sw.prepare(plan, runs, str(store), out)
    claim = out / "claims" / runs[0].run_id
    claim.parent.mkdir(parents=True, exist_ok=True)
    claim.write_text("gone-host 4242")  # a sweep on another machine sharing the runs directory, refreshed just now
    assert sw.state(out, runs[0]) == "running on gone-host"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOLD_AFTER_FIRST_EPOCH)
    cmd = [sys.executable, "-m", "fastft", "sweep", str(plan_file), "--store", str(store), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTFT_CLAIM_HEARTBEAT_S": "0.3", "FASTFT_CLAIM_STALE_S": "20",
           "FASTFT_TEST_HOLD_DIR": str(hook), "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))}
    alive = threading.Event()
    alive.set()

    def other_host():  # the other host keeps refreshing its claim for as long as the test says it lives, however
        while alive.is_set():  # long the sweep takes to start on a loaded machine
            os.utime(claim)
            time.sleep(0.5)

    beat = threading.Thread(target=other_host, daemon=True)
    beat.start()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        while not any("is being trained by" in x for x in seen) and len(seen) < 50 and (x := p.stdout.readline()):
            seen.append(x)
        line = seen[-1] if seen else ""
        assert f"run dead/{runs[0].key} is being trained by pid 4242 on gone-host" in line and "not been refreshed for 20 s" in line, seen
        for _ in range(8):  # while the other host lives, the sweep keeps waiting
            time.sleep(0.5)
            assert p.poll() is None and claim.read_text() == "gone-host 4242" and not (hook / "held").exists()
        alive.clear()
        beat.join()
        # the other host died: its claim stops being refreshed, and once it is CLAIM_STALE_S old the run is taken over
        old = time.time() - 60
        os.utime(claim, (old, old))
        mine, beats, deadline = f"{socket.gethostname()} {p.pid}", set(), time.monotonic() + 600
        while len(beats) < 3:  # its own claim, refreshed while the run trains (held after its first epoch)
            assert p.poll() is None, "the sweep ended while its run was held"
            assert time.monotonic() < deadline, f"the sweep's own claim was not refreshed three times in 10 minutes: {sorted(beats)}"
            try:
                if (hook / "held").exists() and claim.read_text() == mine:
                    beats.add(claim.stat().st_mtime)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
    except BaseException:
        p.kill()
        raise
    finally:
        (hook / "go").touch()
    rest = p.communicate(timeout=600)[0]
    assert p.returncode == 0, rest[-2000:]
    taken = re.search(r"was not refreshed for (\d+) s: that sweep is gone; taking the run over", rest)
    assert taken and int(taken.group(1)) >= 60, rest[-2000:]  # 60 s old when the test aged it; later on a loaded machine
    assert all((r.run_dir / "final.json").exists() for r in runs)
    assert not list(claim.parent.iterdir()), "no claim, moved-aside claim or clock file is left behind"


@pytest.mark.parametrize("launcher", ["preloaded", "fresh"])
def test_a_killed_sweeps_runs_checkpoint_and_stop_instead_of_training_on_unwatched(store, tmp_path, launcher):
    """SIGKILL to a sweep (no handler runs): each run it started gets its own SIGTERM, checkpoints and stops — not
    an orphan training on while its claim goes stale, until another sweep takes the run over beside it. The run's
    lock is free once it has stopped; re-running the sweep resumes it."""
    import fcntl
    import signal

    from fastft import runs as runs_mod

    plan_file = tiny_plan(tmp_path, "orph", epochs=5000)
    plan = sw.load_plan(plan_file)
    runs = sw.expand(plan)
    sw.prepare(plan, runs, str(store), tmp_path / "out")
    near = runs[0].run_dir
    cmd = [sys.executable, "-m", "fastft", "sweep", str(plan_file), "--store", str(store), "--out", str(tmp_path / "out"),
           "--launch", launcher, "--quiet"]
    p = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while runs_mod.latest_checkpoint(near) is None:  # it trains, past its first epoch
        assert p.poll() is None and time.monotonic() < deadline, "the run wrote no checkpoint in 10 minutes"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with open(near / ".lock", "a") as lock:
        while True:  # the run holds its lock while it lives
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the run still trains 10 minutes after its sweep was killed"
                time.sleep(0.2)
    log = (near / "sweep.log").read_text()
    assert "the sweep that started this run" in log and "preempted: checkpointed" in log, log[-2000:]
    assert not runs_mod.is_finished(near)


def test_a_refreshed_claim_is_not_taken_over_by_a_sweep_that_saw_it_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(leases, "CLAIM_STALE_S", 5.0)
    claim = tmp_path / "claims" / "run1"
    claim.parent.mkdir()
    claim.write_text("other-host 7")
    old = time.time() - 60
    os.utime(claim, (old, old))
    assert leases.stale(claim) > 55
    os.utime(claim)  # ... and the other host refreshes it (or another sweep just took it over) before the move
    leases.take_over(claim)
    assert claim.read_text() == "other-host 7", "a fresh claim is put back"
    os.utime(claim, (old, old))
    leases.take_over(claim)
    assert not claim.exists() and not list(claim.parent.iterdir())


def test_gpu_selection_respects_the_visible_devices(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    n = torch.cuda.device_count()
    if n:
        assert sw.gpu_ids("all") == [str(i) for i in range(n)]
    else:
        with pytest.raises(FastFTError, match="no GPU is visible"):
            sw.gpu_ids("all")
    assert sw.gpu_ids("0,3") == ["0", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,7")  # e.g. a SLURM allocation of three GPUs
    assert sw.gpu_ids("all") == ["4", "5", "7"] and sw.gpu_ids("0,2") == ["4", "7"]
    slots = sw.slots_for("1,2", per_gpu=2, parallel=1)
    assert [x["CUDA_VISIBLE_DEVICES"] for x in slots] == ["5", "5", "7", "7"] and {x["FASTFT_NODE_RUNS"] for x in slots} == {"4"}
    with pytest.raises(FastFTError, match=r"leaves 3 GPU\(s\), so give indices 0..2"):
        sw.gpu_ids("3")
    with pytest.raises(FastFTError, match="names a GPU twice"):
        sw.gpu_ids("1,1")


def test_interrupted_sweep_checkpoints_its_runs_and_resumes(store, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) and SIGTERM (to the sweep alone): the running run checkpoints
    mid-epoch and stops before the sweep exits; the next sweep resumes it and finishes the plan."""
    import signal
    import time

    from fastft import runs as runs_mod

    plan_file = tiny_plan(tmp_path, "intr")  # the near source long enough to be interrupted twice; its fine-tunes short
    import yaml

    plan_doc = yaml.safe_load(plan_file.read_text())
    plan_doc["runs"][0]["overrides"] = {"epochs": 15}
    plan_file.write_text(yaml.safe_dump(plan_doc))
    plan = sw.load_plan(plan_file)
    runs = sw.expand(plan)
    sw.prepare(plan, runs, str(store), tmp_path / "out")
    near = runs[0].run_dir
    cmd = [sys.executable, "-m", "fastft", "sweep", str(plan_file), "--store", str(store), "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for sig, to_group, code in ((signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)):
        before = runs_mod.latest_checkpoint(near)
        # as started from a terminal: Ctrl-C is not ignored (a shell ignores it for background jobs, which CI may be)
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 600  # however long the sweep and its run take to start on a loaded machine
        while runs_mod.latest_checkpoint(near) == before:
            assert p.poll() is None, p.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "the run wrote no checkpoint in 10 minutes"
            time.sleep(0.2)
        time.sleep(0.3)  # into the next epoch
        os.killpg(p.pid, sig) if to_group else p.send_signal(sig)
        out = p.communicate(timeout=120)[0]
        assert p.returncode == code, out[-2000:]
        log = (near / "sweep.log").read_text()
        assert log.count("preempted: checkpointed") == (1 if sig == signal.SIGINT else 2), log[-2000:]
        assert not list((tmp_path / "out" / "claims").iterdir()), "claims are released"
        assert not runs_mod.is_finished(near)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert all(runs_mod.is_finished(x.run_dir) for x in runs)
    assert (near / "sweep.log").read_text().count("resuming") == 2


STUDY_REPORT = {"pairs": [["ft-near", "scratch"], ["ft-far", "scratch"], ["ft-near", "ft-far"]],  # the shipped §4.3-4.6 plans'
                "order": ["ft-near", "ft-far", "near", "far", "scratch"]}


def _fake_run(root: Path, name: str, template: str, seed: int, top1: float, paper=None, grid=None, source_template=None, claims=None,
              plan="p", report=None, **config):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"run_id": name, "config": {"seed": seed, "mode": "finetune", "set": "target", "name": name,
                                                                          **config}, "num_classes": 100}))
    (d / "sweep.json").write_text(json.dumps({"plan": plan, "template": template, "seed": seed, "paper": paper, "grid": grid or {},
                                              "distance": 0.1, "source_template": source_template, "claims": claims, "report": report}))
    (d / "final.json").write_text(json.dumps({"run_id": name, "top1": top1, "top5": top1 + 10, "epochs": 2}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "top1": top1 * e / 2, "train_loss": 2 - e / 2, "lr": 0.01}) for e in (1, 2)))


def test_report_tables_from_run_directories(tmp_path):
    for s, v in enumerate((60.0, 62.0, 64.0)):
        _fake_run(tmp_path / "runs", f"a{s}", "ft-1000", s, v, paper={"top1": 80.94, "std": 0.75, "ref": "Table 2, 1000"})
        _fake_run(tmp_path / "runs", f"b{s}", "scratch", s, v - 10)
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.json").write_text("{not json")
    r = write_report(tmp_path / "runs", tmp_path / "rep")
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("template")
    assert s.loc["ft-1000", "top1_mean"] == pytest.approx(62.0) and s.loc["ft-1000", "top1_std"] == pytest.approx(2.0)
    assert s.loc["ft-1000", "delta_vs_paper"] == pytest.approx(62.0 - 80.94) and s.loc["scratch", "seeds"] == 3
    md = (tmp_path / "rep" / "report.md").read_text()
    assert s.loc["ft-1000", "top1_ci95"] == pytest.approx(4.303 * 2.0 / 3 ** 0.5, abs=1e-3)  # t(0.975, 2 dof) = 4.303
    assert "| ft-1000 | target | – | 3 | 62.00 ± 2.00 | ±4.97 |" in md and "80.94 ± 0.75" in md
    assert {Path(f).name for f in r["figures"]} >= {"curves-p.png", "final-p.png", "distance.png"}


def test_report_puts_the_papers_svm_and_probe_numbers_alongside(tmp_path):
    """Table 3's SVM on fc7 (after / before fine-tuning) and Fig. 10's probe accuracies, given as a plan's ``paper``
    values, appear next to fastft's own analysis results in the tables and the probes figure."""
    from fastft.data.views import view_tag

    view = tmp_path / "view"
    view.mkdir()
    (view / "view.json").write_text(json.dumps({"manifest_sha256": "m", "splits": {"val": {"keys_sha256": "k"}}, "classes": ["n01"]}))
    tag = view_tag(str(view))
    paper = {"top1": 67.12, "svm": 66.70, "svm_before": 60.06, "probes": {"fc7": 59.08, "fc8": 60.86}, "probes_before": {"fc8": 57.78}}
    src = tmp_path / "near"  # the source model, probed on the same target view (Fig. 10's dashed lines)
    (src / "analysis").mkdir(parents=True)
    (src / "analysis" / f"probes-{tag}.json").write_text(json.dumps({"summary": {"fc7": 50.0, "fc8": 48.0}}))
    (src / "analysis" / f"svm-{tag}.json").write_text(json.dumps({"summary": {"svm_top1": 60.0}}))
    (src / "analysis" / f"filters-{tag}.json").write_text(json.dumps({"summary": {"mean_sensitivity": 0.30}, "sensitivity": [0.30]}))
    claims = [{"a": "ft-near:svm", "b": "ft-near:svm_before", "text": "fine-tuning improves the fc7 SVM", "ref": "Table 3"},
              {"a": "ft-near:probe_before_fc7", "b": "ft-near:probe_before_fc8", "text": "transferred, fc7 beats fc8"},
              {"a": "ft-near:probe_fc8", "b": "ft-far:probe_fc8", "text": "near's fc8 beats far's"},
              {"a": "ft-far:svm", "b": "ft-far:svm_before", "text": "fine-tuning improves far's fc7 SVM"},
              {"a": "ft-near:svm - ft-near:svm_before", "b": "ft-near:probe_fc7 - ft-near:probe_before_fc7",
               "text": "fine-tuning helps the SVM more than the fc7 probe"},
              {"a": "ft-near:filters", "b": "ft-near:filters_before", "text": "fine-tuning sharpens the conv5 filters"},
              {"a": "ft-far:filters", "b": "ft-far:filters_before", "text": "fine-tuning sharpens far's conv5 filters"}]
    for seed, (svm, fc7) in enumerate(((70.0, 61.0), (72.0, 63.0))):
        for t, src_dir in (("ft-near", src), ("ft-far", None)):
            name = f"{t}{seed}"
            _fake_run(tmp_path / "runs", name, t, seed, 68.0, paper=paper if t == "ft-near" else None, claims=claims)
            d = tmp_path / "runs" / name
            cfg = json.loads((d / "config.json").read_text())
            cfg["config"].update(view=str(view), source=str(src_dir) if src_dir else None)
            (d / "config.json").write_text(json.dumps(cfg))
            (d / "analysis").mkdir()
            (d / "analysis" / f"svm-{tag}.json").write_text(json.dumps({"summary": {"svm_top1": svm}}))
            (d / "analysis" / f"probes-{tag}.json").write_text(json.dumps({"summary": {"fc8": fc7 + 1, "fc7": fc7}}))
            (d / "analysis" / f"filters-{tag}.json").write_text(json.dumps({"summary": {"mean_sensitivity": 0.35 + 0.01 * seed},
                                                                                 "sensitivity": [0.35 + 0.01 * seed]}))
    r = write_report(tmp_path / "runs", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ft-near, before fine-tuning (source) | 50.00 | 48.00 |" in md
    assert "| ft-near, before fine-tuning (source) (paper) | – | 57.78 |" in md
    assert "| ft-near | target | – | 2 | 68.00 ± 0.00 | ±0.00 | 78.00 | 0.100 | 67.12 | +0.88 |" in md  # no std given: none shown
    assert "| ft-near | 71.00 | 60.00 | 66.70 | 60.06 |" in md
    assert "| ft-near | 62.00 | 63.00 |" in md and "| ft-near (paper) | 59.08 | 60.86 |" in md
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("template")
    assert s.loc["ft-near", "paper_svm_before"] == 60.06 and s.loc["ft-near", "paper_probe_fc8"] == 60.86
    assert any(Path(f).name == "probes-p.png" for f in r["figures"])
    from PIL import Image  # ft-near and ft-far: a second panel, Fig. 10 (b)'s gains per layer

    w, h = Image.open(tmp_path / "rep" / "probes-p.png").size
    assert w > 2.2 * h
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim")  # claims on the analyses, paired by seed
    assert c.loc["fine-tuning improves the fc7 SVM", "fastft"] == "+11.00 (±12.71, 95 % CI), ahead in 2/2 seeds"
    assert c.loc["fine-tuning improves the fc7 SVM", "verdict"] == "too few seeds (2; 3 needed)"
    # two seeds: the numbers are shown, the verdict waits for a third
    assert c.loc["transferred, fc7 beats fc8", "verdict"] == c.loc["near's fc8 beats far's", "verdict"] == "too few seeds (2; 3 needed)"
    assert c.loc["fine-tuning improves far's fc7 SVM", "verdict"] == "no data"  # ft-far has no source model here
    # differences of measures, per seed: SVM +10, +12 with fine-tuning; fc7 probe +11, +13
    assert c.loc["fine-tuning helps the SVM more than the fc7 probe", "fastft"] == "-1.00 (±0.00, 95 % CI), ahead in 0/2 seeds"
    assert c.loc["fine-tuning sharpens the conv5 filters", "fastft"] == "+0.055 (±0.064, 95 % CI), ahead in 2/2 seeds"
    assert c.loc["fine-tuning sharpens far's conv5 filters", "fastft"] == \
        "no analysis results for ft-far:filters_before: run fastft analyze filters RUNS_DIR --plan p"
    assert c.loc["fine-tuning improves far's fc7 SVM", "fastft"] == "no analysis results for ft-far:svm_before: run fastft analyze svm RUNS_DIR --plan p"


def test_report_fig9_pairs_each_seeds_models_on_its_target(tmp_path):
    """Fig. 9 from `fastft analyze filters` results: per seed, on that seed's target, the % of classes where A's conv5
    filters are more sensitive than B's — fine-tuned models, their sources before fine-tuning, scratch — then mean ±
    std over seeds, ties counted for neither side, the paper's percentages alongside."""
    from fastft.data.views import view_tag

    sens = {0: {"ft-near": [0.9, 0.9, 0.9, 0.1], "scratch": [0.5] * 4, "near": [0.5, 0.5, 0.6, 0.4]},
            1: {"ft-near": [0.9, 0.9, 0.1, 0.1], "scratch": [0.5] * 4, "near": [0.5, 0.5, 0.6, 0.4]}}
    runs = tmp_path / "runs"
    for seed, models in sens.items():
        view = tmp_path / f"view{seed}"  # each seed its own target classes
        view.mkdir()
        (view / "view.json").write_text(json.dumps({"manifest_sha256": "m", "splits": {"val": {"keys_sha256": f"k{seed}"}}, "classes": ["n01"]}))
        tag = view_tag(str(view))
        near = runs / f"near{seed}"
        _fake_run(runs, near.name, "near", seed, 50.0, paper={"filters_beats": {"scratch": 51}}, set="near", report=STUDY_REPORT)
        (near / "analysis").mkdir()
        (near / "analysis" / f"filters-{tag}.json").write_text(json.dumps({"summary": {}, "sensitivity": models["near"]}))
        for t in ("ft-near", "scratch"):
            _fake_run(runs, f"{t}{seed}", t, seed, 60.0, paper={"filters_beats": {"scratch": 61, "near": 75}} if t == "ft-near" else None,
                      view=str(view), report=STUDY_REPORT, **({"source": str(near), "source_template": "near"} if t == "ft-near" else {}))
            (runs / f"{t}{seed}" / "analysis").mkdir()
            (runs / f"{t}{seed}" / "analysis" / f"filters-{tag}.json").write_text(json.dumps({"summary": {}, "sensitivity": models[t]}))
    r = write_report(runs, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ft-near | scratch | – | 2 | 62.50 ± 17.68 | 61.00 |" in md  # 75 % and 50 %
    assert "| ft-near | near | – | 2 | 62.50 ± 17.68 | 75.00 |" in md
    assert "| near | scratch | – | 2 | 25.00 ± 0.00 | 51.00 |" in md  # and scratch beats near on 25 %: two ties
    b = pd.read_csv(tmp_path / "rep" / "filters.csv").set_index(["a", "b"])
    assert b.loc[("near", "scratch"), "b_beats_mean"] == 25.0 and len(b) == 3
    assert any(Path(f).name == "filters-p.png" for f in r["figures"]) and str(tmp_path / "rep" / "filters.csv") in r["tables"]


def test_report_rows_read_numbers_as_numbers(tmp_path):
    for lr in (0.01, 0.0001, 0.001, 0.0005):
        _fake_run(tmp_path / "runs", f"ft-lr{lr}", "ft", 0, 60.0, grid={"lr": lr})
    md = (write_report(tmp_path / "runs", tmp_path / "rep"), (tmp_path / "rep" / "report.md").read_text())[1]
    assert [md.index(f"| lr={lr} |") for lr in ("0.0001", "0.0005", "0.001", "0.01")] == sorted(md.index(f"| lr={lr} |") for lr in ("0.0001", "0.0005", "0.001", "0.01"))


def test_gains_are_paired_by_seed_while_seeds_are_unfinished():
    from fastft.report import gain_lines

    rows = [("ft-near", 0, 70.0), ("scratch", 0, 60.0), ("ft-near", 1, 50.0), ("scratch", 1, 40.0),
            ("ft-near", 2, 90.0)]  # seed 2's scratch is still training: an unpaired mean would give 70 - 50 = +20
    r = pd.DataFrame([{"template": t, "seed": s, "top1": v, "grid_images": 30} for t, s, v in rows])
    ((name, gain),) = gain_lines(r, ["grid_images"], "grid_images", [("ft-near", "scratch")])
    assert name == "ft-near − scratch" and gain.to_dict() == {30: 10.0}


def test_report_checks_the_papers_findings_paired_by_seed(tmp_path):
    """A plan's claims, checked on its runs: a beats b (one point: its paired 95 % interval; a grid: per point),
    the best value of a grid key, and a gain along a grid key — with the evidence and a verdict."""
    claims = [{"a": "ft", "b": "scratch", "text": "ft beats scratch", "ref": "§4.6"},
              {"a": "scratch", "b": "ft", "text": "scratch beats ft"},
              {"a": "ft", "b": "noisy", "text": "ft beats noisy"},
              {"best": "fz", "key": "freeze", "value": 0, "text": "freeze 0 is best"},
              {"gain": "aug", "key": "augment_to", "from": 0, "to": 1200, "text": "augmentation helps", "ref": "§4.6"},
              {"gain": "aug", "vs": "aug-ft", "key": "augment_to", "from": 0, "to": 1200, "text": "augmentation helps aug more"},
              {"a": "ft - scratch - ft", "b": "scratch", "text": "three terms"},  # (ft − scratch) − ft = −scratch
              {"a": "flat", "b": "scratch", "text": "flat beats scratch"}]  # +5 in every seed: a zero-width interval
    runs = tmp_path / "runs"
    for seed in range(3):
        for t, top1 in (("ft", 60.0 + 1.5 * seed), ("scratch", 50.0 + seed), ("noisy", 60.0 + (-5, 4, 3)[seed]), ("flat", 55.0 + seed)):
            _fake_run(runs, f"{t}{seed}", t, seed, top1, claims=claims)
        for fz, top1 in ((0, 62.0), (3, 61.0 + (0, 2, 0)[seed])):  # freeze 0 best on average, not in seed 1
            _fake_run(runs, f"fz{fz}-{seed}", "fz", seed, top1, grid={"freeze": fz}, claims=claims)
        for n in (30, 960):
            for aug in (0, 1200):
                _fake_run(runs, f"aug{n}-{aug}-{seed}", "aug", seed, 40.0 + seed + (10 + seed if aug and n == 30 else 0.1 * seed if aug else 0),
                          grid={"set": f"k100_n{n}", "augment_to": aug}, claims=claims)
                _fake_run(runs, f"augft{n}-{aug}-{seed}", "aug-ft", seed, 60.0 + seed - (1 if aug else 0),  # loses 1 with augmentation
                          grid={"set": f"k100_n{n}", "augment_to": aug}, claims=claims)
    write_report(runs, tmp_path / "rep")
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim")
    assert c.loc["ft beats scratch", "verdict"] == "holds" and c.loc["ft beats scratch", "fastft"].startswith("+10.50 (±1.24")
    # identical differences are no evidence of significance, and 3 seeds cannot pass the sign test that replaces the interval
    assert c.loc["flat beats scratch", "verdict"] == "same direction, not significant"
    assert c.loc["flat beats scratch", "fastft"] == "+5.00 (±0.00, 95 % CI), ahead in 3/3 seeds"
    assert c.loc["scratch beats ft", "verdict"] == "does not hold (significantly the other way)"
    assert c.loc["ft beats noisy", "verdict"] == "same direction, not significant"  # +1.33, seeds 1 and 2 differ in sign
    assert c.loc["freeze 0 is best", "verdict"] == "holds" and "best in 2/3 seeds" in c.loc["freeze 0 is best", "fastft"]
    # at 30 images +10, +11, +12; at 960, +0, +0.1, +0.2: above 0 on average, not significantly
    assert c.loc["augmentation helps", "verdict"] == "same direction, not significant"
    assert "over 2 grid points; above 0 at 2, significantly at 1" in c.loc["augmentation helps", "fastft"]
    # minus aug-ft's gain (−1): +11 … +13 at 30 images, +1.0 … +1.2 at 960: significantly above 0 at both
    assert c.loc["augmentation helps aug more", "verdict"] == "holds"
    assert c.loc["three terms", "fastft"] == "-102.00 (±4.97, 95 % CI), ahead in 0/3 seeds"  # −2 × scratch: −100, −102, −104
    assert "+1.10 … +12.00 over 2 grid points" in c.loc["augmentation helps aug more", "fastft"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| augmentation helps | §4.6 |" in md
    assert "**The paper's findings, checked: 8** — holds: 3 · same direction, not significant: 3 · does not hold: 2." in md
    for seed in range(2):  # a plan citing §4.1 comes before one citing §4.6, whatever the run directories' names
        _fake_run(runs, f"zz-lr{seed}", "ft", seed, 60.0, plan="lr", claims=[{"a": "ft", "b": "ft", "text": "x", "ref": "§4.1, Fig. 4"}])
    md = (write_report(runs, tmp_path / "rep2"), (tmp_path / "rep2" / "report.md").read_text())[1]
    assert md.index("## lr") < md.index("## p")


def test_report_checks_trends_along_a_grid_key_and_of_gains_paired_by_seed(tmp_path):
    """§4.4: accuracy rises with images per class, falls with more classes, and the gain of fine-tuning over scratch
    shrinks with more images — Spearman's ρ per seed and series (the other keys fixed), read from k<K>_n<N> set names."""
    import numpy as np

    claims = [{"trend": "ft-near", "key": "images", "direction": "up", "text": "more images help"},
              {"trend": "scratch", "key": "classes", "direction": "down", "text": "fewer classes are easier", "ref": "§4.4"},
              {"trend": "ft-near", "vs": "scratch", "key": "images", "direction": "down", "text": "the gain shrinks"},
              {"trend": "ft-near", "vs": "scratch", "key": "images", "direction": "up", "text": "the gain grows"},
              {"trend": "noisy", "key": "images", "direction": "up", "text": "noisy rises"}]
    rng = np.random.default_rng(0)
    for seed in range(5):  # ρ is ±1 in every seed of a monotone series: only the sign test over 5 seeds makes it significant
        for k in (100, 20):
            for n in (30, 240, 1200):
                scratch = 20 + 10 * np.log10(n) + (10 if k == 20 else 0) + rng.normal(0, 0.3)
                near = scratch + 30 - 8 * np.log10(n) + rng.normal(0, 0.3)
                noisy = 50 + (n if seed != 2 else -n) / 100 if k == 100 else 50 + n / 100  # rises in 4 of 5 seeds at k=100
                for t, top1 in (("scratch", scratch), ("ft-near", near), ("noisy", noisy)):
                    _fake_run(tmp_path / "runs", f"{t}-{k}-{n}-{seed}", t, seed, float(top1), grid={"set": f"k{k}_n{n}"}, claims=claims)
        _fake_run(tmp_path / "runs", f"near-{seed}", "near", seed, 45.0, claims=claims)  # a source: no grid
    write_report(tmp_path / "runs", tmp_path / "rep")
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim")
    assert c.loc["more images help", "verdict"] == "holds"
    assert c.loc["more images help", "fastft"] == "ρ +1.00 … +1.00 over 2 series; increasing at 2, significantly at 2"
    assert c.loc["fewer classes are easier", "verdict"] == "holds" and "over 3 series; decreasing at 3" in c.loc["fewer classes are easier", "fastft"]
    assert c.loc["the gain shrinks", "verdict"] == "holds" and c.loc["the gain shrinks", "fastft"].startswith("ρ -1.00 … -1.00 over 2 series")
    assert c.loc["the gain grows", "verdict"] == "does not hold (significantly the other way)"
    # k=20: ρ +1 in every seed; k=100: +1, +1, −1, +1, +1 (mean +0.6, its interval spans 0)
    assert c.loc["noisy rises", "verdict"] == "same direction, not significant"
    assert c.loc["noisy rises", "fastft"] == "ρ +0.60 … +1.00 over 2 series; increasing at 2, significantly at 1"
    assert "| fewer classes are easier | §4.4 |" in (tmp_path / "rep" / "report.md").read_text()


def test_demo_end_to_end_prints_what_the_readme_shows(tmp_path):
    """``fastft demo`` as a new user runs it (an empty directory, default settings) finishes, and the README's excerpt
    of its output is exactly what it prints (timestamps aside; ``tools/readme_demo.py`` rewrites it)."""
    from fastft.demo import excerpt, readme_excerpt, untimed

    r = subprocess.run([sys.executable, "-m", "fastft", "demo"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "6/6 fastft report" in r.stdout and "target accuracy:" in r.stdout and "SVM after" in r.stdout
    assert "| fine-tuning from the near source beats training from scratch | §4.3 |" in r.stdout  # the plan's claims, checked
    demo = tmp_path / "fastft-demo"
    assert (demo / "report/report.md").exists() and (demo / "report/final-demo-near-far.png").exists()
    runs = pd.read_csv(demo / "report/runs.csv")
    assert runs["finished"].all() and len(runs) == 15
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown, printed = untimed(readme_excerpt(readme)), untimed(excerpt(r.stdout))
    assert shown == printed, ("README.md's demo excerpt is not what `fastft demo` prints: run `python "
                              "tools/readme_demo.py`\n" + "\n".join(difflib.unified_diff(shown, printed, lineterm="")))


def test_report_grid_and_gain_figures(tmp_path):
    import numpy as np

    for seed in (0, 1):
        for t, base in (("scratch", 30.0), ("ft-near", 50.0), ("ft-far", 40.0)):
            for n in (30, 240, 1200):
                for aug in (0, 1200):
                    top1 = base + 10 * np.log10(n) + (5 if aug and t == "scratch" else 0) + seed
                    _fake_run(tmp_path / "runs", f"{t}-{n}-{aug}-{seed}", t, seed, top1, grid={"set": f"k100_n{n}", "augment_to": aug},
                              report=STUDY_REPORT)
        for t in ("near", "far"):  # the plan's sources: no grid values
            _fake_run(tmp_path / "runs", f"{t}-{seed}", t, seed, 45.0, report=STUDY_REPORT)
    r = write_report(tmp_path / "runs", tmp_path / "rep")
    names = {Path(f).name for f in r["figures"]}
    assert {"grid-p-images.png", "grid-p-augment_to.png", "gains-p.png"} <= names
    runs = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert set(runs["grid_images"].dropna()) == {30, 240, 1200} and set(runs["grid_classes"].dropna()) == {100}
    pairs = pd.read_csv(tmp_path / "rep" / "paired.csv")  # per seed: ft-near − scratch = 20, 15 with augmentation
    near = pairs[(pairs["a"] == "ft-near") & (pairs["b"] == "scratch")]
    assert len(near) == 6 and (near["seeds"] == 2).all() and (near["a_wins"] == 2).all()
    assert sorted(near["delta_mean"].round(6).unique()) == [15.0, 20.0] and (near["delta_ci95"].abs() < 1e-9).all()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| ft-near − ft-far | set=k100_n30, augment_to=0 | 2 | +10.00 | ±0.00 | 2/2 |" in md
    assert md.index("| scratch | target | set=k100_n30, augment_to=0 ") < md.index("| scratch | target | set=k100_n240, augment_to=0 ")
    from PIL import Image  # 20 bars and 20 curves: a row per bar, a row of panels per template (3 + the sources)

    final, curves = (Image.open(tmp_path / "rep" / f"{f}-p.png").size for f in ("final", "curves"))
    from fastft.report.figures import DPI

    final, curves = (tuple(x / DPI for x in size) for size in (final, curves))  # inches
    assert final[0] < 7.5 and final[1] > 20 * 0.2 and curves[1] > 4 * 2.8 * 0.9  # side by side: 18 in wide


def test_a_plans_report_key_is_checked_when_it_loads(tmp_path):
    """``report: {pairs, order}`` names runs of the plan, each pair two different ones, each once: any other value is
    a one-line error naming the plan and the key, from ``fastft sweep`` before anything is resolved or written."""
    p = tmp_path / "bad.yaml"
    runs = "runs: [{name: a, set: near}, {name: b, set: target}, {name: c, set: target}]\n"
    for report, message in (("{pairs: [[b, zz]]}", "report.pairs names 'zz', not a run of the plan \\(its runs: a, b, c\\)"),
                            ("{order: [b, a, yy]}", "report.order names 'yy'"),
                            ("{pairs: [[b, a]], pair: [[c, a]]}", r"report must be a mapping of \['order', 'pairs'\]; got unknown key\(s\) \['pair'\]"),
                            ("[[b, a]]", "report must be a mapping of"),
                            ("{pairs: [b, a]}", "report.pairs must be a list of \\[a, b\\]"),
                            ("{pairs: [[b, b]]}", "report.pairs must be a list of \\[a, b\\]: two different runs"),
                            ("{pairs: [[b, a, c]]}", "report.pairs must be a list of \\[a, b\\]"),
                            ("{pairs: [[b, [a]]]}", "report.pairs must be a list of \\[a, b\\]"),
                            ("{order: [a, 1]}", "report.order must be a list of runs of the plan"),
                            ("{pairs: [[b, a], [b, a]]}", "report.pairs lists a pair twice"),
                            ("{order: [a, a]}", "report.order must be a list of runs of the plan, each once")):
        p.write_text(f"name: x\nconstruction: dog\nreport: {report}\n{runs}")
        with pytest.raises(FastFTError, match=f"^plan {re.escape(str(p))}: {message}"):
            sw.load_plan(p)
    p.write_text(f"name: x\nconstruction: dog\nreport: {{pairs: [[b, a], [c, zz]]}}\n{runs}")
    r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(p), "--dry-run", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "report.pairs names 'zz'" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()  # nothing resolved, nothing written
    p.write_text(f"name: x\nconstruction: dog\nreport: {{pairs: [[c, a]], order: [c]}}\n{runs}")  # a good one reaches sweep.json
    (spec, *_) = sw.expand(sw.load_plan(p), [0])
    spec.run_dir = tmp_path / "run"
    sw.record_membership(spec)
    assert json.loads((spec.run_dir / "sweep.json").read_text())["memberships"][0]["report"] == {"pairs": [["c", "a"]], "order": ["c"]}


def test_the_report_makes_the_comparisons_each_plan_names(tmp_path):
    """Plan p names its own pairs (b − a, c − a) and order (c before b): paired.csv, report.md and the gains figure
    have those; Fig. 9 names its models in that order. Plan q names none: however its templates are called (ft-near,
    scratch), it gets no paired comparisons, and report.md says why."""
    from fastft.report import gain_lines, paired
    from fastft.report.collect import collect
    from fastft.store import view_tag

    view = tmp_path / "view"
    view.mkdir()
    (view / "view.json").write_text(json.dumps({"manifest_sha256": "m", "splits": {"val": {"keys_sha256": "k"}}, "classes": ["n01"]}))
    tag = view_tag(str(view))
    own = {"pairs": [["b", "a"], ["c", "a"]], "order": ["c", "b"]}
    runs = tmp_path / "runs"
    for seed in range(3):
        for t, top1, sens in (("a", 50.0, [0.5, 0.5]), ("b", 55.0 + seed, [0.9, 0.1]), ("c", 60.0, [0.9, 0.9])):
            _fake_run(runs, f"{t}{seed}", t, seed, top1, grid={"set": "k100_n30"}, report=own, view=str(view))
            (runs / f"{t}{seed}" / "analysis").mkdir()
            (runs / f"{t}{seed}" / "analysis" / f"filters-{tag}.json").write_text(json.dumps({"summary": {}, "sensitivity": sens}))
        for t, top1 in (("ft-near", 70.0), ("scratch", 40.0)):
            _fake_run(runs, f"q-{t}{seed}", t, seed, top1, plan="q")
    write_report(runs, tmp_path / "rep")
    pairs = pd.read_csv(tmp_path / "rep" / "paired.csv")
    assert list(zip(pairs["plan"], pairs["a"], pairs["b"])) == [("p", "b", "a"), ("p", "c", "a")]
    assert pairs.set_index("a").loc["b", "delta_mean"] == pytest.approx(6.0) and pairs.set_index("a").loc["c", "a_wins"] == 3
    md = (tmp_path / "rep" / "report.md").read_text()
    p_part, q_part = md[md.index("## p"):md.index("## q")], md[md.index("## q"):]
    assert "| b − a | set=k100_n30 | 3 | +6.00 |" in p_part and "| c − a |" in p_part and "No paired comparisons" not in p_part
    assert "No paired comparisons: the plan names none (`report: {pairs: [[a, b], …]}`" in q_part and "| ft-near − scratch |" not in md
    beats = pd.read_csv(tmp_path / "rep" / "filters.csv")
    assert list(zip(beats["a"], beats["b"])) == [("c", "b"), ("c", "a"), ("b", "a")]  # the plan's order, then by name
    rows, _ = collect(runs)
    p_rows = rows[rows["plan"] == "p"].assign(grid_images=30)
    assert [name for name, _ in gain_lines(p_rows, ["grid_images"], "grid_images", [("b", "a"), ("c", "a")])] == ["b − a", "c − a"]
    assert paired(rows[rows["plan"] == "q"]).empty


def test_the_report_its_claims_and_the_plans_import_without_torch():
    """The registry of analyses (names, columns, measures) is torch-free, so the report, the claim language and the
    plans read it without importing torch."""
    for code in ("import fastft.report, fastft.report.claims, fastft.study.plan; import sys; assert 'torch' not in sys.modules",
                 "import sys, fastft.analysis; from fastft.report.claims import claim_measures; from fastft.analysis import registry;"
                 "assert 'probe_before_fc7' in claim_measures() and registry.averaged() and 'torch' not in sys.modules"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


TOY = '''"""A toy analysis: a run's top-1 / 10, from its final.json."""
import json
from pathlib import Path

from fastft.analysis.registry import save


def toy(run, view):
    score = json.loads((Path(run) / "final.json").read_text())["top1"] / 10
    save(run, "toy", {"analysis": "toy", "summary": {"score": score}}, view)


def cli(a):
    for run in a.runs:
        toy(run, a.view)
        print(f"{Path(run).name}: toy")
'''


def test_a_registered_analysis_reaches_analyze_the_report_and_the_claims(tmp_path, monkeypatch, capsys):
    """Adding an analysis is one module plus a registration: ``fastft analyze toy`` runs the module's ``cli``; its
    result's summary becomes the column it names in runs.csv (a source model's, on the same view, the "before"
    column), summary.csv averages it over seeds, and a plan's claims may compare its measures: validated when the
    plan loads, checked by the report, or naming ``fastft analyze toy`` while results are missing."""
    from fastft.analysis import registry
    from fastft.cli import main

    (tmp_path / "toy_analysis.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.REGISTRY, "toy", registry.Analysis(
        "toy", "toy_analysis", "a toy score", columns={"score": "toy_score"}, before={"score": "toy_before_score"},
        measures={"toy": "toy_score", "toy_before": "toy_before_score"}))
    claims = [{"a": "ft:toy", "b": "ft:toy_before", "text": "fine-tuning raises the toy score"}]
    plan = tmp_path / "p.yaml"
    plan.write_text(f"name: p\nconstruction: dog\nclaims: {json.dumps(claims)}\nruns: [{{name: src, set: near}}, "
                    "{name: ft, set: target, mode: finetune, source: src}]\n")
    sw.load_plan(plan)  # the measure is known to the claim language
    plan.write_text(plan.read_text().replace("ft:toy_before", "ft:toy_after"))
    with pytest.raises(FastFTError, match="'toy_after' is not a measure of a run; measures: .*, toy, toy_before"):
        sw.load_plan(plan)
    view = tmp_path / "view"
    view.mkdir()
    (view / "view.json").write_text(json.dumps({"manifest_sha256": "m", "splits": {"val": {"keys_sha256": "k"}}, "classes": ["n01"]}))
    runs = tmp_path / "runs"
    for seed in range(3):
        _fake_run(runs, f"src{seed}", "src", seed, 50.0, claims=claims, set="near")
        _fake_run(runs, f"ft{seed}", "ft", seed, 60.0 + seed, claims=claims, view=str(view), source=str(runs / f"src{seed}"))
    write_report(runs, tmp_path / "rep")
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim").loc["fine-tuning raises the toy score"]
    assert c["fastft"] == "no analysis results for ft:toy, ft:toy_before: run fastft analyze toy RUNS_DIR --plan p"
    assert main(["analyze", "toy", *map(str, sorted(runs.iterdir())), "--view", str(view)]) == 0
    assert capsys.readouterr().out.count(": toy\n") == 6
    write_report(runs, tmp_path / "rep")
    rows = pd.read_csv(tmp_path / "rep" / "runs.csv").set_index("run")
    assert rows.loc["ft2", "toy_score"] == pytest.approx(6.2) and rows.loc["ft2", "toy_before_score"] == pytest.approx(5.0)
    s = pd.read_csv(tmp_path / "rep" / "summary.csv").set_index("template")
    assert s.loc["ft", "toy_score"] == pytest.approx(6.1) and s.loc["ft", "toy_before_score"] == pytest.approx(5.0)
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim").loc["fine-tuning raises the toy score"]
    assert c["verdict"] == "holds" and c["fastft"] == "+1.10 (±0.25, 95 % CI), ahead in 3/3 seeds"


def test_a_mistake_in_a_later_plan_is_named_before_the_first_plan_does_any_work(store, tmp_path):
    """`fastft sweep a.yaml b.yaml`: every plan is read and expanded before any view is resolved or run started, so
    a mistake in b (an unknown run key, a source no run names) stops the sweep with nothing written for a."""
    import yaml

    good = tiny_plan(tmp_path, "good")
    for name, bad_run in (("typo", {"name": "x", "set": "near", "epcohs": 3}),
                          ("orphan", {"name": "y", "set": "target", "mode": "finetune", "source": "nowhere"})):
        bad = tmp_path / f"{name}.yaml"
        bad.write_text(yaml.safe_dump({"name": name, "construction": "near-far", "seeds": [0],
                                       "params": {"within": "store", "target": 4, "source": 8, "cap": 10},
                                       "defaults": dict(SMALL), "runs": [bad_run]}))
        out = tmp_path / f"out-{name}"
        r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(good), str(bad), "--store", str(store), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "fastft: error:" in r.stderr, r.stderr[-2000:]
        assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
