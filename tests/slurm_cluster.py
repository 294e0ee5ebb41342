"""A real one-node SLURM on localhost for the tests: ``munged``, ``slurmctld`` and ``slurmd`` started from a
configuration written into a temporary directory (their own munge socket and key, ports, state and logs, so that
nothing on the machine is touched and a SLURM already running there is not disturbed), and stopped — every job
cancelled, every process of theirs gone — when the tests end, also after a failure.

It installs nothing. Where SLURM and munge are not installed (Debian/Ubuntu: ``apt-get install -y slurm-wlm munge``)
or the tests do not run as root (``slurmd`` starts jobs as their users), :func:`start` raises ``pytest.skip`` with
the reason. The settings are those verified in ``shared/design/slurm-local.md`` (``proctrack/linuxproc``,
``task/none``, no cgroups, no accounting database), plus a scheduler that looks every second or two and a
credential lifetime of 10 s, which is also how long SLURM holds a requeued job before it may start again (the
default, 120 s, would make each requeue in a test cost two minutes).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("slurmctld", "slurmd", "munged")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
CPUS = 2


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """A running one-node cluster: ``env`` points SLURM's commands (and the jobs) at it."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SBIN}
        self.env.pop("SLURM_JOB_ID", None)  # the tests may themselves run inside a SLURM job

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=120)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}\n{self.logs()}")
        return r

    def tasks(self) -> dict[str, tuple[str, str, str]]:
        """Every task the controller knows (queued, or ended within MinJobAge): ``<job>_<task>`` → (state, reason, name)."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%j").stdout
        return {p[0]: (p[1], p[2], p[3]) for p in (line.split("|", 3) for line in out.splitlines()) if len(p) == 4}

    def wait(self, cond, what: str, timeout: float = 300.0, every: float = 0.5):
        """Poll ``cond()`` until it returns something true (returned), with a generous deadline."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            v = cond()
            if v:
                return v
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; queue:\n"
                             + "\n".join(f"  {k} {v}" for k, v in sorted(self.tasks().items())) + "\n" + self.logs())

    def logs(self, lines: int = 15) -> str:
        out = []
        for f in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.root / "log" / f
            if p.exists():
                out.append(f"--- {p} (last {lines} lines)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # ------------------------------------------------------------ start / stop
    def write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "munge"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        ctld, slurmd = _free_ports(2)
        self.conf.write_text("\n".join([
            f"ClusterName=fastft{os.getpid()}", "SlurmctldHost=localhost", f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'},cred_expire=10",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=1,sched_interval=2", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=500", "ReturnToService=2", "MpiDefault=none",
            "MaxArraySize=1001", "KillWait=30", "SlurmdParameters=config_overrides",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=8000 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))

    def start(self) -> None:
        m = self.root / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = m / "munge.socket"
        self.run("munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={m / 'munged.pid'}",
                 f"--log-file={self.root / 'log' / 'munged.log'}", f"--seed-file={m / 'munged.seed'}")
        enc = self.run("munge", "-n", "-S", str(sock))
        subprocess.run(["unmunge", "-S", str(sock)], input=enc.stdout, capture_output=True, text=True, check=True)
        self.run("slurmctld", "-i", "-f", str(self.conf))
        self.run("slurmd", "-N", "localhost", "-f", str(self.conf))

        def idle():
            r = self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False)
            state = r.stdout.strip()
            if state.startswith(("down", "drain")):
                self.run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
            return state == "idle"
        self.wait(idle, "the node to be idle", timeout=120)

    def _pids(self) -> list[int]:
        """Processes started for this cluster (daemons, slurmstepd, jobs): their environment names its SLURM_CONF,
        or they are the daemons of its pid files."""
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = set()
        for f in ("slurmctld.pid", "slurmd.pid", "munge/munged.pid"):
            try:
                pids.add(int((self.root / f).read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        for p in Path("/proc").iterdir():
            if p.name.isdigit() and int(p.name) != os.getpid():
                try:
                    if mine in (p / "environ").read_bytes().split(b"\0"):
                        pids.add(int(p.name))
                except OSError:
                    pass
        return sorted(pids - {os.getpid(), os.getppid()})

    def stop(self) -> None:
        """Cancel every job, then stop the daemons and whatever is left of theirs (TERM, then KILL)."""
        if self.conf.exists():
            self.run("scancel", "--full", "-u", "root", check=False)
            try:
                self.wait(lambda: not any(s in ("RUNNING", "COMPLETING") for s, _, _ in self.tasks().values()),
                          "the cancelled jobs to end", timeout=60)
            except AssertionError:
                pass
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            pids = self._pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            t0 = time.monotonic()
            while pids and time.monotonic() - t0 < grace:
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in _status(p)]
                time.sleep(0.1)
            if not pids:
                break


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def missing() -> str | None:
    """Why a real SLURM cannot be started here, or None."""
    absent = [c for c in (*DAEMONS, *CLIENTS, "munge", "unmunge") if shutil.which(c, path=SBIN) is None]
    if absent:
        return (f"SLURM is not installed here (no {', '.join(absent)}): install it with "
                "`apt-get install -y slurm-wlm munge` (Debian/Ubuntu) to run these tests")
    if os.geteuid() != 0:
        return "the SLURM tests start slurmd, which runs jobs as their users: run them as root (CI does)"
    return None


def start(root: Path) -> Cluster:
    """A started cluster in ``root`` (``pytest.skip`` where it cannot be started); the caller stops it."""
    why = missing()
    if why:
        pytest.skip(why)
    c = Cluster(root)
    c.write_config()
    try:
        c.start()
    except BaseException:
        c.stop()
        raise
    return c
