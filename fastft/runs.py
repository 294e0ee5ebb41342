"""Run directories: identity, self-description and atomic checkpoints.

A run directory holds ``config.json`` (resolved config + identity), ``env.json`` (versions, devices, git sha),
``metrics.jsonl`` (one line per epoch), ``final.json`` (written last: a run with it is finished), ``model.pt`` (final
weights), ``checkpoints/`` and ``train.log``. The run id is a hash of everything that determines the result — data
identity (spec hash, set, store manifest hash), model, protocol and seed — and nothing that does not (paths, device,
threads), so the same run is never trained twice and a re-run finds its directory.

Checkpoints are atomic: written into ``checkpoints/<name>.tmp/``, every file fsynced, a ``COMPLETE`` marker written
last — it records the sha256 of every file of the checkpoint — then the directory is renamed; older checkpoints are
deleted only after the new one is complete. Resume takes the newest checkpoint whose files match their checksums
(:func:`resume_checkpoint`): a truncated or overwritten file is named, that checkpoint set aside as
``<name>.damaged``, and the one before it tried. Every other file a later step reads is written whole or not at all
(:func:`fastft.files.fsync_write`), and read back only through a check: a damaged ``final.json`` means the run is not
finished (:func:`read_final`); the ``model.pt`` it lists must match the sha256 it records (:func:`verify_model`).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from .data.store import lock_file, sha256_file
from .errors import FastFTError
from .files import atomic_file, fsync_dir, fsync_write, write_json

CKPT_DIR = "checkpoints"
MARKER = "COMPLETE"


def run_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def read_json(path: Path, what: str) -> dict | None:
    """A JSON object fastft wrote (None if the file is absent); a file that is empty, cut short or not an object is
    a :class:`FastFTError` naming it — never a ``JSONDecodeError`` in a later step."""
    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FastFTError(f"{path} is damaged (empty, cut short or not JSON)" + (f"; {what}" if what else "")) from None
    if not isinstance(d, dict):
        raise FastFTError(f"{path} is damaged (not a JSON object)" + (f"; {what}" if what else ""))
    return d


def read_final(run_dir: Path, say=None) -> dict | None:
    """``final.json`` of a finished run; None while the run is not finished — also when the file is damaged (``say``
    is told): a half-written summary is never trusted, the run's end is redone from its last checkpoint."""
    p = Path(run_dir) / "final.json"
    try:
        d = read_json(p, "")
    except FastFTError:
        d = {}
    if d is not None and "run_id" not in d:
        if say:
            say(f"{p} is damaged (empty, cut short or not a run summary): the run is not finished; its end is redone "
                "from its last checkpoint")
        return None
    if d is not None and (why := _contradiction(Path(run_dir), d)):
        if say:
            say(f"{p} does not agree with the run's metrics.jsonl ({why}): it was edited or damaged after the run "
                "finished, so the run is not counted as finished; re-running it redoes its end from its last checkpoint")
        return None
    return d


def _contradiction(run_dir: Path, final: dict) -> str | None:
    """What a finished run's summary says that its epochs' records do not (its numbers are the last record's)."""
    if final.get("top1") is None:  # a run without evaluation (or from before summaries held it): nothing to check
        return None
    try:
        last = read_metrics(run_dir)[-1:]
    except FastFTError as e:
        return str(e)
    if not last:
        return "metrics.jsonl is missing or empty, so its top-1 cannot be checked"
    for k in ("top1", "top5", "train_loss"):
        if k in final and k in last[0] and final[k] != last[0][k] and final[k] is not None:
            return f"{k} {final[k]!r} in final.json, {last[0][k]!r} at epoch {last[0]['epoch']} in metrics.jsonl"
    return None


def is_finished(run_dir: Path) -> bool:
    return read_final(run_dir) is not None


def read_config(run_dir: Path) -> dict:
    """A run's ``config.json`` (resolved config and identity)."""
    d = read_json(Path(run_dir) / "config.json", "re-run its fastft train command to rewrite it")
    if d is None:
        raise FastFTError(f"{run_dir} is not a run directory (no config.json)")
    return d


def start_run(run_dir: Path, resolved: dict, say=print):
    """Take a run directory for training: its lock (returned; held while the file stays open), then ``config.json``
    (checked against this run's identity) and ``env.json``, written atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    held = lock_file(run_dir / ".lock", f"run {run_dir}")
    try:
        old = read_json(run_dir / "config.json", "")
    except FastFTError as e:  # the directory's name carries the run id (the identity's hash): rewriting is safe
        say(f"{e}; rewritten from this run's config")
        old = None
    if old is not None and old.get("identity") != resolved["identity"]:
        held.close()
        raise FastFTError(f"{run_dir} holds a different run (config changed); use another out: or name:")
    write_json(run_dir / "config.json", resolved)
    write_json(run_dir / "env.json", environment())
    return held


REPLAY = "config.yaml"  # the run's config as ``fastft train FILE`` takes it: every key, paths absolute


def write_replay(run_dir: Path, config: dict) -> None:
    """``config.yaml``: ``fastft train <run>/config.yaml`` from any directory is this run again (it resumes or says
    it is finished)."""
    import yaml

    head = f"# fastft train {(Path(run_dir) / REPLAY).resolve()}  — replays this run (the keys of fastft train --help)\n"
    fsync_write(Path(run_dir) / REPLAY, head + yaml.safe_dump(config, sort_keys=False))


def write_final(run_dir: Path, final: dict) -> None:
    """The run's summary, written last: from now on the run is finished."""
    write_json(Path(run_dir) / "final.json", final)


def verify_model(f: Path) -> None:
    """A ``model.pt`` whose run's ``final.json`` records its sha256 must match it (runs of earlier fastft versions
    recorded none)."""
    f = Path(f)
    final = read_final(f.parent) if f.name == "model.pt" else None
    want = (final or {}).get("model_sha256")
    if want and sha256_file(f) != want:
        raise FastFTError(f"{f} does not match the sha256 that {f.parent / 'final.json'} recorded for it: the file was "
                          "damaged or replaced after the run finished; restore it, or retrain the run (delete its "
                          "final.json and re-run its fastft train command)")


def locate(recorded: str | None, run_dir: Path, beside: str = "") -> Path | None:
    """A path a run recorded (its view, its source run), found again: where a sweep puts it beside the run
    (``<out>/views/<name>``, ``<out>/<source run>``), else where it was recorded — so a runs directory that was moved
    or copied reads its own copies (a copy's fine-tune recorded the original's paths: with the original still there,
    it named the original's source model, not the copy beside it), and runs from before paths were recorded absolute
    are found. A name there is the same run or view (a run directory's name holds its run id, a view's its content)."""
    if not recorded:
        return None
    p = Path(recorded)
    for c in (run_dir.parent / beside / p.name, p):
        if c.exists():
            return c
    return None


def run_dirs(root: str | Path) -> list[tuple[Path, dict]]:
    """The run directories under ``root``, found recursively (a ``config.json`` with a run id), with their config."""
    out = []
    for f in sorted(Path(root).rglob("config.json")):
        try:
            cfg = read_json(f, "the run is left out; re-run its fastft train command to rewrite it")
        except FastFTError as e:
            print(f"fastft: warning: {e}", file=sys.stderr)
            continue
        except OSError:
            continue
        if isinstance(cfg, dict) and "run_id" in cfg:
            out.append((f.parent, cfg))
    return out


def memberships(run_dir: Path) -> list[dict]:
    """What a run serves: one entry per (plan, template, grid point) from its ``sweep.json`` (``[{}]`` for a run
    trained outside a sweep)."""
    d = read_json(Path(run_dir) / "sweep.json", "re-run the sweep (fastft sweep) to rewrite it") or {}
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


def save_file(obj, path: Path) -> str:
    """``torch.save`` of ``obj`` to ``path``, whole or not at all; returns the file's sha256."""
    import torch

    with atomic_file(path) as f:
        torch.save(obj, f)
    return sha256_file(path)


def checkpoint_tmp(run_dir: Path, name: str) -> Path:
    """The empty directory a checkpoint is written into (left-overs of a killed attempt removed first)."""
    tmp = Path(run_dir) / CKPT_DIR / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_checkpoint(run_dir: Path, name: str, keep: int = 2) -> Path:
    """Mark ``<name>.tmp`` complete (the marker records every file's sha256), rename it into place, then prune old
    complete checkpoints (keeping ``keep``)."""
    root = Path(run_dir) / CKPT_DIR
    tmp, final = root / f"{name}.tmp", root / name
    sums = {}
    for f in sorted(tmp.iterdir()):
        if f.name.endswith(".tmp"):  # a write that never completed is no part of the checkpoint
            f.unlink()
        elif f.is_file() and f.name != MARKER:
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            sums[f.name] = sha256_file(f)
    write_json(tmp / MARKER, {"name": name, "sha256": sums})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (names sort by epoch then step; ``.tmp`` and ``.damaged`` ones are not)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and "." not in p.name and (p / MARKER).exists())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, not verified (what a sweep shows; a resume uses :func:`resume_checkpoint`)."""
    c = complete_checkpoints(run_dir)
    return c[-1] if c else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a complete checkpoint cannot be trusted (a file missing, or not matching its recorded sha256), or None.
    A marker of an earlier fastft version (its name only, no checksums) passes: there is nothing to check."""
    ckpt = Path(ckpt)
    try:
        text = (ckpt / MARKER).read_text()
    except (OSError, UnicodeDecodeError) as e:
        return f"its {MARKER} marker cannot be read ({e})"
    if text.strip() == ckpt.name:
        return None
    try:
        sums = json.loads(text).get("sha256")
    except (json.JSONDecodeError, AttributeError):
        sums = None
    if not (isinstance(sums, dict) and "state.pt" in sums and all(isinstance(k, str) and "/" not in k and k not in (".", "..")
                                                                  and isinstance(v, str) for k, v in sums.items())):
        return f"its {MARKER} marker is damaged"
    for fname, want in sorted(sums.items()):
        p = ckpt / fname
        if not p.is_file():
            return f"{fname} is missing"
        if sha256_file(p) != want:
            return f"{fname} does not match its recorded sha256 (changed or damaged after it was written)"
    return None


def resume_checkpoint(run_dir: Path, say=print, set_aside: bool = True) -> Path | None:
    """The newest complete checkpoint that verifies (None for a run without checkpoints). Newer ones that do not
    are named (``say``) and, with ``set_aside`` (one process of a run), renamed ``<name>.damaged``: kept for
    inspection, never resumed from or counted among the kept checkpoints. When none verifies, this raises and
    leaves them all in place (a re-run refuses again rather than silently starting over)."""
    bad = []
    for c in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(c)
        if problem is None:
            if bad:
                say(f"checkpoint {'; '.join(why for _, why in bad)}: resuming from the previous one, {c.name}" +
                    (" (the damaged ones are kept as *.damaged)" if set_aside else ""))
            for b, _ in bad if set_aside else ():
                aside = b.with_name(b.name + ".damaged")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(b, aside)
            return c
        bad.append((c, f"{c.name} does not verify: {problem}"))
    if bad:
        raise FastFTError(f"no checkpoint of {run_dir} verifies ({'; '.join(why for _, why in bad)}): the run cannot "
                          f"resume; remove {Path(run_dir) / CKPT_DIR} to train it from the start")
    return None


def read_metrics(run_dir: Path) -> list[dict]:
    """One record per finished epoch. A last line cut short (the run was killed while writing it) is left out."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError
            out.append(rec)
        except ValueError:  # JSONDecodeError is one
            if i < len(lines) - 1:
                raise FastFTError(f"{p}: line {i + 1} is not an epoch's record (damaged)") from None
    return out


def trim_metrics(run_dir: Path, epochs: int) -> None:
    """Before a run goes on from a checkpoint taken ``epochs`` epochs in (0: a start from scratch): drop records of
    later epochs — a kill between writing an epoch's record and its checkpoint leaves one, a kill before the first
    checkpoint leaves several, and those epochs run again — and a cut line. The metrics then are exactly those of an
    uninterrupted run."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return
    if epochs == 0:  # nothing to keep (and nothing to parse: a damaged file is simply replaced)
        p.unlink()
        fsync_dir(p.parent)
        return
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= epochs]
    with atomic_file(p) as f:
        f.write("".join(json.dumps(m) + "\n" for m in keep).encode())
