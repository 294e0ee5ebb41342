"""What a SLURM cluster offers and what each task asks of it: the partition read from ``scontrol`` / ``sinfo``
(:class:`Cluster`), the resources a sweep's tasks request (:class:`Resources`, filled from the partition and checked
before any job is written: :func:`resolve`), and the SLURM commands' runner. :mod:`.slurm` writes and submits the
job arrays."""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace

from ..errors import FastFTError

SIGNAL_RESOLUTION_S = 60  # SLURM may send a --signal up to this much earlier than asked


@dataclass(frozen=True)
class Resources:
    """What each task asks for. ``None``: read from the partition (:func:`resolve`)."""
    partition: str | None = None
    time: str | None = None            # None: 24 h, or the partition's MaxTime if shorter
    gpus: int | None = None
    cpus: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    throttle: int | None = None        # at most this many tasks of an array at once (--array=…%N)
    sbatch_lines: tuple = ()           # extra #SBATCH lines
    setup: tuple = ()                  # shell lines run before the trainer (module load …)
    signal_lead: int = 120             # seconds before the time limit at which the task checkpoints and requeues


@dataclass
class Cluster:
    """What ``scontrol`` and ``sinfo`` say about the partition the jobs go to (``None``: not readable here)."""
    partition: str | None = None
    max_array: int = 1001              # SLURM's default MaxArraySize
    max_time_s: float | None = None    # None: unlimited or unknown
    node_cpus: int | None = None       # the largest node's
    node_mem_mb: int | None = None
    node_gpus: int | None = None
    grace_s: int | None = None
    preempt: str | None = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- the cluster and the resources
def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    """A SLURM command's result; None where the command does not exist here."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        raise FastFTError(f"{shlex.join(cmd)} did not answer within 120 s: is the SLURM controller reachable?") from None


def _fields(text: str) -> dict:
    return dict(x.split("=", 1) for x in text.split() if "=" in x)


def parse_time(s: str, what: str = "--time") -> float | None:
    """A SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; None for UNLIMITED."""
    t = str(s).strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise FastFTError(f"{what} {s!r} is not a SLURM time: give minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def _mem_mb(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", str(s).strip().upper())
    if not m:
        raise FastFTError(f"--mem {s!r} is not a SLURM memory size: give e.g. 32G or 4000M")
    return float(m[1]) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m[2]]


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def cluster(partition: str | None) -> Cluster:
    """The partition's largest node (CPUs, memory, GPUs), its time limit and preemption, and ``MaxArraySize`` —
    what a task may ask for without pending forever. Fields stay None where SLURM's commands are not here."""
    c = Cluster(partition=partition)
    cfg = _run(["scontrol", "show", "config"])
    if cfg is None:
        c.notes.append("SLURM's commands are not installed here: the jobs' resources are not checked against a partition")
        return c
    if cfg.returncode == 0:
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", cfg.stdout, re.M)
        c.max_array = int(m[1]) if m else c.max_array
    part = _run(["scontrol", "show", "partition", "-o"])
    if part is None or part.returncode:
        c.notes.append(f"scontrol show partition failed ({(part.stderr if part else '').strip()}): the jobs' resources are "
                       "not checked against a partition")
        return c
    rows = [_fields(line) for line in part.stdout.splitlines()]
    row = next((r for r in rows if r.get("PartitionName") == partition or (not partition and r.get("Default") == "YES")), None)
    if row is None:
        if partition:
            raise FastFTError(f"--partition {partition}: no such partition here (partitions: "
                              f"{', '.join(r.get('PartitionName', '?') for r in rows) or 'none'})")
        c.notes.append("the cluster has no default partition: pass --partition (the jobs' resources are not checked)")
        return c
    c.partition = row["PartitionName"]
    c.max_time_s = parse_time(row.get("MaxTime", "UNLIMITED"), "partition MaxTime")
    c.grace_s = int(row["GraceTime"]) if row.get("GraceTime", "").isdigit() else None
    c.preempt = row.get("PreemptMode")
    info = _run(["sinfo", "-h", "-p", c.partition, "-o", "%c|%m|%G"])
    for line in (info.stdout.splitlines() if info and info.returncode == 0 else []):
        cpus, mem, gres = (line.split("|") + ["", "", ""])[:3]
        gpus = sum(int(x) for x in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))
        num = lambda v: int(re.match(r"\d+", v)[0]) if re.match(r"\d+", v) else None  # noqa: E731 ("2+": at least 2)
        for attr, v in (("node_cpus", num(cpus)), ("node_mem_mb", num(mem)), ("node_gpus", gpus)):
            if v is not None:
                setattr(c, attr, max(getattr(c, attr) or 0, v))
    return c


def require_submit() -> None:
    """``--submit`` needs SLURM's commands here: said before any work."""
    absent = [x for x in ("sbatch", "squeue", "scancel") if shutil.which(x) is None]
    if absent:
        raise FastFTError(f"--submit: {', '.join(absent)} not found here: run on a SLURM login node, or leave --submit out "
                          "and run the submit script it writes on one")


def resolve(res: Resources, c: Cluster) -> Resources:
    """Fill the resources left open from the partition and check them against it: a task that asks for more than the
    largest node has, or for GPUs a partition does not have, would pend forever or be refused by ``sbatch``."""
    gpus = res.gpus
    if gpus is None:
        gpus = 1 if c.node_gpus is None else min(1, c.node_gpus)
    if gpus < 0:
        raise FastFTError(f"--gpus-per-run {gpus}: give 0 (a CPU job) or more")
    if gpus and c.node_gpus == 0:
        raise FastFTError(f"--gpus-per-run {gpus}: partition {c.partition} has no GPUs (no gpu GRES on its nodes); "
                          "use --gpus-per-run 0 for CPU jobs, or another --partition")
    if gpus and c.node_gpus and gpus > c.node_gpus:
        raise FastFTError(f"--gpus-per-run {gpus}: the nodes of partition {c.partition} have at most {c.node_gpus} GPUs")
    cpus = res.cpus
    if cpus is None:  # a GPU run gets its share of a node's cores; a CPU run a whole node's
        if c.node_cpus is None:
            cpus = 8
        else:
            cpus = max(1, c.node_cpus * gpus // c.node_gpus) if gpus and c.node_gpus else c.node_cpus
    if cpus < 1:
        raise FastFTError(f"--cpus-per-run {cpus}: give 1 or more")
    if c.node_cpus and cpus > c.node_cpus:
        raise FastFTError(f"--cpus-per-run {cpus}: the nodes of partition {c.partition} have at most {c.node_cpus} CPUs, "
                          "so the jobs would pend forever")
    if res.mem is not None and c.node_mem_mb and _mem_mb(res.mem) > c.node_mem_mb:
        raise FastFTError(f"--mem {res.mem}: the nodes of partition {c.partition} have at most {c.node_mem_mb} MB")
    if res.time is None:
        res = replace(res, time=_hms(c.max_time_s) if c.max_time_s is not None and c.max_time_s < 86400 else "24:00:00")
    limit = parse_time(res.time)
    if res.signal_lead < 1:
        raise FastFTError(f"--signal-lead {res.signal_lead}: give the seconds a task needs to checkpoint (at least 1)")
    need = 2 * (res.signal_lead + SIGNAL_RESOLUTION_S)
    if limit is not None and limit < need:
        raise FastFTError(f"--time {res.time} is too short for --signal-lead {res.signal_lead}: each task is told to "
                          f"checkpoint and requeue {res.signal_lead} s (+ up to {SIGNAL_RESOLUTION_S} s) before its limit, "
                          f"so it would requeue forever without training; give --time {_hms(need)} or more, or a "
                          "shorter --signal-lead")
    if c.max_time_s is not None and (limit is None or limit > c.max_time_s):
        raise FastFTError(f"--time {res.time} exceeds partition {c.partition}'s MaxTime {_hms(c.max_time_s)}: sbatch would "
                          "refuse the jobs; give a shorter --time (a task requeues itself at its limit and resumes)")
    if res.throttle is not None and res.throttle < 1:
        raise FastFTError(f"--array-throttle {res.throttle}: give 1 or more (tasks of an array running at once)")
    lines = []
    for x in res.sbatch_lines:
        x = x.strip()
        x = x[len("#SBATCH"):].strip() if x.startswith("#SBATCH") else x
        if not x.startswith("-"):
            raise FastFTError(f"--sbatch-line {x!r}: give an sbatch option such as --exclusive or --nice=10")
        lines.append(x)
    if c.preempt and c.preempt.upper() not in ("OFF", "NONE") and not c.grace_s:
        c.notes.append(f"partition {c.partition} preempts jobs ({c.preempt}) with GraceTime {c.grace_s or 0}: a preempted "
                       "task has no time to checkpoint and resumes from its last epoch checkpoint")
    return replace(res, partition=c.partition or res.partition, gpus=gpus, cpus=cpus, sbatch_lines=tuple(lines))


def describe(res: Resources, c: Cluster) -> str:
    where = f"partition {c.partition}" if c.partition else "the default partition"
    node = (f" (nodes up to {c.node_cpus} CPUs, {c.node_mem_mb} MB, {c.node_gpus or 'no'} GPUs)"
            if c.node_cpus is not None else "")
    what = f"{res.gpus} GPU{'s' * (res.gpus > 1)}" if res.gpus else "no GPU (a CPU job)"
    extra = "".join(f", {k} {v}" for k, v in (("mem", res.mem), ("account", res.account), ("qos", res.qos),
                                               ("constraint", res.constraint)) if v)
    return (f"{where}{node}: each run gets {what}, {res.cpus} CPU{'s' * (res.cpus > 1)}{extra}, --time {res.time} "
            f"(checkpoint and requeue {res.signal_lead} s before it); MaxArraySize {c.max_array}")


# ---------------------------------------------------------------- the queue
def user() -> str:
    """The submitting user, as ``id -un`` says (``$USER`` may be unset or stale)."""
    return pwd.getpwuid(os.getuid()).pw_name
