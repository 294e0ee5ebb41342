"""`fastft shard` / `verify` / views on a synthetic ImageNet with broken files, read by the real clients."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from clirun import stop_after

from fastft.data.shard import ShardConfig, write_store
from fastft.data.store import dali_index, open_store, verify
from fastft.data.subsets import ClassSet, SubsetSpec
from fastft.data.synth import BROKEN, synth
from fastft.data.taxonomy import load
from fastft.data.views import open_view, resolve
from fastft.errors import FastFTError

CFG = ShardConfig(resize="80x80", shard_mb=0.25, allow_missing=True)


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_ledger_balances_and_kinds_are_counted(synth_tree, store):
    m = open_store(store).manifest
    t = m["totals"]
    n_inputs = sum(1 for p in synth_tree.rglob("*") if p.is_file() and (p.parent.parent.name in ("train", "val") or p.parent.name == "val"))
    assert t["inputs"] == n_inputs == t["written"] + t["rejected"]
    assert m["input_kinds"]["cmyk"] == 1 and m["input_kinds"]["grayscale"] == 1
    assert m["input_kinds"]["png-rgb"] == 1 and m["input_kinds"]["png-rgba"] == 1
    rejected = list(csv.DictReader(open(store / "rejected.csv")))
    kinds = {Path(r["source"]).stem.rsplit("_", 1)[1]: r["reason"] for r in rejected}
    assert set(kinds) == {"truncated", "empty", "html", "gzip", "random"}
    assert "0-byte" in kinds["empty"] and "truncated" in kinds["truncated"] and "gzip" in kinds["gzip"]
    assert set(BROKEN) - set(kinds) == {"cmyk", "png", "gray", "rgba"}  # the rest were converted, not lost
    assert t["by_split"]["val"] == 24 * 6


def test_samples_are_rgb_jpeg_with_right_labels(store, synth_tree):
    from PIL import Image
    import tarfile

    h = load()
    df = open_store(store).samples()
    assert df["key"].is_unique and not df["key"].str.contains(r"\.").any()
    assert (df["label"] == df["wnid"].map(h.label)).all()
    keys = set(df["key"])
    c = sorted(p.name for p in (synth_tree / "train").iterdir())[0]
    assert {f"{c}_9001-v2", f"{c}_9002", f"{c}_cmyk"} <= keys
    row = df[df["key"] == f"{c}_cmyk"].iloc[0]
    with tarfile.open(store / f"{row.shard}.tar") as tf:
        im = Image.open(tf.extractfile(f"{row.key}.jpg"))
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (80, 80)
        assert tf.extractfile(f"{row.key}.cls").read() == str(h.label[c]).encode()  # ASCII: WebDataset's convention


def test_dali_index_matches_dalis_own_indexer(store, tmp_path):
    tar = next(store.glob("train-*.tar"))
    exe = Path(sys.executable).with_name("wds2idx")
    subprocess.run([str(exe), str(tar), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_text() == (store / tar.name.replace(".tar", ".idx")).read_text() == dali_index(tar)


def test_verify_names_corrupt_shard_and_index(store, tmp_path):
    assert verify(store) == []
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    tar = sorted(bad.glob("train-*.tar"))[1]
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF
    tar.write_bytes(bytes(data))
    idx = sorted(bad.glob("val-*.idx"))[0]
    idx.write_text(idx.read_text()[:-20])
    problems = verify(bad)
    assert any(tar.name in p and "sha256" in p for p in problems)
    assert any(idx.name in p for p in problems)
    from fastft.cli import main

    with pytest.raises(SystemExit) as e:
        main(["verify", str(bad)])
    assert e.value.code == 1


def test_reshard_is_byte_identical_and_resumes(synth_tree, store, tmp_path, hold_lock):
    again = tmp_path / "again"
    write_store(synth_tree, again, CFG, workers=2, progress=False)
    assert _digest(again) == _digest(store)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        write_store(synth_tree, part, CFG, workers=2, progress=False, on_shard=stop_after(3))
    assert not (part / "manifest.json").exists() and len(list(part.glob("*.json"))) == 4  # settings + 3 shard records
    (part / "train-000003.tar.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    with hold_lock(part / ".lock"):  # another `fastft shard` at work on the same store
        with pytest.raises(FastFTError, match="being written by another process"):
            write_store(synth_tree, part, CFG, workers=2, progress=False)
    write_store(synth_tree, part, CFG, workers=2, progress=False)  # its holder is gone, and so is its lock
    assert _digest(part) == _digest(store)


def test_shard_workers_run_at_most_two_windows_ahead_of_the_writer(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from fastft.data.spool import bounded_imap

    drawn = []

    def jobs():
        for i in range(1000):
            drawn.append(i)
            yield -i

    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        out = []
        for i, r in enumerate(bounded_imap(pool, abs, jobs(), tmp_path, window=64, chunksize=4)):
            assert len(drawn) <= (i // 64 + 2) * 64, "jobs submitted beyond the next window"
            out.append(r)
    assert out == list(range(1000)), "results come in order"
    assert not list(tmp_path.iterdir()), "each chunk's spool file is removed once read"
    with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
        assert list(bounded_imap(pool, abs, [], tmp_path, window=8)) == [] and list(bounded_imap(pool, abs, [-3], tmp_path, window=8)) == [3]


@pytest.fixture
def read_only(tmp_path):
    """``read_only(src)``: a read-only bind mount of the directory ``src`` (even root cannot write to it); skipped where
    mounting is not permitted."""
    mounts = []

    def make(src: Path) -> Path:
        d = tmp_path / f"ro{len(mounts)}"
        d.mkdir()
        if subprocess.run(["mount", "--bind", str(src), str(d)], capture_output=True).returncode:
            pytest.skip("needs permission to bind-mount")
        mounts.append(d)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True)
        return d
    try:
        yield make
    finally:
        for d in mounts:
            subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def small_disk(tmpfs):
    """A real 1 MB file system (tmpfs), grown by ``remount``; skipped where mounting is not permitted."""
    return tmpfs("1m")


def test_full_disk_is_named_early_and_the_store_resumes(synth_tree, store, small_disk):
    # after the first shard, the projected size of the rest is more than the disk holds: stop before hours of work
    with pytest.raises(FastFTError, match=r"needs about .* more for its .* remaining inputs .* free"):
        write_store(synth_tree, small_disk / "a", CFG, workers=2, progress=False)
    # one big shard: the disk fills mid-shard; the cut shard is removed, and the error says how to go on
    with pytest.raises(FastFTError, match="no space left on the device .* re-run the same command"):
        write_store(synth_tree, small_disk / "b", replace(CFG, shard_mb=64), workers=2, progress=False)
    assert not list((small_disk / "b").glob("*.tmp"))
    shutil.rmtree(small_disk / "b")
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    write_store(synth_tree, small_disk / "a", CFG, workers=2, progress=False)  # resumes after its first shard
    assert _digest(small_disk / "a") == _digest(store)


# Loaded by the `fastft shard` processes of the tests below (as ``sitecustomize``, through PYTHONPATH): each worker,
# after converting a few inputs, says so in a file and then waits (until it is killed, or its parent is gone). The kill
# then always lands mid-run, whatever the machine's load: no wall-clock window to hit.
_PAUSE_WORKERS = """
import os, sys, time
from pathlib import Path

_main = int(os.environ.setdefault("FASTFT_TEST_PAUSE_MAIN", str(os.getpid())))  # workers fork or spawn: inherited
_dir = Path(os.environ["FASTFT_TEST_PAUSE_DIR"])
import fastft.data.shard as _shard  # which imports _process from .convert: patched in both
import fastft.data.shard.convert as _convert

_real, _done = _convert._process, [0]


def _process(args):
    if os.getpid() != _main:
        _done[0] += 1
        if _done[0] > 3:  # some results are in: shards are being written
            (_dir / f"paused-{os.getpid()}").touch()
            if os.environ.get("FASTFT_TEST_PAUSE_FOREVER"):
                time.sleep(3600)  # busy, as in a long conversion: only its parent's death (or a kill) ends it
            parent = os.getppid()
            while os.getppid() == parent:
                time.sleep(0.05)
            os._exit(0)  # the run was killed: leave no orphan
    return _real(args)


_process.__qualname__, _process.__module__ = "_process", _convert.__name__  # pickled by name to the workers
_convert._process = _shard._process = _process
"""


def _shard_killed_mid_run(synth_tree, out: Path, env: dict, worker: bool, forever: bool = False):
    """Runs `fastft shard` into ``out`` with its workers paused mid-run (:data:`_PAUSE_WORKERS`) and SIGKILLs one of
    its worker processes (``worker``) or the command itself. Returns (the command, the Popen, stderr). The command
    returned runs without the pause."""
    import signal
    import time

    hook = out.parent / "pause-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_PAUSE_WORKERS)
    paused_env = {**env, "FASTFT_TEST_PAUSE_DIR": str(hook), **({"FASTFT_TEST_PAUSE_FOREVER": "1"} if forever else {}),
                  "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH", "")]))}
    cmd = [sys.executable, "-m", "fastft", "shard", str(synth_tree), "--out", str(out), "--resize", "80x80", "--shard-mb", "0.25",
           "--allow-missing", "--workers", "2", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=paused_env)
    t = time.time()
    try:
        while not (paused := list(hook.glob("paused-*"))) or not list(out.glob("train-*.tmp")):
            assert p.poll() is None, f"`fastft shard` ended before its workers paused: {p.communicate()[1][-2000:]}"
            assert time.time() - t < 300, "the workers did not pause within 5 minutes"
            time.sleep(0.02)
    except BaseException:
        p.kill()  # its paused workers exit when it is gone
        raise
    os.kill(int(paused[0].name.split("-")[1]) if worker else p.pid, signal.SIGKILL)
    stderr = p.communicate(timeout=300)[1]
    return cmd, p, stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL: POSIX")
def test_a_killed_shard_worker_stops_the_run_with_a_clear_error_and_the_store_resumes(synth_tree, store, tmp_path):
    """A worker killed mid-run (the out-of-memory killer) ends `fastft shard` with an error naming what to do — not a
    hang (multiprocessing.Pool lost the task and waited forever; a worker killed while writing a large result into the
    executor's pipe left half a message that its result thread waited on) — and the re-run gives the same bytes as an
    uninterrupted run."""
    out = tmp_path / "s"
    cmd, p, stderr = _shard_killed_mid_run(synth_tree, out, dict(os.environ), worker=True)
    assert p.returncode != 0 and "a worker process died while writing the store" in stderr and "it resumes" in stderr, stderr[-2000:]
    assert not list(out.glob("*.tmp")) and not (out / "manifest.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digest(out) == _digest(store)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="SIGKILL and fork: POSIX")
def test_a_killed_shard_run_resumes_and_its_spool_directory_is_removed(synth_tree, store, tmp_path):
    """`fastft shard` killed outright (SIGKILL: no cleanup runs) leaves its spool directory in $TMPDIR; the re-run
    removes it (its process is gone), leaves a live process's alone, and writes the same bytes as an uninterrupted run."""
    import signal

    out, tmp = tmp_path / "s", tmp_path / "tmp"
    tmp.mkdir()
    live = tmp / f"fastft-spool-{os.getpid()}-x"  # this test's own process: alive
    live.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd, p, _ = _shard_killed_mid_run(synth_tree, out, env, worker=False)
    assert p.returncode == -signal.SIGKILL
    dead = list(tmp.glob(f"fastft-spool-{p.pid}-*"))
    assert dead, "the killed run left its spool directory"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(d.exists() for d in dead) and live.exists()
    assert _digest(out) == _digest(store)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_killed_shard_run_leaves_no_worker_behind_and_its_rerun_is_not_locked_out(synth_tree, store, tmp_path):
    """`fastft shard` SIGKILLed while its workers are busy (each in a conversion that only ends when it is killed):
    the workers end with it — they held the store's lock (forked with it) and waited forever on the pool's pipe, and
    every re-run was refused as "being written by another process" — and the re-run writes the uninterrupted bytes."""
    import signal
    import time

    out = tmp_path / "s"
    cmd, p, _ = _shard_killed_mid_run(synth_tree, out, dict(os.environ), worker=False, forever=True)
    assert p.returncode == -signal.SIGKILL
    workers = [int(f.name.split("-")[1]) for f in (out.parent / "pause-hook").glob("paused-*")]
    deadline = time.monotonic() + 300
    while (left := [w for w in workers if _alive(w)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for w in left:  # leave none behind whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert workers and not left, f"workers {left} outlived the killed `fastft shard`"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digest(out) == _digest(store)


def test_read_only_store_is_confirmed_verified_and_read_and_an_unfinished_one_named(synth_tree, store, tmp_path, read_only):
    ro = read_only(store)  # e.g. a finished store shared read-only across a cluster
    assert write_store(synth_tree, ro, CFG, workers=2, progress=False) == json.loads((store / "manifest.json").read_text())
    assert verify(ro) == []
    spec = SubsetSpec("custom", 0, {}, {"t": ClassSet(tuple(open_store(ro).classes[:3]))}, {})
    view = resolve(spec, "t", ro, tmp_path / "view")  # views live elsewhere; the store is only read
    assert len(open_view(view.path).keys("train")) == view.meta["splits"]["train"]["samples"] > 0
    part = tmp_path / "part"
    shutil.copytree(store, part)
    (part / "manifest.json").unlink()  # an unfinished store, mounted read-only: named, not an OSError
    with pytest.raises(FastFTError, match=r"the store .* cannot be written: .* is read-only"):
        write_store(synth_tree, read_only(part), CFG, workers=2, progress=False)


def test_shards_are_hashed_once_also_for_a_read_only_store_and_by_runs_starting_together(store, view_near, tmp_path,
                                                                                       read_only, monkeypatch):
    import threading
    import time

    from fastft.data import store as store_mod
    from fastft.data.store import verify_shards

    hashed = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda p, progress=None: hashed.append(Path(p).name) or real(p, progress))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    names = view_near.meta["splits"]["train"]["shards"] + view_near.meta["splits"]["val"]["shards"]
    ro = read_only(store)
    files = sorted(f"{n}.{x}" for n in names for x in ("tar", "idx"))  # each shard and its DALI index
    assert verify_shards(ro, names) == [] and sorted(hashed) == files
    assert verify_shards(ro, names) == [] and len(hashed) == len(files), "stamped in the user's cache: not hashed again"
    assert {p.name for p in (tmp_path / "cache" / "fastft" / "verified").glob("*/*") if "." not in p.name} == set(names)
    # two runs starting together on a fresh copy (hashing slowed so that both find every shard unstamped): each shard is
    # hashed by one of them
    fresh = tmp_path / "fresh"
    shutil.copytree(store, fresh, ignore=shutil.ignore_patterns(".verified"))
    hashed.clear()
    monkeypatch.setattr(store_mod, "sha256_file", lambda p, progress=None: hashed.append(Path(p).name) or time.sleep(0.3) or real(p, progress))
    results = []
    threads = [threading.Thread(target=lambda: results.append(verify_shards(fresh, names))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[], []] and sorted(hashed) == files
    # an index changed after it was stamped (e.g. by hand): named, as a changed tar is; the shard's tar still stamped
    idx = fresh / f"{names[0]}.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[0], "9" + lines[1], *lines[2:]]) + "\n")
    assert verify_shards(fresh, names) == [f"{names[0]}.idx: does not match the manifest (corrupted or truncated); "
                                             f"run `fastft verify {fresh}`"]


def test_val_labels_agree_across_layouts(tmp_path):
    """Each val layout, as a tree and as the downloaded archives (devkit: its .tar.gz), gives the same labels."""
    h = load()
    classes = list(h.wnids[:3])
    labels = {}
    for layout in ("folders", "devkit", "kaggle"):
        for archives in (False, True):
            name = f"{layout}{'-archives' if archives else ''}"
            synth(tmp_path / name, classes=classes, train_per_class=2, val_per_class=4, size=40, val_layout=layout, seed=5,
                  archives=archives)
            write_store(tmp_path / name, tmp_path / f"s-{name}", ShardConfig(resize="40x40", allow_missing=True), workers=1,
                        progress=False)
            df = open_store(tmp_path / f"s-{name}").samples()
            labels[name] = dict(zip(df[df.split == "val"].key, df[df.split == "val"].wnid))
    assert len(labels["folders"]) == 12
    assert all(v == labels["folders"] for v in labels.values()) and len(labels) == 6


def test_downloaded_archives_shard_like_the_extracted_tree(store, tmp_path):
    """ILSVRC2012_img_train.tar (a tar per class), ILSVRC2012_img_val.tar and the devkit .tar.gz, read in place, give
    byte-identical shards to the extracted tree (broken files rejected alike); damaged archives are named."""
    from fastft.data.sources.ilsvrc2012_archives import TRAIN_TAR, VAL_TAR

    root = tmp_path / "download"
    synth(root, train_per_class=40, val_per_class=6, size=72, val_layout="devkit", broken=True, seed=0, archives=True)
    assert sorted(p.name for p in root.iterdir()) == ["ILSVRC2012_devkit_t12.tar.gz", TRAIN_TAR, VAL_TAR]
    m = write_store(root, tmp_path / "s", ShardConfig(resize="80x80", shard_mb=0.25, allow_missing=True), workers=2,
                    progress=False)
    ref = open_store(store).manifest
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert m["totals"] == ref["totals"] and m["rejected_reasons"] == ref["rejected_reasons"]
    rej = (tmp_path / "s" / "rejected.csv").read_text()
    assert f"{TRAIN_TAR}/n01440764.tar/n01440764_truncated.JPEG" in rej

    (root / "ILSVRC2012_devkit_t12.tar.gz").unlink()  # flat val files and nothing to label them with
    with pytest.raises(FastFTError, match="put ILSVRC2012_devkit_t12.tar.gz or LOC_val_solution.csv next to it"):
        write_store(root, tmp_path / "s2", ShardConfig(allow_missing=True), progress=False)
    data = (root / TRAIN_TAR).read_bytes()  # cut inside a class tar: named before any work
    (root / TRAIN_TAR).write_bytes(data[: len(data) // 2])
    with pytest.raises(FastFTError, match=TRAIN_TAR):
        write_store(root, tmp_path / "s3", ShardConfig(allow_missing=True), progress=False)


def test_bad_trees_fail_before_work(tmp_path, synth_tree):
    h = load()
    root = tmp_path / "t"
    synth(root, classes=list(h.wnids[:2]), train_per_class=2, val_per_class=1, size=40)
    with pytest.raises(FastFTError, match="998 classes have no train"):
        write_store(root, tmp_path / "o1", ShardConfig(), progress=False)
    (root / "train" / "n99999999").mkdir()
    with pytest.raises(FastFTError, match="n99999999"):
        write_store(root, tmp_path / "o2", ShardConfig(allow_missing=True), progress=False)
    (root / "train" / "n99999999").rmdir()
    (root / "train" / h.wnids[5]).mkdir()
    with pytest.raises(FastFTError, match="empty"):
        write_store(root, tmp_path / "o3", ShardConfig(allow_missing=True), progress=False)
    with pytest.raises(FastFTError, match="resize"):
        ShardConfig(resize="big")


def test_view_with_cap_reads_exactly_through_dali_and_webdataset(store, store_classes, tmp_path):
    import webdataset as wds
    from nvidia.dali import fn, pipeline_def, types

    spec = SubsetSpec("custom", 3, {}, {"t": ClassSet(tuple(store_classes[:10]), 30)}, {})
    v = resolve(spec, "t", store, tmp_path / "view")
    want = set(v.keys("train")["key"])
    assert len(want) == 300 and v.keys("train").groupby("wnid").size().eq(30).all()
    assert resolve(spec, "t", store, tmp_path / "view2").keys("train")["key"].tolist() == v.keys("train")["key"].tolist()
    # caps are nested and agree across sets (a §4.4 grid varies the number of images, not their draw); seeds differ
    grid = SubsetSpec("custom", 3, {}, {"n10": ClassSet(tuple(store_classes[:5]), 10), "n30": ClassSet(tuple(store_classes[:10]), 30)}, {})
    k10 = set(resolve(grid, "n10", store, tmp_path / "g10").keys("train")["key"])
    k30 = set(resolve(grid, "n30", store, tmp_path / "g30").keys("train")["key"])
    assert len(k10) == 50 and k10 < k30 and k30 == want
    other = SubsetSpec("custom", 4, {}, {"t": ClassSet(tuple(store_classes[:10]), 30)}, {})
    assert set(resolve(other, "t", store, tmp_path / "s4").keys("train")["key"]) != want
    tars, idxs = v.files("train")

    @pipeline_def(batch_size=50, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"], dtypes=[types.UINT8, types.UINT8],
                                         missing_component_behavior="error", name="r")
        return fn.get_property(jpg, key="source_info"), cls

    p = pipe()
    p.build()
    assert p.epoch_size("r") == 300
    got, labels = [], []
    for _ in range(6):
        info, cls = p.run()
        got += [_key(info[i]) for i in range(len(info))]
        labels += [int(bytes(np.array(cls[i]))) for i in range(len(cls))]  # the view's index sizes each ASCII .cls
    assert set(got) == want and len(got) == 300
    h = load()
    assert set(labels) == {h.label[w] for w in store_classes[:10]}
    ds = wds.WebDataset(tars, shardshuffle=False).select(lambda s: s["__key__"] in want)
    assert {s["__key__"] for s in ds} == want


def test_sets_selecting_the_same_samples_share_their_files_and_keep_their_own_identity(store, store_classes, tmp_path, monkeypatch):
    from fastft.data.views import shared_view
    from fastft.data.subsets import make

    # the same universe with another target cap: a different spec, equal near/far sets (their seed draws the classes,
    # the cap applies to the target only)
    a, b = (make("near-far", 0, within=store_classes, cap=c) for c in (10, 20))
    assert a.hash != b.hash and a.sets["near"] == b.sets["near"]
    views = tmp_path / "views"
    got = {(s.hash, n): shared_view(s.save(tmp_path / f"{s.hash}.json"), n, store, views) for s in (a, b) for n in ("near", "target")}
    near_a, near_b = (open_view(got[s.hash, "near"]) for s in (a, b))
    assert near_a.path != near_b.path and near_a.meta["spec_hash"] == a.hash and near_b.meta["spec_hash"] == b.hash
    assert (near_a.path / "train").resolve() == (near_b.path / "train").resolve()  # one copy of the index files
    assert (got[a.hash, "target"] / "train").resolve() != (got[b.hash, "target"] / "train").resolve()  # caps differ
    assert len(list((views / "by-content").iterdir())) == 3
    plain = resolve(a, "near", store, tmp_path / "plain")
    for v in (near_a, near_b):
        assert v.meta["splits"] == plain.meta["splits"] and v.classes == plain.classes
        assert v.keys("train").equals(plain.keys("train"))
        assert [Path(i).read_text() for i in v.files("train")[1]] == [Path(i).read_text() for i in plain.files("train")[1]]
    moved = tmp_path / "moved"
    views.rename(moved)  # the links are relative: a runs directory can move
    assert open_view(moved / got[b.hash, "near"].name).keys("val").equals(plain.keys("val"))

    def no_links(self, target):
        raise OSError(95, "Operation not supported", str(self))

    monkeypatch.setattr(Path, "symlink_to", no_links)  # a file system without symbolic links: the files are copied
    v = open_view(shared_view(tmp_path / f"{a.hash}.json", "far", store, moved))
    assert not (v.path / "train").is_symlink() and v.keys("train").equals(resolve(a, "far", store, tmp_path / "pf").keys("train"))


def _key(t) -> str:
    # DALI's source_info for a webdataset sample: "<tar path>:<index>:<key>.jpg" style; the key is the last field
    s = bytes(np.array(t)).decode()
    return s.rsplit(":", 1)[-1].split("/")[-1].split(".")[0]


def test_view_refuses_damaged_store(store, view_near, tmp_path):
    from fastft.data.views import open_view

    assert open_view(view_near.path).num_classes == 8
    with pytest.raises(FastFTError, match="no set"):
        resolve(SubsetSpec("x", 0, {}, {"a": ClassSet(("n01440764",))}, {}), "b", store, tmp_path / "v")
    with pytest.raises(FastFTError, match="does not hold"):
        resolve(SubsetSpec("x", 0, {}, {"a": ClassSet(("n15075141",))}, {}), "a", store, tmp_path / "v")


def test_view_refuses_bit_flipped_shard(store, view_near, tmp_path):
    from fastft.data.views import open_view

    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    shutil.rmtree(bad / ".verified", ignore_errors=True)
    meta = json.loads((view_near.path / "view.json").read_text())
    v = tmp_path / "view"
    shutil.copytree(view_near.path, v)
    meta["store"] = str(bad)
    (v / "view.json").write_text(json.dumps(meta))
    assert open_view(v).num_classes == 8 and len(list((bad / ".verified").iterdir())) > 0
    shard = bad / f"{meta['splits']['train']['shards'][0]}.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0x01  # same size: only a hash sees it
    shard.write_bytes(bytes(data))
    with pytest.raises(FastFTError, match=shard.name):
        open_view(v)
    bad.rename(tmp_path / "moved")  # a store copied elsewhere: the view names the old path and says what to do
    with pytest.raises(FastFTError, match="If the store moved, resolve the view again"):
        open_view(v)
