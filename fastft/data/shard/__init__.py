"""``fastft shard``: ILSVRC2012 (or an image-folder dataset, ``--dataset imagefolder``) → a store (see :mod:`fastft.data.store` for what a store holds and how it is read).

``write_store`` reads the input once — as the dataset source that recognises it lists it (:mod:`fastft.data.sources`:
an extracted ILSVRC2012 tree in one of its val layouts, or the downloaded ``.tar`` files read in place) — converts
every image to an RGB JPEG at the store's size in worker processes, and writes the shards, their DALI indexes, the
sample index, the ledger of rejected inputs and, last, the manifest.

Nothing is lost or silent: every input file is either written (converted to RGB JPEG if it was CMYK, grayscale, PNG,
RGBA, …, and counted per kind) or listed in ``rejected.csv`` with a reason; ``inputs = written + rejected`` is checked.
Output is deterministic (seeded global shuffle per split, fixed tar metadata, ordered workers) and resumable (shards
are written under temporary names and renamed when complete; a re-run skips completed shards). One writer per store
(a lock), and a disk too small for the rest is named after each shard.

This module runs the writer (settings, resume, the worker pool, the shard loop); the steps are its modules:
:mod:`.config` (:class:`ShardConfig`), :mod:`.inputs` (the source's inputs and their keys), :mod:`.convert` (reading
and converting one image, in the workers) and :mod:`.writer` (tars, indexes, ledger, manifest).
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from ...errors import FastFTError
from ...util.children import die_with_parent
from ..spool import bounded_imap, spool_dir
from ..store import STORE_VERSION, STORE_VERSIONS, encode_source, fsync_write, lock_file
from .config import ShardConfig
from .convert import _process
from .inputs import Input, scan
from .writer import _check_space, _finish, _free, _ShardWriter

__all__ = ["Input", "ShardConfig", "input_fingerprint", "scan", "write_store"]


def write_store(root: str | Path, out: str | Path, cfg: ShardConfig, workers: int | None = None, progress: bool = True,
                on_shard: Callable[[int], None] | None = None, store_version: int | None = None) -> dict:
    """``fastft shard``: build (or resume, or confirm) a store. Returns the manifest.

    ``on_shard(n)`` is called after each new shard is complete (``n``: new shards so far); an exception it raises
    stops the run there as an interruption would (tests of resume use it; a caller may report progress).
    ``store_version``: the format to write (default: a store being resumed or confirmed keeps the version it was
    started in, a new one gets :data:`STORE_VERSION`); the tests write version-1 stores with it.
    """
    root, out = Path(root), Path(out)
    inputs, scan_info = scan(root, cfg, progress)
    if not inputs:
        raise FastFTError(f"no input images found under {root}")
    version = store_version or _started_version(out)
    if version not in STORE_VERSIONS:
        raise FastFTError(f"store_version must be one of {STORE_VERSIONS}, got {version!r}")
    vocabulary = scan_info["classes"]  # label = position (ILSVRC2012's 1000 wnids, or the source's own classes)
    settings = {"store_version": version, **asdict(cfg), "classes": list(cfg.classes), "val_layout_found": scan_info["val_layout"],
                "class_list_sha256": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest(), "inputs": len(inputs)}
    if settings["dataset"] == "ilsvrc2012":  # the default is left out: stores (and resumes) from before the key match
        del settings["dataset"]
    fingerprint = input_fingerprint(root, inputs)
    out.mkdir(parents=True, exist_ok=True)
    sp = out / "settings.json"
    if (out / "manifest.json").exists() and sp.exists():  # finished: confirmed, nothing written (read-only stores too)
        _same_settings(out, settings)
        _same_input(out, fingerprint, finished=True)
        return json.loads((out / "manifest.json").read_text())
    with lock_file(out / ".lock", f"the store {out}"):  # two `fastft shard` on one store would interleave shards
        if sp.exists():
            _same_settings(out, settings)
            if (out / "manifest.json").exists():  # finished by the writer that held the lock before us
                _same_input(out, fingerprint, finished=True)
                return json.loads((out / "manifest.json").read_text())
            if not _same_input(out, fingerprint, finished=False):
                _start_over(out)
        elif any(p.name != ".lock" for p in out.iterdir()):
            raise FastFTError(f"{out} is not empty and holds no fastft store; choose an empty or new directory")
        if not sp.exists():
            # the input's fingerprint is kept here, not in the manifest: the same images copied elsewhere (other
            # mtimes) must still give the same manifest, which views and reports name stores by
            fsync_write(sp, json.dumps({**settings, "input_fingerprint": fingerprint}, indent=1).encode())
        for tmp in out.glob("*.tmp"):
            tmp.unlink()

        records: list[dict] = []
        # fork is cheapest, but forking a process that already runs DALI's thread pools can deadlock: spawn then
        ctx = get_context("fork" if hasattr(os, "fork") and "nvidia.dali" not in sys.modules else "spawn")
        workers = workers or os.cpu_count() or 1
        t0 = time.time()
        pbar = _progress(len(inputs), progress)
        try:
            # an executor, not multiprocessing.Pool: on an error or Ctrl-C, Pool.terminate() kills workers that may be
            # writing a result to the result pipe, and its result thread then waits forever for the rest of that
            # message (seen as a hang after "disk full"), and a worker killed by the OOM killer loses its task and
            # hangs imap. shutdown() cancels the queued chunks and lets the running ones finish (a chunk each); a
            # dead worker raises BrokenProcessPool (results come through files: see bounded_imap).
            with spool_dir() as spool:  # removed once no worker writes
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(), True))
                try:
                    _write_shards(root, out, cfg, {c: i for i, c in enumerate(vocabulary)}, inputs, pool, spool, records,
                                  pbar, on_shard, version)
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
            pbar.close()
            return _finish(out, records, settings, scan_info, time.time() - t0)
        except BrokenProcessPool:  # a worker was killed (the out-of-memory killer, an admin): nothing hangs, nothing is lost
            pbar.close()
            for tmp in out.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            done = sum(r["consumed"] for r in records)
            raise FastFTError(f"a worker process died while writing the store {out} (killed, e.g. for memory: fewer "
                              f"--workers need less) after {done:,} of {len(inputs):,} inputs; re-run the same command: "
                              "it resumes after the last finished shard") from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            pbar.close()
            for tmp in out.glob("*.tmp"):  # the shard cut short: give its space back now (a re-run redoes it)
                tmp.unlink(missing_ok=True)
            done = sum(r["consumed"] for r in records)
            raise FastFTError(f"no space left on the device writing the store {out} ({_free(out)} free) after "
                              f"{done:,} of {len(inputs):,} inputs; free space (or use another --out) and re-run the same "
                              "command: it resumes after the last finished shard") from None


def _started_version(out: Path) -> int:
    """The format version of the store being written in ``out``: the one it was started in (an unfinished store
    resumes in it, byte-identical to an uninterrupted run; a finished one is confirmed), else :data:`STORE_VERSION`."""
    try:
        v = json.loads((out / "settings.json").read_text()).get("store_version", STORE_VERSION)
    except (OSError, ValueError):
        return STORE_VERSION
    return v if v in STORE_VERSIONS else STORE_VERSION  # (another version: _same_settings names the difference)


def _same_settings(out: Path, settings: dict) -> None:
    old = json.loads((out / "settings.json").read_text())
    old.pop("input_fingerprint", None)  # checked by _same_input
    if old != settings:
        diff = sorted(k for k in {*settings, *old} if old.get(k) != settings.get(k))
        said = "; ".join(f"{k}: the store's {old.get(k)!r}, now {settings.get(k)!r}" for k in diff)
        raise FastFTError(f"{out} holds a store made with different settings ({said}); use a new --out or the same settings")


def input_fingerprint(root: Path, inputs: list[Input]) -> str:
    """sha256 of the input list as the writer will use it: each input's split, wnid, exact path bytes, size and mtime
    (inside an archive: its offset and size, and the archive's size and mtime). A resume compares it with the one
    recorded when the store was started (``settings.json``): a renamed, added, removed or rewritten file changes it.
    The files are stat'ed by threads (on a network file system each stat is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    def stat(path: Path) -> str:
        try:
            st = path.stat()
            return f"{st.st_size} {st.st_mtime_ns}"
        except OSError:  # gone since the scan: the reader rejects it; the fingerprint still differs from a present file
            return "missing"
    archives = {a: stat(root / a) for a in sorted({x.archive for x in inputs if x.archive})}
    paths = [root / x.source for x in inputs if not x.archive]
    blocks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]  # a task per block: 1.28M futures cost seconds
    with ThreadPoolExecutor(16) as pool:
        it = itertools.chain.from_iterable(pool.map(lambda b: [stat(p) for p in b], blocks))
    d = hashlib.sha256()
    for a, st in archives.items():
        d.update(b"archive\0" + os.fsencode(a) + f"\0{st}\n".encode())
    for x in inputs:
        where = f"{x.offset} {x.size}" if x.archive else next(it)
        d.update(f"{x.split}\0{x.wnid}\0".encode() + os.fsencode(x.source) + f"\0{where}\n".encode())
    return d.hexdigest()


def _same_input(out: Path, fingerprint: str, finished: bool) -> bool:
    """Whether the store in ``out`` was started on the same input (see :func:`input_fingerprint`). A finished store
    of another input is an error (it may be in use: never removed); an unfinished one is started over (False)."""
    old = json.loads((out / "settings.json").read_text()).get("input_fingerprint")
    if old == fingerprint or (finished and old is None):  # (a store finished before fingerprints: its settings match)
        return True
    if finished:
        raise FastFTError(f"{out} is a finished store of a different input (files were renamed, added, removed or changed "
                          "since it was written); use a new --out, or remove it to shard again")
    why = "was started before inputs were fingerprinted" if old is None else "was started on a different input (files were renamed, added, removed or changed)"
    print(f"fastft shard: the unfinished store {out} {why}: starting over", file=sys.stderr, flush=True)
    return False


def _start_over(out: Path) -> None:
    """Remove what a writer leaves in an unfinished store (its shards, records and settings), and nothing else."""
    pattern = re.compile(r"(train|val)-\d{6}\.(tar|idx|json)(\.tmp)?|settings\.json")
    for p in out.iterdir():
        if pattern.fullmatch(p.name) or p.name.endswith(".tmp"):
            p.unlink()


def _write_shards(root: Path, out: Path, cfg: ShardConfig, label: dict[str, int], inputs: list[Input], pool, spool: str,
                  records: list[dict], pbar, on_shard: Callable[[int], None] | None, version: int) -> None:
    """The shard loop of :func:`write_store`: per split, skip finished shards, then fill shards in the seeded order
    (``label``: class -> label, the store's vocabulary; ``version``: the store format the shards are written in)."""
    limit = cfg.shard_mb * 1e6
    written_new = 0
    for split in ("train", "val"):
        items = [x for x in inputs if x.split == split]
        random.Random(f"fastft-shard/{cfg.seed}/{split}").shuffle(items)
        pos, index = 0, 0
        while (rp := out / f"{split}-{index:06d}.json").exists():  # resume: trust completed shards
            rec = json.loads(rp.read_text())
            records.append(rec)
            pos += rec["consumed"]
            index += 1
            pbar.update(rec["consumed"])
        if pos >= len(items):
            continue
        writer = _ShardWriter(out, split, index, version)
        jobs = ((str(root / (x.archive or x.source)), (x.offset, x.size) if x.archive else None, cfg.resize, cfg.quality,
                 x.reason)
                for x in items[pos:])
        for x, (jpg, info) in zip(items[pos:], bounded_imap(pool, _process, jobs, spool)):
            writer.consumed += 1
            if jpg is None:
                writer.rejected.append({"source": encode_source(x.source), "split": x.split, "wnid": x.wnid, "reason": info})
            else:
                writer.add(x, label[x.wnid], jpg, info)
            pbar.update(1)
            if writer.bytes >= limit:
                records.append(writer.close())
                written_new += 1
                if on_shard is not None:
                    try:
                        on_shard(written_new)
                    except BaseException:
                        pbar.close()
                        raise
                _check_space(out, records, len(inputs))
                index += 1
                writer = _ShardWriter(out, split, index, version)
        if writer.consumed:
            records.append(writer.close())
        else:
            writer.tf.close()
            writer.tmp.unlink()


def _progress(total: int, enabled: bool):
    from ...util.progress import bar

    return bar(total=total, unit="img", desc="shard", enabled=enabled, smoothing=0.1)
