"""The local backend: a sweep's DAG on this node's GPUs (or CPU slots), one process per slot, retries, dependants of
failed runs skipped, runs other sweeps hold waited for (and taken over when their lease goes stale), Ctrl-C /
SIGTERM passed to every running run (each checkpoints and stops)."""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import FastFTError
from ..files import write_json
from ..guard import failure, mark_failed
from ..runs import is_finished, read_final
from ..util import env
from ..util.children import supervisor
from . import launch, leases
from .plan import RunSpec


def state(out: Path, r: RunSpec) -> str:
    """Where a run stands, from its directory and claim alone (what ``--dry-run`` shows for a sweep in progress):
    finished, running (claimed by a live sweep, or by another host), failed, interrupted (has a complete checkpoint:
    the next sweep resumes it), or to run."""
    from ..runs import complete_checkpoints

    if r.run_dir is None:
        return "to run"
    if is_finished(r.run_dir):
        return "finished"
    claim = out / "claims" / (r.run_id or "")
    if r.run_id and claim.exists() and leases.stale(claim) is None:
        host = claim.read_text().partition(" ")[0]
        return "running" if host == socket.gethostname() else f"running on {host}"
    if (r.run_dir / "failed.json").exists():
        return "failed"
    return "interrupted" if complete_checkpoints(r.run_dir) else "to run"


def run_local(runs: list[RunSpec], out: Path, slots: list[dict], retries: int = 1, progress: bool = True,
              poll: float = 0.5, launcher: str | None = None) -> dict:
    """Run the DAG with one process per slot (a slot = env vars, e.g. CUDA_VISIBLE_DEVICES), each started by
    ``launcher`` (:mod:`.launch`: ``preloaded`` or ``fresh``; default: preloaded for CPU slots where the OS can). Returns the
    summary: the runs done, failed and skipped (a dependency failed), those that finished without learning, the
    seconds and the sweep's efficiency."""
    launcher = launch.check(launcher or launch.default(gpus=any("CUDA_VISIBLE_DEVICES" in s for s in slots)))
    return _Scheduler(runs, out, slots, retries, progress, launcher).run(poll)


class _Scheduler:
    """One local sweep: each run's state (pending, running, done, failed, skipped, elsewhere: another sweep holds
    it), a pass of :meth:`step` every ``poll`` seconds until nothing is left to wait for."""

    def __init__(self, runs: list[RunSpec], out: Path, slots: list[dict], retries: int, progress: bool, launcher: str):
        from ..util.progress import bar

        self.runs, self.out, self.retries, self.launcher = runs, out, retries, launcher
        self.state = {r.key: "pending" for r in runs}
        self.trained: list[str] = []  # runs this sweep trained to the end (for its efficiency)
        self.slots = len(slots)
        self.attempts = {r.key: 0 for r in runs}
        self.by_key = {r.key: r for r in runs}
        self.running: dict[str, tuple[subprocess.Popen | launch.Child, dict, object]] = {}
        self.free = list(slots)
        for r in runs:
            if is_finished(r.run_dir):
                self.state[r.key] = "done"
                record_membership(r)
        self.bar = bar(total=len(runs), initial=sum(s == "done" for s in self.state.values()), unit="run", desc="sweep",
                       enabled=progress, dynamic_ncols=True)
        self.shown: dict = {}
        self.beat = time.time()
        self.supervisor = supervisor()  # each run stops (checkpointed) if this sweep dies: fastft.util.children

    def run(self, poll: float) -> dict:
        t0 = time.time()

        def terminated(*_):
            raise Terminated

        old_term = signal.signal(signal.SIGTERM, terminated) if threading.current_thread() is threading.main_thread() else None
        try:
            while self.step():
                time.sleep(poll)
        except (KeyboardInterrupt, Terminated):
            _stop_runs(self.running, self.out, self.by_key, self.bar)
            raise
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
        self.bar.close()
        summary = {k: [key for key, s in self.state.items() if s == k] for k in ("done", "failed", "skipped")}
        summary["did_not_learn"] = [key for key in summary["done"] if not _learned(self.by_key[key].run_dir)]
        summary["secs"] = round(time.time() - t0, 1)
        summary["efficiency"] = efficiency([self.by_key[k].run_dir for k in self.trained], summary["secs"], self.slots)
        return summary

    def step(self) -> bool:
        """One pass; False once nothing runs and nothing is left to start or wait for."""
        self._reap()
        now = None  # every CLAIM_HEARTBEAT_S: refresh this sweep's claims, look for others' stale ones
        if time.time() - self.beat > leases.CLAIM_HEARTBEAT_S:
            leases.heartbeat(self.out, (self.by_key[k] for k in self.running))
            self.beat, now = time.time(), leases.fs_now(self.out / "claims")
        self._follow_others(now)
        for r in self.runs:  # dependants of failed runs
            if self.state[r.key] == "pending" and any(self.state[d] in ("failed", "skipped") for d in r.deps):
                self.state[r.key] = "skipped"
        self._launch_ready()
        self._status()
        return bool(self.running) or any(s in ("pending", "elsewhere") for s in self.state.values())

    def _done(self, key: str) -> None:
        self.state[key] = "done"
        self.bar.update(1)

    def _reap(self) -> None:
        """Finished processes: done, retried (up to ``retries``) or failed (``failed.json``)."""
        for key, (proc, slot, logf) in list(self.running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            logf.close()
            r = self.by_key[key]
            del self.running[key]
            self.free.append(slot)
            leases.release(self.out, r)
            log = r.run_dir / "sweep.log"
            if rc == 0 and is_finished(r.run_dir):
                self._done(key)
                self.trained.append(key)
            elif self.attempts[key] <= self.retries:
                self.state[key] = "pending"
                self.bar.write(f"run {key} failed (exit {rc}); retrying ({self.attempts[key]}/{self.retries}) — log {log}")
            else:
                self.state[key] = "failed"
                tail = log.read_text()[-3000:] if log.exists() else ""
                # the trainer's own record (a non-finite loss: its step and LR) is kept, the sweep's added
                mark_failed(r.run_dir, {**(failure(r.run_dir) or {}), "exit_code": rc, "attempts": self.attempts[key], "log_tail": tail})
                self.bar.write(f"run {key} FAILED (exit {rc}) after {self.attempts[key]} attempts — log {log}")

    def _follow_others(self, now: float | None) -> None:
        """Runs another sweep trains: done when it finishes them, ours again when its claim goes or goes stale."""
        for key, s in self.state.items():
            if s != "elsewhere":
                continue
            r = self.by_key[key]
            claim = self.out / "claims" / r.run_id
            if is_finished(r.run_dir):
                self._done(key)
            elif not claim.exists():
                self.state[key] = "pending"
            elif now and (age := leases.stale(claim, now)) is not None:
                self.state[key] = "pending"
                if age > 0:
                    self.bar.write(f"run {key}: its claim ({leases.holder(claim)}) was not refreshed for {leases.dur(age)}: "
                                   "that sweep is gone; taking the run over (it resumes from its last checkpoint)")

    def _launch_ready(self) -> None:
        for r in self.runs:
            if not self.free:
                return
            if self.state[r.key] != "pending" or any(self.state[d] != "done" for d in r.deps):
                continue
            if is_finished(r.run_dir):
                self._done(r.key)
                continue
            if not leases.take(self.out, r):
                self.state[r.key] = "elsewhere"
                claim = self.out / "claims" / r.run_id
                self.bar.write(f"run {r.key} is being trained by {leases.holder(claim)} (claim {claim}); waiting for it. If that "
                               f"sweep is gone (its host died), this sweep takes the run over once the claim has not been "
                               f"refreshed for {leases.dur(leases.CLAIM_STALE_S)} (or at once if you delete the claim)")
                continue
            self._start(r, self.free.pop(0))

    def _start(self, r: RunSpec, slot: dict) -> None:
        record_membership(r)
        (r.run_dir / "failed.json").unlink(missing_ok=True)
        self.attempts[r.key] += 1
        src = self.by_key[r.deps[0]].run_dir if r.deps else None
        argv = ["train", *r.args(src), "progress=false"]
        logf = open(r.run_dir / "sweep.log", "a")
        logf.write(f"$ {shlex.join([sys.executable, '-m', 'fastft', *argv])}\n")  # what the run is, however it starts
        logf.flush()
        proc = launch.start(self.launcher, argv, {**os.environ, **slot, env.SUPERVISOR: self.supervisor}, logf)
        self.running[r.key] = (proc, slot, logf)
        self.state[r.key] = "running"

    def _status(self) -> None:
        c = {k: sum(1 for s in self.state.values() if s == k) for k in ("done", "running", "failed", "skipped", "elsewhere")}
        c = {k: v for k, v in c.items() if v}
        if c != self.shown:  # redraw on change only (logs stay readable when stdout is a file)
            self.bar.set_postfix(c)
            self.shown = c


def efficiency(run_dirs: list[Path], wall_s: float, slots: int) -> dict | None:
    """How much of a sweep's slot-time trained: the sum of its runs' training-step time (``final.json``'s
    ``costs.sum_step_s``) over ``slots × wall_s``, and each fixed cost summed over the runs (where the rest went)."""
    costs = [(read_final(d) or {}).get("costs") or {} for d in run_dirs]
    costs = [c for c in costs if "sum_step_s" in c]
    if not costs or wall_s <= 0:
        return None
    fixed: dict[str, float] = {}
    for c in costs:
        for k, v in c.items():
            if k not in ("sum_step_s", "train") and isinstance(v, (int, float)):
                fixed[k] = round(fixed.get(k, 0.0) + v, 2)
    step = sum(c["sum_step_s"] for c in costs)
    return {"runs": len(costs), "wall_s": wall_s, "slots": slots, "sum_step_s": round(step, 2),
            "efficiency": round(step / (slots * wall_s), 4), "fixed_s": fixed}


def _learned(run_dir: Path) -> bool:
    """Whether a finished run left the ln C plateau (``final.json``'s ``learned``, see :mod:`fastft.guard`)."""
    return (read_final(run_dir) or {}).get("learned", True) is not False


class Terminated(SystemExit):
    """SIGTERM to a sweep: its running runs checkpoint and stop, then it exits 143 (re-running resumes them)."""

    def __init__(self):
        super().__init__(143)


def _stop_runs(running: dict, out: Path, by_key: dict, bar) -> None:
    """Ctrl-C or SIGTERM: every running run gets SIGTERM (it checkpoints after its current step and exits) and the
    sweep waits for each, so that no trainer outlives the sweep to race the next one on the same run directory."""
    if not running:
        return
    bar.write(f"sweep stopping: {len(running)} running run(s) checkpoint and stop; re-run the same command to resume")
    for proc, _, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for key, (proc, _, logf) in list(running.items()):
        try:
            proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: the runs got it too and stop without checkpointing
            proc.kill()
            proc.wait()
        logf.close()
        leases.release(out, by_key[key])
        del running[key]


def record_membership(r: RunSpec) -> None:
    """``sweep.json`` lists every (plan, template, grid, seed) a run serves: one run can belong to several plans."""
    r.run_dir.mkdir(parents=True, exist_ok=True)
    p = r.run_dir / "sweep.json"
    d = json.loads(p.read_text()) if p.exists() else {"run_id": r.run_id, "memberships": []}
    for x in [r, *r.also]:
        plan = x.labels["plan"]
        entry = {**x.labels, "key": x.key[len(plan) + 1:] if x.key.startswith(f"{plan}/") else x.key}
        d["memberships"] = [m for m in d["memberships"] if (m["plan"], m["key"]) != (entry["plan"], entry["key"])] + [entry]
    write_json(p, d)


def gpu_ids(gpus: str) -> list[str]:
    """``--gpus``: ``all``, or indices into the GPUs this process may use. Under ``CUDA_VISIBLE_DEVICES`` (a SLURM
    allocation sets it) index i is its i-th entry, as in PyTorch, so a run never lands on a GPU outside the allocation."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [g.strip() for g in env.split(",") if g.strip()] if env is not None else None
    if gpus == "all":
        if visible is None:
            import torch

            visible = [str(i) for i in range(torch.cuda.device_count())]
        if not visible:
            raise FastFTError("--gpus all: no GPU is visible here (leave --gpus out to run on the CPU)")
        return visible
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if len(set(ids)) < len(ids):
        raise FastFTError(f"--gpus {gpus} names a GPU twice; use --per-gpu N to pack N runs on each GPU")
    if visible is not None:
        bad = [g for g in ids if not g.isdigit() or int(g) >= len(visible)]
        if bad:
            raise FastFTError(f"--gpus {gpus}: CUDA_VISIBLE_DEVICES={env} leaves {len(visible)} GPU(s), so give indices "
                              f"0..{len(visible) - 1} (or all); {bad} are not")
        return [visible[int(g)] for g in ids]
    return ids


def slots_for(gpus: str | None, per_gpu: int, parallel: int) -> list[dict]:
    """``--gpus 0,1 --per-gpu 2`` → 4 slots (two runs share each GPU); no GPUs → ``parallel`` CPU slots."""
    if gpus:
        ids = gpu_ids(gpus)
        # runs sharing a GPU split its memory for the decoded-image cache (fastft.loading.resources.device_cache_budget)
        # and the runs on the node split its host memory for the cache's second tier (loading.resources.host_cache_budget)
        return [{"CUDA_VISIBLE_DEVICES": g, env.GPU_SHARE: str(per_gpu), env.NODE_RUNS: str(len(ids) * per_gpu)}
                for g in ids for _ in range(per_gpu)]
    n = max(1, parallel)  # the runs split the node's cores: torch's threads and (FASTFT_NODE_RUNS) the loaders'
    return [{"OMP_NUM_THREADS": str(max(1, env.usable_cores() // n)), env.NODE_RUNS: str(n)} for _ in range(n)]
