"""Shared fixtures: one synthetic ImageNet (with every kind of broken file), its store, and views — built once per session."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Without a GPU, fastft's Triton kernels run through Triton's interpreter on CPU tensors (tests/test_kernels.py). Set
# here, before any test file imports triton (torch.compile does): Triton reads it once, so a later setting is lost.
if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> Path:
    from fastft.data.synth import synth

    root = tmp_path_factory.mktemp("imagenet") / "ILSVRC2012"
    synth(root, train_per_class=40, val_per_class=6, size=72, val_layout="devkit", broken=True, seed=0)
    return root


@pytest.fixture(scope="session")
def store(synth_tree, tmp_path_factory) -> Path:
    from fastft.data.shard import ShardConfig, write_store

    out = tmp_path_factory.mktemp("store") / "imagenet"
    write_store(synth_tree, out, ShardConfig(resize="80x80", shard_mb=0.25, allow_missing=True), workers=2, progress=False)
    return out


V1_CLASSES = ("n02085620", "n02086240", "n03000134", "n04228054")  # 2 dogs, 2 instruments, labels of 3 digits
V1_CONFIG = dict(resize="80x80", shard_mb=0.05, classes=V1_CLASSES)


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory) -> Path:
    """A small synthetic ImageNet of 4 classes (16 + 4 images each), for stores written in each format version."""
    from fastft.data.synth import synth

    root = tmp_path_factory.mktemp("small") / "ILSVRC2012"
    synth(root, list(V1_CLASSES), train_per_class=16, val_per_class=4, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def store_v1(small_tree, tmp_path_factory) -> Path:
    """A version-1 store (``.cls`` = int32 little-endian), as fastft wrote before version 2, of ``small_tree``."""
    from fastft.data.shard import ShardConfig, write_store

    out = tmp_path_factory.mktemp("store-v1") / "small"
    write_store(small_tree, out, ShardConfig(**V1_CONFIG), workers=1, progress=False, store_version=1)
    return out


@pytest.fixture(scope="session")
def store_classes(store) -> list[str]:
    from fastft.data.store import open_store
    from fastft.data.taxonomy import load

    h = load()
    return sorted({w for s in open_store(store).shards for w in s["classes"]}, key=h.label.__getitem__)


@pytest.fixture(scope="session")
def demo_spec(store_classes, tmp_path_factory):
    from fastft.data.subsets import make

    spec = make("near-far", 0, within=store_classes)
    spec.save(tmp_path_factory.mktemp("spec") / "spec.json")
    return spec


@pytest.fixture(scope="session")
def view_near(demo_spec, store, tmp_path_factory):
    from fastft.data.views import resolve

    return resolve(demo_spec, "near", store, tmp_path_factory.mktemp("views") / "near")


@pytest.fixture(scope="session")
def source_run(demo_spec, store, tmp_path_factory):
    """A finished 4-epoch scratch run on the near set: (runs dir, spec path, run dir); its checkpoints e0002 and e0003
    are kept. Tests that change it work on a copy."""
    from clirun import SMALL, fastft, run_dir

    out = tmp_path_factory.mktemp("runs")
    spec = out / "spec.json"
    demo_spec.save(spec)
    fastft("train", f"spec={spec}", "set=near", f"store={store}", f"out={out}", "name=near", "epochs=4", "lr=0.005", *SMALL)
    return out, spec, run_dir(out, "near")


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size)``: a new real file system of ``size`` (``"64k"``, ``"1m"``) mounted in ``tmp_path``, unmounted at
    the end; skipped with the reason where mounting is not permitted (needs root)."""
    mounts = []

    def mount(size: str) -> Path:
        d = tmp_path / f"tmpfs{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"needs permission to mount a tmpfs: {r.stderr.strip()}")
        mounts.append(d)
        return d
    try:
        yield mount
    finally:
        for d in mounts:
            subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def hold_lock():
    """``with hold_lock(path):`` — another process holds fastft's lock on ``path`` (as a concurrent shard or run would)."""
    @contextlib.contextmanager
    def hold(path):
        code = "import sys, time; from fastft.data.store import lock_file; f = lock_file(sys.argv[1], 'x'); print('held', flush=True); time.sleep(600)"
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "held"
            yield p
        finally:
            p.kill()
            p.wait()
    return hold


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node SLURM on localhost (tests/slurm_cluster.py), started once, stopped at the end — its jobs
    cancelled and its processes gone, also after a failure. Skipped with the reason where SLURM is not installed."""
    from slurm_cluster import start

    cluster = start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()
