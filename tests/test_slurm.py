"""``fastft sweep --backend slurm`` against a real SLURM (the ``slurm`` fixture: munged, slurmctld and slurmd on
localhost, see tests/slurm_cluster.py; skipped where SLURM is not installed): the demo plan as CPU jobs end to end
with two submissions at once, a cancelled source, a failed source whose fine-tunes are stuck, a requeue and a
time-limit signal mid-run; and, without daemons, the resources and arrays fastft asks SLURM for."""
import datetime
import json
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import fastft
from fastft import runs as runs_mod
from fastft.study import slurm as sl
from fastft import sweep as sw
from fastft.errors import FastFTError
from fastft.report import write_report

DEMO = Path(fastft.__file__).parent / "_data" / "demo_plan.yaml"
JOBS = ["--gpus-per-run", "0", "--cpus-per-run", "1", "--mem", "1G", "--time", "30:00"]  # the node has 2 CPUs: 2 runs at once
HOLD = "--sbatch-line=--begin=now+3600"  # submitted held, so that the queue is seen before anything starts
HEADER = re.compile(r"^==== fastft: attempt (\d+) of (\S+): SLURM task (\S+) .*, (\S+ \S+)$", re.M)


def demo_plan(tmp_path: Path, name: str = "demo-near-far", epochs: int = 2, keep=None, extra=(), claims=True) -> Path:
    """The shipped demo plan, seed 0, ``epochs`` epochs; ``keep``: only these of its runs."""
    plan = yaml.safe_load(DEMO.read_text())
    plan.update(name=name, seeds=[0])
    plan["defaults"].update(epochs=epochs, plateau_epochs=0)  # runs this short are not tests of learning
    plan["runs"] = [r for r in plan["runs"] if keep is None or r["name"] in keep] + list(extra)
    names = {r["name"] for r in plan["runs"]}  # the report's comparisons and order: of the runs kept
    plan["report"] = {"pairs": [pr for pr in plan["report"]["pairs"] if set(pr) <= names],
                      "order": [n for n in plan["report"]["order"] if n in names]}
    if not claims:
        plan.pop("claims")
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(plan))
    return p


def sweep_cmd(plans, out: Path, store: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "fastft", "sweep", *map(str, plans), "--store", str(store), "--out", str(out),
            "--backend", "slurm", "--quiet", *JOBS, *extra]


def sweep(slurm, plans, out, store, *extra, env=None) -> str:
    r = subprocess.run(sweep_cmd(plans, out, store, *extra), env={**slurm.env, "OMP_NUM_THREADS": "1", **(env or {})},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def dry_run(slurm, plans, out, store) -> str:
    r = subprocess.run([sys.executable, "-m", "fastft", "sweep", *map(str, plans), "--store", str(store), "--out", str(out),
                        "--dry-run", "--quiet"], env=slurm.env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def run_dirs(out: Path) -> dict[str, Path]:
    """``<plan>/<run key>`` → run directory, from each run's plan membership (``sweep.json``)."""
    return {f"{m['plan']}/{m['key']}": d for d in sorted(out.iterdir()) if (d / "sweep.json").exists()
            for m in runs_mod.memberships(d)}


def registry(out: Path) -> dict[str, str]:
    return json.loads((out / "slurm" / "submitted.json").read_text())


def task_of(out: Path, run_dir: Path) -> str:
    return registry(out)[run_dir.name.rpartition("-")[2]]


def release(slurm, out: Path) -> None:
    for job in sorted({t.rpartition("_")[0] for t in registry(out).values()}):
        slurm.run("scontrol", "update", f"jobid={job}", "starttime=now", check=False)  # a finished one says so


def wait_finished(slurm, dirs, fail_fast=True, timeout=400):
    def done():
        bad = [d for d in dirs if fail_fast and (d / "failed.json").exists()]
        if bad:
            raise AssertionError(f"{bad[0].name} failed:\n" + (bad[0] / "sweep.log").read_text()[-3000:])
        return all(runs_mod.is_finished(d) for d in dirs)
    slurm.wait(done, f"{len(dirs)} runs to finish", timeout)


def attempts(run_dir: Path) -> list[tuple]:
    p = run_dir / "sweep.log"
    return HEADER.findall(p.read_text()) if p.exists() else []


# ---------------------------------------------------------------- scenarios on the cluster, run at once
# Each scenario is a generator that yields the name of each stage it has passed (its assertions are in it); the
# scenarios run in threads at once — a requeued task waits, a source and its fine-tune run one after the other, so
# alone each would leave one of the node's 2 CPUs idle — and each test waits for its stage and reports it.
def _demo(slurm, store, tmp):
    """The demo plan and a second plan sharing its near source, submitted twice at once with ``$USER`` unset (as in
    a root shell under CI), held (``--begin``) until the queue has been looked at."""
    plans = [demo_plan(tmp), demo_plan(tmp, "demo-more", keep=("near",), claims=False, extra=[
        {"name": "ft-near-lr", "set": "target", "mode": "finetune", "source": "near", "overrides": {"lr": 0.003}}])]
    out = tmp / "runs"
    env = {k: v for k, v in slurm.env.items() if k != "USER"}
    procs = [subprocess.Popen(sweep_cmd(plans, out, store, "--submit", HOLD), env={**env, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    dirs = run_dirs(out)
    assert len(dirs) == 7 and len(set(dirs.values())) == 6, "near is shared by the two plans: one run directory"
    reg = registry(out)
    assert sorted(reg) == sorted(d.name.rpartition("-")[2] for d in set(dirs.values())) and len(set(reg.values())) == 6
    queued = {k: v for k, v in slurm.tasks().items() if v[2].startswith("fastft-demo-")}
    assert sorted(queued) == sorted(reg.values()), "every run is one task, queued once"
    assert all(v[0] == "PENDING" for v in queued.values())
    assert sum("nothing to submit: every run is finished or queued" in o for o in outs) == 1, outs
    # each fine-tune waits for its own source's task alone (the shared near serves both plans' fine-tunes)
    for key, src in (("demo-near-far/ft-near-s0", "demo-near-far/near-s0"), ("demo-near-far/ft-far-s0", "demo-near-far/far-s0"),
                     ("demo-more/ft-near-lr-s0", "demo-more/near-s0")):
        show = slurm.run("scontrol", "show", "job", task_of(out, dirs[key])).stdout
        assert re.search(r"Dependency=(\S+)", show)[1] == f"afterok:{task_of(out, dirs[src])}(unfulfilled)", show
        script = Path(re.search(r"Command=(\S+)", show)[1]).read_text()
        assert "#SBATCH --kill-on-invalid-dep=yes" in script and f"#SBATCH --chdir={out}" in script
    shown = dry_run(slurm, plans, out, store)
    near, ft = task_of(out, dirs["demo-near-far/near-s0"]), task_of(out, dirs["demo-near-far/ft-near-s0"])
    assert re.search(rf"near-s0 .* pending: job {near} \(BeginTime\)\n", shown), shown
    assert re.search(rf"ft-near-s0 .* pending: job {ft}, waiting for near-s0  after near-s0\n", shown), shown
    assert "  5 pending\n" in shown and "  2 pending\n" in shown, shown
    yield "queued"
    release(slurm, out)
    wait_finished(slurm, set(dirs.values()))
    for key, d in dirs.items():
        (a,) = attempts(d)  # one log per run, one attempt
        assert a[1] == d.name and a[2] == task_of(out, d)
        src = json.loads((d / "sweep.json").read_text())["memberships"][0]["source_template"]
        if src:  # started after its own source had finished
            finished = datetime.datetime.fromtimestamp(int((dirs[f"{key.split('/')[0]}/{src}-s0"] / "final.json").stat().st_mtime))
            assert a[3].replace(" ", "T") >= finished.isoformat(), (key, a)
    rep = write_report(out, tmp / "report")
    md = (tmp / "report" / "report.md").read_text()
    assert "## demo-near-far" in md and "## demo-more" in md and "## -" not in md
    assert "The paper's findings, checked: 3" in md and "| fine-tuning from the near source beats training from scratch | §4.3 |" in md
    s = rep["summary"]
    assert sorted(s[s["plan"] == "demo-near-far"]["template"]) == ["far", "ft-far", "ft-near", "near", "scratch"]
    assert sorted(s[s["plan"] == "demo-more"]["template"]) == ["ft-near-lr", "near"]
    assert {Path(f).name for f in rep["figures"]} >= {"final-demo-near-far.png", "curves-demo-near-far.png", "final-demo-more.png"}
    shown = dry_run(slurm, plans, out, store)
    assert "  5 finished\n" in shown and "  2 finished\n" in shown, shown
    yield "reported"


def _cancelled(slurm, store, tmp):
    """A source cancelled while it trains: its fine-tune is cancelled at once, the other source's fine-tune runs, and
    ``--submit`` queues the source and its fine-tune again."""
    plan = demo_plan(tmp, "cancel", keep=("near", "far", "ft-near", "ft-far"), claims=False)
    out = tmp / "runs"
    sweep(slurm, [plan], out, store, "--submit")
    dirs = run_dirs(out)
    near, ft_near = task_of(out, dirs["cancel/near-s0"]), task_of(out, dirs["cancel/ft-near-s0"])
    slurm.wait(lambda: attempts(dirs["cancel/near-s0"]), "near to start")
    slurm.run("scancel", near)
    slurm.wait(lambda: slurm.tasks()[ft_near][:2] == ("CANCELLED", "DependencyNeverSatisfied"), "ft-near to be cancelled", 120)
    wait_finished(slurm, [dirs["cancel/far-s0"], dirs["cancel/ft-far-s0"]])  # far's fine-tune does not wait for near
    assert not attempts(dirs["cancel/ft-near-s0"]), "it never started"
    shown = dry_run(slurm, [plan], out, store)
    assert re.search(rf"near-s0 .* cancelled: job {near}(; it resumes from its checkpoint)?; --submit resubmits it\n", shown), shown
    assert re.search(rf"ft-near-s0 .* cancelled: job {ft_near} \(its dependency failed\); --submit resubmits it", shown), shown
    assert "  2 finished, 2 cancelled\n" in shown, shown
    said = sweep(slurm, [plan], out, store, "--submit")
    assert "plan cancel: 4 runs: 2 to submit, 2 finished, 0 queued" in said, said
    wait_finished(slurm, dirs.values())
    assert [len(attempts(dirs[f"cancel/{k}-s0"])) for k in ("near", "far", "ft-near", "ft-far")] == [2, 1, 1, 1]
    assert task_of(out, dirs["cancel/near-s0"]) != near
    yield "recovered"


def _stuck(slurm, store, tmp):
    """Arrays submitted by hand (``bash submit-….sh``), as an older fastft wrote them (no ``--kill-on-invalid-dep``):
    the source fails, its fine-tune pends forever (DependencyNeverSatisfied). fastft finds it by its job name, shows
    it stuck, and ``--submit`` cancels it and queues the source and its fine-tune again."""
    plan = demo_plan(tmp, "stuck", keep=("near", "ft-near"), claims=False)
    out = tmp / "runs"
    said = sweep(slurm, [plan], out, store)
    script = re.search(r"submit with: bash (\S+)", said)[1]
    for f in (out / "slurm").glob("*.sbatch"):
        f.write_text(f.read_text().replace("#SBATCH --kill-on-invalid-dep=yes\n", ""))
    # the source's trainer stops itself at step 2 (checkpoints, exits 143): a failure, not a signal to the task
    subprocess.run(["bash", script], env={**slurm.env, "FASTFT_TEST_SIGTERM_AT_STEP": "2", "OMP_NUM_THREADS": "1"},
                   check=True, capture_output=True)
    dirs = run_dirs(out)
    ft = slurm.wait(lambda: next((k for k, v in slurm.tasks().items() if "stuck-after-near-s0" in v[2] and
                                  v[:2] == ("PENDING", "DependencyNeverSatisfied")), None), "the fine-tune to be stuck", 300)
    assert json.loads((dirs["stuck/near-s0"] / "failed.json").read_text())["exit_code"] == 143
    shown = dry_run(slurm, [plan], out, store)
    assert re.search(r"near-s0 .* failed: job \d+_0: FAILED \(exit 143\); it resumes from its checkpoint; --submit resubmits it\n", shown), shown
    assert re.search(rf"ft-near-s0 .* stuck: job {ft}: its dependency failed; --submit cancels and resubmits it", shown), shown
    said = sweep(slurm, [plan], out, store, "--submit")
    assert f"1 queued tasks could never start (a dependency failed): cancelled, their runs listed again: {ft}" in said, said
    assert "plan stuck: 2 runs: 2 to submit, 0 finished, 0 queued" in said, said
    assert slurm.tasks().get(ft, ("CANCELLED",))[0] == "CANCELLED", "cancelled (a pending array task then leaves the queue)"
    wait_finished(slurm, dirs.values(), fail_fast=False)
    log = (dirs["stuck/near-s0"] / "sweep.log").read_text()
    assert [a[0] for a in attempts(dirs["stuck/near-s0"])] == ["1", "1"], "a new task: attempt 1 again, in the same log"
    assert "preempted: checkpointed at epoch 0 step 2" in log and "(epoch 0, step 2)" in log, log[-3000:]
    assert len(attempts(dirs["stuck/ft-near-s0"])) == 1
    yield "recovered"


def _requeue(slurm, store, tmp):
    """``scontrol requeue`` (SLURM sends SIGTERM to the task's processes and starts it again), then the time-limit
    warning (SIGUSR1 to the batch shell, as ``--signal=B:USR1@lead`` sends it; the task requeues itself): each time
    the trainer checkpoints where it is and the next attempt resumes exactly there, appending to the run's one log."""
    epochs = 30
    plan = demo_plan(tmp, "requeue", epochs=epochs, keep=("near",), claims=False)
    out = tmp / "runs"
    sweep(slurm, [plan], out, store, "--submit")
    (d,) = run_dirs(out).values()
    task = task_of(out, d)
    for n, stop in ((2, ["scontrol", "requeue", task]), (3, ["scancel", "--batch", "--signal=USR1", task])):
        first = slurm.wait(lambda: len(attempts(d)) == n - 1 and runs_mod.latest_checkpoint(d), f"a checkpoint of attempt {n - 1}")
        slurm.wait(lambda: runs_mod.latest_checkpoint(d) not in (None, first), f"a second checkpoint of attempt {n - 1}")
        assert not runs_mod.is_finished(d)
        slurm.run(*stop)
        slurm.wait(lambda: len(attempts(d)) == n, f"attempt {n}")
    wait_finished(slurm, [d])
    log = (d / "sweep.log").read_text()
    assert [a[0] for a in attempts(d)] == ["1", "2", "3"] and {a[2] for a in attempts(d)} == {task}
    stopped = re.findall(r"preempted: checkpointed at epoch (\d+) step (\d+)", log)
    resumed = re.findall(r"resuming \S+ from \S+ \(epoch (\d+), step (\d+)\)", log)
    assert len(stopped) == 2 and resumed == stopped, log[-3000:]
    assert log.count("fastft: SIGTERM (cancelled, requeued or preempted)") == 1
    assert log.count("fastft: the time limit is near: checkpointing, then requeueing task") == 1
    assert [m["epoch"] for m in runs_mod.read_metrics(d)] == list(range(1, epochs + 1)), "every epoch once"
    slurm.wait(lambda: slurm.tasks()[task][0] == "COMPLETED", "the task to complete (final.json is written before it exits)")
    yield "resumed"


class Scenarios:
    """Runs scenario generators in threads; :meth:`passed` waits until one has passed a stage (or re-raises what
    failed it, with its traceback)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.stages: dict[str, set] = {}
        self.errors: dict[str, BaseException] = {}
        self.threads = []

    def start(self, name, fn, *args):
        def run():
            try:
                for stage in fn(*args):
                    with self.cond:
                        self.stages.setdefault(name, set()).add(stage)
                        self.cond.notify_all()
            except BaseException as e:  # noqa: BLE001 - handed to the test that waits for it
                with self.cond:
                    self.errors[name] = e
                    self.cond.notify_all()
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def passed(self, name: str, stage: str, timeout: float = 900):
        with self.cond:
            if not self.cond.wait_for(lambda: stage in self.stages.get(name, ()) or name in self.errors, timeout):
                raise AssertionError(f"scenario {name} did not reach {stage!r} in {timeout:.0f} s")
            if stage not in self.stages.get(name, ()):
                raise self.errors[name]


SCENARIOS = {"demo": _demo, "cancelled": _cancelled, "stuck": _stuck, "requeue": _requeue}
TESTS = {  # test → the scenario it reports
    "test_concurrent_submits_queue_each_run_once_and_each_fine_tune_waits_for_its_own_source": "demo",
    "test_demo_plan_on_slurm_finishes_and_reports_like_a_local_sweep": "demo",
    "test_a_cancelled_source_cancels_its_fine_tunes_at_once_and_a_resubmit_recovers_them": "cancelled",
    "test_a_failed_source_leaves_stuck_fine_tunes_that_a_resubmit_cancels_and_recovers": "stuck",
    "test_requeue_and_time_limit_signal_mid_run_resume_without_repeating_an_epoch": "requeue"}


@pytest.fixture(scope="module")
def scenarios(request, slurm, store, tmp_path_factory):
    """The scenarios of the selected tests, started at once; at the end, every thread is waited for (the cluster's
    teardown then cancels whatever a failed scenario left queued)."""
    s = Scenarios()
    for name in sorted({TESTS[i.name] for i in request.session.items if i.name in TESTS}):
        s.start(name, SCENARIOS[name], slurm, store, tmp_path_factory.mktemp(f"slurm-{name}"))
    yield s
    for t in s.threads:
        t.join(timeout=900)


def test_concurrent_submits_queue_each_run_once_and_each_fine_tune_waits_for_its_own_source(scenarios):
    scenarios.passed("demo", "queued")


def test_demo_plan_on_slurm_finishes_and_reports_like_a_local_sweep(scenarios):
    scenarios.passed("demo", "reported")


def test_a_cancelled_source_cancels_its_fine_tunes_at_once_and_a_resubmit_recovers_them(scenarios):
    scenarios.passed("cancelled", "recovered")


def test_a_failed_source_leaves_stuck_fine_tunes_that_a_resubmit_cancels_and_recovers(scenarios):
    scenarios.passed("stuck", "recovered")


def test_requeue_and_time_limit_signal_mid_run_resume_without_repeating_an_epoch(scenarios):
    scenarios.passed("requeue", "resumed")


# ---------------------------------------------------------------- what fastft asks SLURM for
def test_resources_default_from_the_partition_and_mistakes_are_named_before_any_work(slurm, store, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    c = sl.cluster(None)
    assert (c.partition, c.node_cpus, c.node_gpus, c.max_array, c.max_time_s) == ("debug", 2, 0, 1001, None)
    res = sl.resolve(sl.Resources(), c)
    assert (res.gpus, res.cpus, res.partition) == (0, 2, "debug"), "a CPU partition: CPU jobs of a whole node"
    plan = demo_plan(tmp_path, "bad", keep=("near",), claims=False)
    for flags, message in ((["--gpus-per-run", "1"], "partition debug has no GPUs"),
                           (["--cpus-per-run", "4"], "at most 2 CPUs, so the jobs would pend forever"),
                           (["--time", "4:00"], "too short for --signal-lead 120"),
                           (["--partition", "gpu"], "no such partition here (partitions: debug)")):
        r = subprocess.run([sys.executable, "-m", "fastft", "sweep", str(plan), "--store", str(store), "--out", str(tmp_path / "o"),
                            "--backend", "slurm", *flags], env=slurm.env, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "o").exists(), "nothing is written before the mistake is named"


def test_queue_states_of_tasks_slurm_has_forgotten_come_from_the_run_directories(slurm, store, tmp_path, monkeypatch):
    """Tasks that left ``squeue`` (ended more than MinJobAge ago) on a cluster without accounting: ``sacct`` cannot
    tell, the states come from the run directories, and the note says so."""
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.setenv("PATH", slurm.env["PATH"])
    plan = sw.load_plan(demo_plan(tmp_path, "forgot", keep=("near", "ft-near"), claims=False))
    runs = sw.expand(plan)
    out = tmp_path / "out"
    sw.prepare(plan, runs, str(store), out)
    (out / "slurm").mkdir()
    (out / "slurm" / "submitted.json").write_text(json.dumps({r.run_id: f"{999990 + i}_0" for i, r in enumerate(runs)}))
    runs[0].run_dir.mkdir(parents=True)
    (runs[0].run_dir / "failed.json").write_text(json.dumps({"exit_code": 1}))
    states, note = sl.queue_states(runs, out)
    assert states == {"near-s0": ("failed", "job 999990_0: failed (exit 1); --submit resubmits it"),
                      "ft-near-s0": ("ended", "job 999991_0 left the queue unfinished (cancelled or killed); --submit resubmits it")}
    assert note == "sacct cannot tell (Slurm accounting storage is disabled)", note


def test_resolve_checks_each_resource_against_the_largest_node(tmp_path):
    gpu = sl.Cluster(partition="gpu", node_cpus=32, node_mem_mb=256000, node_gpus=4, max_time_s=86400, max_array=1001)
    r = sl.resolve(sl.Resources(), gpu)
    assert (r.gpus, r.cpus, r.time) == (1, 8, "24:00:00"), "a GPU run: its share of a node's cores"
    assert sl.resolve(sl.Resources(), replace(gpu, max_time_s=4 * 3600)).time == "4:00:00", "the partition's MaxTime"
    assert sl.resolve(sl.Resources(gpus=2), gpu).cpus == 16 and sl.resolve(sl.Resources(gpus=0), gpu).cpus == 32
    assert sl.resolve(sl.Resources(sbatch_lines=("#SBATCH --exclusive", "--nice=5")), gpu).sbatch_lines == ("--exclusive", "--nice=5")
    for res, message in ((sl.Resources(gpus=5), "at most 4 GPUs"), (sl.Resources(cpus=33), "at most 32 CPUs"),
                         (sl.Resources(mem="300G"), "at most 256000 MB"), (sl.Resources(mem="lots"), "not a SLURM memory size"),
                         (sl.Resources(time="2-00:00:00"), "exceeds partition gpu's MaxTime 24:00:00"),
                         (sl.Resources(time="UNLIMITED"), "exceeds partition gpu's MaxTime"),
                         (sl.Resources(time="5:59"), r"give --time 0:06:00 or more"),
                         (sl.Resources(time="10:00", signal_lead=300), r"give --time 0:12:00 or more"),
                         (sl.Resources(time="1h"), "not a SLURM time"), (sl.Resources(signal_lead=0), "at least 1"),
                         (sl.Resources(throttle=0), "--array-throttle 0"), (sl.Resources(gpus=-1), "give 0"),
                         (sl.Resources(sbatch_lines=("exclusive",)), "give an sbatch option")):
        with pytest.raises(FastFTError, match=message):
            sl.resolve(res, gpu)
    with pytest.raises(FastFTError, match="has no GPUs"):
        sl.resolve(sl.Resources(gpus=1), sl.Cluster(partition="cpu", node_cpus=4, node_gpus=0))
    assert sl.resolve(sl.Resources(), sl.Cluster()).gpus == 1, "no partition to read: one GPU, as before"
    for t, s in (("30", 1800), ("30:15", 1815), ("2:00:00", 7200), ("1-2", 93600), ("1-2:30", 95400), ("1-00:00:01", 86401)):
        assert sl.parse_time(t) == s, t


def test_arrays_group_fine_tunes_by_their_source_and_split_at_max_array_size(store, tmp_path):
    plan = yaml.safe_load(demo_plan(tmp_path, "grp", keep=("near", "far", "ft-far"), claims=False).read_text())
    plan["runs"].append({"name": "fz", "set": "target", "mode": "finetune", "source": "near", "grid": {"freeze": [0, 1, 2, 3, 4]}})
    (tmp_path / "grp.yaml").write_text(yaml.safe_dump(plan))
    plan = sw.load_plan(tmp_path / "grp.yaml")
    runs = sw.expand(plan)
    sw.prepare(plan, runs, str(store), tmp_path / "out")
    merged = sw.merge([runs])
    arrays = sl.plan_arrays(merged, {}, max_array=3)
    keys = [[r.key.split("/")[1] for r in A.runs] for A in arrays]
    assert keys == [["near-s0", "far-s0"], ["ft-far-s0"], ["fz-freeze0-s0", "fz-freeze1-s0", "fz-freeze2-s0"],
                    ["fz-freeze3-s0", "fz-freeze4-s0"]], keys
    l0 = arrays[0].name
    assert [A.after for A in arrays] == [[], [(l0, 1)], [(l0, 0)], [(l0, 0)]]
    assert arrays[2].name.startswith("grp-after-near-s0-") and arrays[2].name != arrays[3].name
    # near still queued from an earlier submission: its fine-tunes wait for that task, near is not listed again
    again = sl.plan_arrays(merged, {merged[0].run_id: ("job:77", 4)}, max_array=1001)
    assert [[r.key.split("/")[1] for r in A.runs][:1] for A in again] == [["far-s0"], ["fz-freeze0-s0"], ["ft-far-s0"]]
    assert [len(A.runs) for A in again] == [1, 5, 1] and [A.after for A in again] == [[], [("job:77", 4)], [(again[0].name, 0)]]
    res = sl.Resources(gpus=2, cpus=16, time="1:00:00", partition="gpu", throttle=2, sbatch_lines=("--exclusive",),
                       setup=("module load cuda",))
    sl.write_arrays(arrays, merged, tmp_path / "out", res)
    sh = arrays[2].script.read_text()
    for line in ("#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=16", "#SBATCH --array=0-2%2", "#SBATCH --exclusive",
                 f"#SBATCH --chdir={tmp_path / 'out'}", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append", "#SBATCH --time=1:00:00"):
        assert line + "\n" in sh, line
    assert sh.index("module load cuda") < sh.index("-m fastft") and '--port "$((20000 + SLURM_JOB_ID % 20000))"' in sh
    tasks = arrays[2].script.with_suffix(".txt").read_text().splitlines()
    assert all(f"source={runs[0].run_dir}" in x and x.endswith("--procs 2") for x in tasks)
    log = tmp_path / "out" / "slurm" / "logs" / f"fastft-{arrays[2].name}-1.log"
    assert log.is_symlink() and log.resolve() == arrays[2].runs[1].run_dir.resolve() / "sweep.log"
    cpu = sl.Resources(gpus=0, cpus=2, time="1:00:00")
    sl.write_arrays(arrays, merged, tmp_path / "out", cpu)
    assert "--gres" not in arrays[0].script.read_text() and "--procs" not in arrays[0].script.with_suffix(".txt").read_text()
    # the same runs trained into another runs directory are other arrays
    other = sw.expand(plan)
    sw.prepare(plan, other, str(store), tmp_path / "out2")
    assert sl.plan_arrays(sw.merge([other]), {}, 1001)[0].name != l0
