"""Run directories: identity, self-description and atomic checkpoints.

A run directory holds ``config.json`` (resolved config + identity), ``env.json`` (versions, devices, git sha),
``metrics.jsonl`` (one line per epoch), ``final.json`` (written last: a run with it is finished), ``model.pt`` (final
weights), ``checkpoints/`` and ``train.log``. The run id is a hash of everything that determines the result — data
identity (spec hash, set, store manifest hash), model, protocol and seed — and nothing that does not (paths, device,
threads), so the same run is never trained twice and a re-run finds its directory.

Checkpoints are atomic: written into ``checkpoints/<name>.tmp/``, every file fsynced, a ``COMPLETE`` marker written
last, then the directory is renamed; older checkpoints are deleted only after the new one is complete. Resume takes
the newest directory that has the marker.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from .errors import FastFTError

CKPT_DIR = "checkpoints"


def run_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "final.json").exists()


def locate(recorded: str | None, run_dir: Path, beside: str = "") -> Path | None:
    """A path a run recorded (its view, its source run), found again: where it was, else where a sweep puts it beside
    the run (``<out>/views/<name>``, ``<out>/<source run>``) — for runs directories that were moved or copied, and
    runs from before paths were recorded absolute."""
    if not recorded:
        return None
    p = Path(recorded)
    for c in (p, run_dir.parent / beside / p.name):
        if c.exists():
            return c
    return None


def run_dirs(root: str | Path) -> list[tuple[Path, dict]]:
    """The run directories under ``root``, found recursively (a ``config.json`` with a run id), with their config."""
    out = []
    for f in sorted(Path(root).rglob("config.json")):
        try:
            cfg = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(cfg, dict) and "run_id" in cfg:
            out.append((f.parent, cfg))
    return out


def memberships(run_dir: Path) -> list[dict]:
    """What a run serves: one entry per (plan, template, grid point) from its ``sweep.json`` (``[{}]`` for a run
    trained outside a sweep)."""
    p = Path(run_dir) / "sweep.json"
    d = json.loads(p.read_text()) if p.exists() else {}
    return d.get("memberships") or [d]


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "cpus": os.cpu_count()}
    # versions from package metadata: importing DALI here would start its threads in a process whose PyTorch
    # DataLoader (backend: pytorch) then could no longer fork workers safely
    from importlib.metadata import PackageNotFoundError, version

    for key, dists in (("dali", ("nvidia-dali-cuda130", "nvidia-dali-cuda120")), ("accelerate", ("accelerate",)), ("numpy", ("numpy",))):
        env[key] = None
        for dist in dists:
            try:
                env[key] = version(dist)
                break
            except PackageNotFoundError:
                pass
    try:
        here = Path(__file__).resolve().parent
        env["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        env["git_sha"] = None
    from . import __version__

    env["fastft"] = __version__
    return env


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_file(obj, path: Path) -> None:
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_tmp(run_dir: Path, name: str) -> Path:
    tmp = Path(run_dir) / CKPT_DIR / f"{name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def commit_checkpoint(run_dir: Path, name: str, keep: int = 2) -> Path:
    """Mark ``<name>.tmp`` complete, rename it into place, then prune old complete checkpoints (keeping ``keep``)."""
    root = Path(run_dir) / CKPT_DIR
    tmp, final = root / f"{name}.tmp", root / name
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    (tmp / "COMPLETE").write_text(name)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (names sort by epoch then step)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp") and (p / "COMPLETE").exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    c = complete_checkpoints(run_dir)
    return c[-1] if c else None


def read_metrics(run_dir: Path) -> list[dict]:
    """One record per finished epoch. A last line cut short (the run was killed while writing it) is left out."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise FastFTError(f"{p}: line {i + 1} is not JSON") from None
    return out


def trim_metrics(run_dir: Path, epochs: int) -> None:
    """Before a resumed run goes on from a checkpoint taken ``epochs`` epochs in: drop records of later epochs (a
    kill between writing an epoch's record and its checkpoint leaves one, and the epoch runs again) and a cut line."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= epochs]
    tmp = p.with_name("metrics.jsonl.tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in keep))
    os.replace(tmp, p)
