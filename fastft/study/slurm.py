"""The SLURM backend of ``fastft sweep``: a sweep's run DAG as job arrays — written, submitted, watched, recovered.

**Dependencies: one array per set of source tasks.** The runs that wait for nothing (sources, scratch runs, and
runs whose source has finished) share one array per dependency depth; every other run goes into the array of the
runs that wait for exactly the same source task(s) — in the study, the fine-tunes of one source model of one seed —
with ``afterok`` on those tasks alone. So a fine-tune starts as soon as its own source has finished, not when all
sources of its level have. ``aftercorr`` (task i after task i) was the alternative, and was not chosen: it needs
the fine-tunes of a source at the source's index in arrays of equal shape, one array per fine-tune of a source,
and cannot express a source that is a task of an earlier submission (a run shared by plans, or one still queued
when the sweep is submitted again). Arrays larger than the cluster's ``MaxArraySize`` are split.

**Failure.** Every array has ``--kill-on-invalid-dep=yes``: when a source fails or is cancelled, SLURM cancels its
fine-tunes at once (otherwise they pend forever as ``DependencyNeverSatisfied``). ``fastft sweep … --submit`` again
lists every unfinished run that is not queued — the failed or cancelled ones and everything depending on them —
and first cancels tasks of earlier submissions that can no longer start: stuck on a dependency that can never be
satisfied (an array submitted with ``--kill-on-invalid-dep=no``, or by an older fastft), or waiting for a source
that is listed again. Tasks of earlier submissions are found by the job ids fastft recorded
(``<out>/slurm/submitted.json``: run id → ``<array job>_<task>``) among the jobs ``squeue`` lists for the user
``id -un`` names (``$USER`` may be unset, as in a root shell under CI); a submission holds
``<out>/slurm/submit.lock`` from reading the queue to recording its jobs, so two at once queue each run once.

**Signals.** SLURM sends the batch shell SIGUSR1 ``--signal-lead`` seconds before the time limit (``B:USR1@lead``);
the shell sends the trainer SIGTERM (a multi-GPU run's launcher passes it to its ranks), the trainer checkpoints
after its step and exits, and the shell requeues the task unless the run has finished (a time limit does not
requeue by itself). SIGTERM is SLURM's own stop — ``scancel``, ``scontrol requeue``,
preemption — and SLURM signals every process of the task, so the trainer checkpoints too; the task is not
requeued by fastft then: SLURM requeues it when it means to (requeue, preemption with ``PreemptMode=REQUEUE``), and a
cancelled task stays cancelled. Both resume exactly where they stopped when the task starts again.

**Logs.** One log per run, ``<run>/sweep.log`` (the local backend's too): each task's ``--output`` is
``<out>/slurm/logs/<job name>-<task>.log``, a link to its run's log, opened with ``--open-mode=append`` so that a
requeued task adds to it; every attempt starts with a header line (attempt, task, host, time).

**Queue state.** :func:`queue_states` says where each run of a submitted sweep stands (``fastft sweep --dry-run``):
``squeue -t all`` lists queued tasks and those that ended within the cluster's ``MinJobAge``; ``sacct`` older ones
where the cluster keeps accounting; else the run directory (``failed.json``, which the task writes when its trainer
fails) tells.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.store import lock_file
from ..errors import FastFTError
from ..files import fsync_write
from ..runs import complete_checkpoints, is_finished
from .local import record_membership, state as dir_state
from .plan import RunSpec, merge
from .slurm_cluster import Cluster, Resources, _run, cluster, describe, parse_time, require_submit, resolve, user

# the cluster side lives in .slurm_cluster; its public names stay importable from here (the CLI and users use them)
__all__ = ["Array", "Cluster", "Resources", "Task", "cluster", "describe", "parse_time", "plan_arrays", "queue",
           "queue_states", "require_submit", "resolve", "submit", "sweep", "user", "write_arrays", "write_submit"]

LOCK_WAIT_S = 600         # a --submit waits this long for another one on the same runs directory
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
        "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"}
FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


@dataclass
class Array:
    """One job array: runs that wait for the same tasks, one per task."""
    name: str        # "<plan>-<what it waits for>-<hash of its runs>": its job name (fastft-<name>) and its files'
    runs: list
    after: list      # (array name, or "job:<id>" of an earlier submission; task index): the tasks it waits for (afterok)
    script: Path | None = None


@dataclass
class Task:
    state: str
    reason: str = ""
    exit: str = ""
    name: str = ""


def queue(required: bool = False) -> tuple[dict[str, Task] | None, str]:
    """This user's tasks that SLURM still knows (queued, or ended within ``MinJobAge``): ``<job>_<task>`` → Task,
    and a note; ``None`` where ``squeue`` is not here or failed (an error when ``required``)."""
    r = _run(["squeue", "-h", "-r", "-t", "all", "-u", user(), "-o", "%i|%T|%r|%j"])
    if r is None or r.returncode:
        why = "squeue is not installed here" if r is None else f"squeue failed: {r.stderr.strip() or r.returncode}"
        if required:
            raise FastFTError(f"cannot read the SLURM queue ({why}); submit from a SLURM login node")
        return None, why
    tasks = {}
    for line in r.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            tasks[parts[0]] = Task(parts[1].rstrip("+"), parts[2], name=parts[3])
    return tasks, ""


def accounting(tasks: list[str]) -> tuple[dict[str, Task], str]:
    """``sacct``'s end states of these tasks (for those that left ``squeue``), and a note where it cannot tell
    (a cluster without an accounting database)."""
    jobs = sorted({t.rpartition("_")[0] for t in tasks})
    if not jobs:
        return {}, ""
    r = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(jobs), "-o", "JobID,State,ExitCode"])
    if r is None or r.returncode:
        why = "not installed" if r is None else (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return {}, f"sacct cannot tell ({why})"
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            out[parts[0]] = Task(parts[1].split()[0], "", parts[2])
    return out, ""


def registry(out: Path) -> dict[str, str]:
    p = out / "slurm" / "submitted.json"
    if not p.exists():
        return {}
    try:
        reg = json.loads(p.read_text())
    except json.JSONDecodeError:
        raise FastFTError(f"{p} is not JSON (cut short?): delete it to forget earlier submissions (their runs may then "
                          "be queued twice; check squeue first)") from None
    if not isinstance(reg, dict):
        raise FastFTError(f"{p} is not a run id → task map; delete it to forget earlier submissions")
    return reg


def known_tasks(runs: list[RunSpec], out: Path, tasks: dict[str, Task] | None) -> dict[str, str]:
    """Run id → its latest task: recorded by ``--submit`` (``submitted.json``), or found in the queue by the job name
    fastft gave its array (``fastft-<array>``: line i of ``<out>/slurm/<array>.txt`` is task i's run) — so arrays
    submitted by hand (``bash submit-….sh``) are known too. A queued task wins, then the newest."""
    reg = registry(out)
    found = {r.run_id: [reg[r.run_id]] for r in runs if r.run_id in reg}
    by_dir = {str(r.run_dir): r.run_id for r in runs}
    lists: dict[str, list[str]] = {}
    for task, t in (tasks or {}).items():
        i = task.rpartition("_")[2]
        if not t.name.startswith("fastft-") or not i.isdigit():
            continue
        name = t.name[len("fastft-"):]
        if name not in lists:
            f = out / "slurm" / f"{name}.txt"
            lists[name] = [shlex.split(x)[0] for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []
        rid = by_dir.get(lists[name][int(i)]) if int(i) < len(lists[name]) else None
        if rid:
            found.setdefault(rid, []).append(task)
    live = lambda task: task in (tasks or {}) and tasks[task].state in LIVE  # noqa: E731
    job = lambda task: int(task.partition("_")[0]) if task.partition("_")[0].isdigit() else -1  # noqa: E731
    return {rid: max(ts, key=lambda x: (live(x), job(x))) for rid, ts in found.items()}


def queue_states(runs: list[RunSpec], out: Path) -> tuple[dict[str, tuple[str, str]], str]:
    """Where each run of a submitted sweep stands: key → (state, detail) — finished, running, pending (with what it
    waits for), stuck (a dependency that can never be satisfied), failed, cancelled, or its run directory's state
    (interrupted, to run) — and a note on what could not be read. Empty for a sweep never submitted."""
    tasks, note = queue()
    reg = known_tasks(runs, out, tasks)
    if not reg:
        return {}, ""
    tasks = tasks or {}
    gone = [reg[r.run_id] for r in runs if r.run_id in reg and reg[r.run_id] not in tasks and not is_finished(r.run_dir)]
    ended, why = accounting(gone)
    notes = [n for n in (note, why) if n]
    by_key = {r.key: r for r in runs}
    out_ = {}
    for r in runs:
        task = reg.get(r.run_id)
        local = dir_state(out, r)
        if local == "finished" or task is None:
            out_[r.key] = (local, "")
            continue
        t = tasks.get(task) or ended.get(task)
        if t is not None and t.state in LIVE:
            if t.state == "PENDING" and t.reason == "DependencyNeverSatisfied":
                out_[r.key] = ("stuck", f"job {task}: its dependency failed; --submit cancels and resubmits it")
            elif t.state == "PENDING" and t.reason == "Dependency":
                out_[r.key] = ("pending", f"job {task}, waiting for {', '.join(by_key[d].key for d in r.deps) or 'its dependency'}")
            elif t.state == "PENDING" or t.state.startswith("REQUEUE"):
                out_[r.key] = ("pending", f"job {task}" + (f" ({t.reason})" if t.reason and t.reason != "None" else ""))
            else:
                out_[r.key] = ("running", f"job {task}")
            continue
        # the task has ended and its run is unfinished: how (the queue or sacct; else its run directory), and whether
        # a new task resumes it
        ckpt = "; it resumes from its checkpoint" if complete_checkpoints(r.run_dir) else ""
        failed = r.run_dir / "failed.json"
        rc = t.exit if t is not None and t.exit else (json.loads(failed.read_text()).get("exit_code") if failed.exists() else None)
        code = f" (exit {rc})" if rc is not None else ""
        if t is not None and t.state == "CANCELLED":
            why_ = " (its dependency failed)" if t.reason == "DependencyNeverSatisfied" else ""
            out_[r.key] = ("cancelled", f"job {task}{why_}{ckpt}; --submit resubmits it")
        elif (t is not None and (t.state in FAILED or t.state == "COMPLETED")) or failed.exists():
            out_[r.key] = ("failed", f"job {task}: {t.state if t else 'failed'}{code}{ckpt}; --submit resubmits it")
        else:
            out_[r.key] = ("ended", f"job {task} left the queue unfinished (cancelled or killed){ckpt}; --submit resubmits it")
    return out_, "; ".join(notes)


# ---------------------------------------------------------------- planning and writing the arrays
def plan_arrays(runs: list[RunSpec], placed: dict, max_array: int) -> list[Array]:
    """The arrays that train the runs that are neither finished nor ``placed`` (run id → (array or ``job:<id>``,
    task): tasks of earlier submissions still queued; filled here). Runs that wait for the same tasks share an array
    (see the module's docstring); arrays come in dependency order, none larger than ``max_array``."""
    by_key = {r.key: r for r in runs}
    todo = [r for r in runs if r.run_id not in placed and not is_finished(r.run_dir)]
    depth: dict[str, int] = {}
    for r in todo:  # runs come in dependency order (sweep.expand, sweep.merge)
        depth[r.key] = 1 + max((depth[d] for d in r.deps if d in depth), default=-1)
    arrays = []
    for lv in sorted(set(depth.values())):
        groups: dict[tuple, list] = {}
        for r in todo:
            if depth[r.key] == lv:
                after = tuple(sorted({placed[by_key[d].run_id] for d in r.deps if by_key[d].run_id in placed}))
                groups.setdefault(after, []).append(r)
        for after, members in groups.items():
            waits = sorted({by_key[d].key.rpartition("/")[2] for r in members for d in r.deps if by_key[d].run_id in placed})
            what = f"after-{'+'.join(waits)}" if waits and len(waits) <= 2 else (f"L{lv}" if not waits else f"after-{len(waits)}-runs")
            for i in range(0, len(members), max_array):
                chunk = members[i:i + max_array]
                # named by the runs and where they are trained: arrays of two runs directories never share a name
                digest = hashlib.sha256(" ".join([str(chunk[0].run_dir.parent)] + [r.run_id for r in chunk]).encode()).hexdigest()[:8]
                name = f"{chunk[0].labels['plan']}-{what}-{digest}"
                for j, r in enumerate(chunk):
                    placed[r.run_id] = (name, j)
                arrays.append(Array(name, chunk, list(after)))
    return arrays


TASK_BODY = r"""set -uo pipefail
# line $SLURM_ARRAY_TASK_ID of the list: the run directory, then the arguments of `fastft`
eval "set -- $(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {list})"
run_dir=$1; shift
task="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
echo "==== fastft: attempt $((${{SLURM_RESTART_COUNT:-0}} + 1)) of $(basename "$run_dir"): SLURM task $task (job $SLURM_JOB_ID) on $(hostname), $(date '+%F %T')"
{setup}export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
rm -f "$run_dir/failed.json"
# SIGUSR1 comes {lead} s before the time limit (--signal=B:USR1@{lead}): the trainer (or a multi-GPU run's launcher,
# which passes it to its ranks) gets SIGTERM, checkpoints after its step and exits, and the task requeues itself (a
# time limit alone does not requeue) unless the run has finished. SIGTERM is SLURM stopping the task (scancel,
# scontrol requeue, preemption): SLURM signals the trainer too, and requeues the task itself when it means to.
child=
stop() {{
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  rc=143; [ -n "$child" ] && {{ wait "$child"; rc=$?; }}
}}
on_usr1() {{
  echo "fastft: the time limit is near: checkpointing, then requeueing task $task"
  stop
  trap 'exit 143' TERM
  [ -f "$run_dir/final.json" ] || scontrol requeue "$task" || echo "fastft: scontrol requeue $task failed"
  exit "$rc"
}}
on_term() {{
  echo "fastft: SIGTERM (cancelled, requeued or preempted): checkpointing"
  stop
  exit "$rc"
}}
trap on_usr1 USR1
trap on_term TERM
echo "$ {python} -m fastft $*"
{python} -m fastft "$@"{port} &
child=$!
wait "$child"
rc=$?
if [ "$rc" -ne 0 ]; then  # the trainer failed (not stopped by a signal to this task): say so in the run directory
  printf '{{"exit_code": %d, "backend": "slurm", "task": "%s", "log": "%s"}}\n' "$rc" "$task" "$run_dir/sweep.log" > "$run_dir/failed.json"
fi
exit "$rc"
"""


def write_arrays(arrays: list[Array], runs: list[RunSpec], out: Path, res: Resources) -> None:
    """``<out>/slurm/<name>.txt`` (a task's run directory and arguments per line), ``<name>.sbatch`` and the log links
    ``logs/fastft-<name>-<task>.log`` → ``<run>/sweep.log``. Files are named by their runs' ids: a later sweep never
    rewrites the list a queued array reads. Every path is absolute, and each job starts in ``<out>``."""
    d = out / "slurm"
    (d / "logs").mkdir(parents=True, exist_ok=True)
    by_key = {r.key: r for r in runs}
    # a multi-GPU run is `fastft train --procs N` (torchrun), on a rendezvous port of its own job
    procs = ["--procs", str(res.gpus)] if res.gpus > 1 else []
    port = ' --port "$((20000 + SLURM_JOB_ID % 20000))"' if res.gpus > 1 else ""
    for A in arrays:
        lines = []
        for i, r in enumerate(A.runs):
            src = by_key[r.deps[0]].run_dir if r.deps else None
            lines.append(shlex.join([str(r.run_dir), "train", *r.args(src), "progress=false", *procs]))
            r.run_dir.mkdir(parents=True, exist_ok=True)
            link = d / "logs" / f"fastft-{A.name}-{i}.log"
            link.unlink(missing_ok=True)
            link.symlink_to(r.run_dir / "sweep.log")
        lst = d / f"{A.name}.txt"
        fsync_write(lst, ("\n".join(lines) + "\n").encode())
        throttle = f"%{res.throttle}" if res.throttle else ""
        head = [f"--job-name=fastft-{A.name}", f"--array=0-{len(A.runs) - 1}{throttle}", f"--chdir={out}",
                f"--output={d / 'logs'}/%x-%a.log", "--open-mode=append", f"--time={res.time}", f"--cpus-per-task={res.cpus}"]
        head += [f"--gres=gpu:{res.gpus}"] if res.gpus else []
        head += [f"--{k}={v}" for k, v in (("mem", res.mem), ("partition", res.partition), ("account", res.account),
                                            ("qos", res.qos), ("constraint", res.constraint)) if v]
        head += ["--requeue", "--kill-on-invalid-dep=yes", f"--signal=B:USR1@{res.signal_lead}", *res.sbatch_lines]
        setup = "".join(f"{x}\n" for x in res.setup)
        body = TASK_BODY.format(list=shlex.quote(str(lst)), setup=setup, lead=res.signal_lead, python=shlex.quote(sys.executable),
                                port=port)
        A.script = d / f"{A.name}.sbatch"
        fsync_write(A.script, "#!/bin/bash\n" + "".join(f"#SBATCH {x}\n" for x in head) + "\n" + body)


def write_submit(arrays: list[Array], out: Path) -> Path:
    """``<out>/slurm/submit-<hash>.sh``: ``sbatch`` for each array in order, each with ``afterok`` on exactly the tasks
    it waits for; prints ``<array> <job id>`` per array (what ``--submit`` records)."""
    var = {A.name: f"J{i}" for i, A in enumerate(arrays)}
    lines = ["#!/bin/bash", "# written by fastft sweep --backend slurm; run it once (or pass --submit)", "set -euo pipefail"]
    for A in arrays:
        deps = ":".join(f"{ref[4:]}_{t}" if ref.startswith("job:") else f"${{{var[ref]}}}_{t}" for ref, t in A.after)
        dep = f"--dependency=afterok:{deps} " if deps else ""
        lines += [f"{var[A.name]}=$(sbatch --parsable {dep}{shlex.quote(str(A.script))} | cut -d';' -f1)",
                  f'echo "{A.name} ${{{var[A.name]}}}"']
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:8]
    p = out / "slurm" / f"submit-{digest}.sh"
    fsync_write(p, "\n".join(lines) + "\n")
    return p


def submit(arrays: list[Array], out: Path) -> dict[str, str]:
    """Run the submit script and record each run's task in ``<out>/slurm/submitted.json`` (run id → ``<job>_<task>``),
    also after a partial failure, so that the next submission knows what is queued."""
    script = write_submit(arrays, out)
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    ids = dict(line.split() for line in r.stdout.splitlines() if len(line.split()) == 2)
    reg = registry(out)
    for A in arrays:
        if A.name in ids:
            reg.update({run.run_id: f"{ids[A.name]}_{i}" for i, run in enumerate(A.runs)})
    fsync_write(out / "slurm" / "submitted.json", (json.dumps(reg, indent=1) + "\n").encode())
    if r.returncode:
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        if "sbatch: command not found" in r.stderr or "sbatch: not found" in r.stderr:
            err = f"sbatch not found: run on a SLURM login node, or submit later with bash {script}"
        raise FastFTError(f"submitting {script} failed after {len(ids)} of {len(arrays)} job arrays: {err}")
    return ids


# ---------------------------------------------------------------- a sweep on SLURM
def _lock(out: Path):
    """``<out>/slurm/submit.lock``, waited for (another submission holds it for seconds)."""
    p = out / "slurm" / "submit.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    deadline, told = time.monotonic() + LOCK_WAIT_S, False
    while True:
        try:
            return lock_file(p, f"the SLURM submissions of {out}")
        except FastFTError:
            if not os.access(p.parent, os.W_OK) or time.monotonic() > deadline:
                raise
            if not told:
                print(f"waiting for another fastft sweep submitting to {out} (it holds {p})", flush=True)
                told = True
            time.sleep(0.2)


def _queued(runs: list[RunSpec], out: Path, tasks: dict[str, Task] | None, cancel: bool) -> tuple[dict, list[str]]:
    """Runs whose task of an earlier submission is still queued → ("job:<id>", task); and the tasks that can no
    longer start — stuck on a dependency never satisfied, or waiting for a run that is listed again — which are
    cancelled when ``cancel`` (so that their runs are listed again) and otherwise left out of the placed ones."""
    reg = known_tasks(runs, out, tasks)
    by_key = {r.key: r for r in runs}
    placed, dead = {}, []
    for r in runs:  # dependency order: a source is decided before its fine-tunes
        task = reg.get(r.run_id)
        t = (tasks or {}).get(task or "")
        if t is None or t.state not in LIVE or is_finished(r.run_dir):
            continue
        if t.state == "PENDING":
            lost = [d for d in r.deps if by_key[d].run_id not in placed and not is_finished(by_key[d].run_dir)]
            if t.reason == "DependencyNeverSatisfied" or lost:
                dead.append(task)
                continue
        job, _, i = task.rpartition("_")
        placed[r.run_id] = (f"job:{job}", int(i))
    if dead and cancel:
        r = _run(["scancel", *dead])
        if r is None or r.returncode:
            raise FastFTError(f"scancel {' '.join(dead)} failed: {(r.stderr.strip() if r else 'scancel not found')}")
    return placed, dead


def sweep(plans_runs: list[list[RunSpec]], out: Path, res: Resources, c: Cluster, do_submit: bool) -> dict:
    """A sweep's plans on SLURM (``res``: :func:`resolve`'d for ``c``): the plans' runs as one DAG (a run shared by
    plans is one task), each run's plan membership recorded (``sweep.json``, as the local backend does, so that
    ``fastft report`` reads SLURM runs the same way), the arrays written and, with ``do_submit``, submitted — under
    the submission lock, after cancelling the queued tasks that can never start."""
    out = out.resolve()
    runs = merge(plans_runs)
    with _lock(out):
        tasks, note = queue(required=do_submit)
        placed, dead = _queued(runs, out, tasks, cancel=do_submit)
        queued = len(placed)
        for r in runs:
            record_membership(r)
        arrays = plan_arrays(runs, placed, c.max_array)
        write_arrays(arrays, runs, out, res)
        ids = submit(arrays, out) if do_submit and arrays else {}
        script = write_submit(arrays, out) if arrays and not do_submit else None
    return {"runs": runs, "arrays": arrays, "queued": queued, "dead": dead, "ids": ids, "script": script,
            "resources": describe(res, c), "notes": c.notes + ([note] if note else [])}
