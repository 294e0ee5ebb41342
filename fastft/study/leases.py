"""Leases on runs: two sweeps on one runs directory never train the same run. A run is claimed by creating
``<out>/claims/<id>`` exclusively; the holder refreshes its mtime every ``CLAIM_HEARTBEAT_S`` while the run trains,
and a claim whose sweep is gone is taken over (on the same host: its pid is dead; from another host sharing the
directory: not refreshed for ``CLAIM_STALE_S``, by the file system's clock, so hosts' clocks need not agree)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from ..util import env
from ..util.children import alive
from .plan import RunSpec


# a sweep refreshes the claims of its running runs this often; a claim from another host not refreshed for
# CLAIM_STALE_S means that its sweep (or host) is gone. FASTFT_CLAIM_* change them (all sweeps on a runs directory
# must agree: the stale time must stay well above the heartbeat)
CLAIM_HEARTBEAT_S = env.seconds(env.CLAIM_HEARTBEAT, 30)
CLAIM_STALE_S = env.seconds(env.CLAIM_STALE, 600)


def take(out: Path, r: RunSpec) -> bool:
    """Claim run ``r`` for this sweep (False: another live sweep holds it); a stale claim is taken over."""
    d = out / "claims"
    d.mkdir(exist_ok=True)
    f = d / r.run_id
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            return True
        except FileExistsError:
            if stale(f) is None:
                return False
            take_over(f)
    return False


def dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def holder(claim: Path) -> str:
    try:
        return "pid {1} on {0}".format(*claim.read_text().split())
    except (OSError, IndexError):
        return "another sweep"


def stale(claim: Path, now: float | None = None) -> float | None:
    """Why a claim no longer holds: -1 if it names a dead process on this host, else the seconds since its sweep
    last refreshed it if that is over ``CLAIM_STALE_S``; None while it holds (or is gone). ``now``: :func:`fs_now`."""
    try:
        host, _, pid = claim.read_text().partition(" ")
        if host == socket.gethostname() and pid.isdigit():
            return -1.0 if not alive(int(pid)) else None
        age = (now or fs_now(claim.parent)) - claim.stat().st_mtime
    except FileNotFoundError:
        return None
    return age if age > CLAIM_STALE_S else None


def fs_now(d: Path) -> float:
    """The time by the clock that stamps the claims (an NFS server's): the mtime of a file touched now."""
    d.mkdir(parents=True, exist_ok=True)
    p = d / f".now-{socket.gethostname()}-{os.getpid()}"
    p.touch()
    try:
        return p.stat().st_mtime
    finally:
        p.unlink(missing_ok=True)


def take_over(claim: Path) -> None:
    """Remove a stale claim so that it can be claimed again. Two sweeps may both find it stale: it is moved aside
    (only one rename succeeds) and put back if it was refreshed meanwhile (then it was not stale after all)."""
    aside = claim.with_name(f".{claim.name}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(claim, aside)
    except FileNotFoundError:
        return
    try:
        if stale(aside) is None:
            os.link(aside, claim)  # a fresh claim (taken over by another sweep just now): put it back
    except FileExistsError:
        pass
    finally:
        aside.unlink(missing_ok=True)


def heartbeat(out: Path, runs) -> None:
    for r in runs:
        try:
            os.utime(out / "claims" / r.run_id)  # no times given: the file system's clock (an NFS server's)
        except FileNotFoundError:
            pass


def release(out: Path, r: RunSpec) -> None:
    (out / "claims" / r.run_id).unlink(missing_ok=True)
