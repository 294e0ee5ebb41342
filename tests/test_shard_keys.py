"""`fastft shard` keys, sample index and `fastft verify` on real trees of awkward names: every input gets its own key
(collision-free by construction), the index matches the tars, and verify names every kind of damage to the index."""
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import stop_after

from fastft.data.store import open_store, source_bytes, verify
from fastft.data.taxonomy import load

W1, W2, W3 = "n01440764", "n01443537", "n01484850"

# file names (bytes: any legal Linux name) per class folder; several sets that collide once sanitised
TRAIN_NAMES = {
    W1: [b"x.JPEG", b"x.jpg", b"x-2.JPEG",                                  # the issue's: `x-2` was given twice
         f"{W1}_x.JPEG".encode(),                                          # the wnid prefix makes `x` this name
         b"a.b.JPEG", b"a-b.JPEG", b"a b.JPEG", b"a~1.JPEG", b"a-1.JPEG", b"a-b~1.JPEG"],  # dots, spaces, the suffix mark
    W2: [b"L" * 150 + b"1.JPEG", b"L" * 150 + b"2.JPEG", b"L" * 64 + b".JPEG",  # alike in the first 64 characters
         b"M" * 95 + b".JPEG", b"N" * 240 + b".JPEG"],                      # past ustar's 100
    W3: [b"img.JPEG", b"---.JPEG", ".jpg".encode(), "猫.jpg".encode(), "犬.jpg".encode(),  # nothing readable left
         b"my photo (1).JPEG", b"v1.2.3.final.jpeg", "naïve résumé.JPEG".encode(), b"100%.JPEG",
         b"\xff\xfe.JPEG", b"caf\xe9.JPEG", "café.JPEG".encode(), b"new\nline.JPEG", b"tab\there, comma.JPEG"],  # not UTF-8, controls
}
BROKEN_NAMES = {W3: [b"\xff" * 120 + b".JPEG", "断.JPEG".encode()]}  # rejected: the ledger keeps their names exactly too
VAL_NAMES = {W1: [f"{W1}_x.JPEG".encode(), b"x.JPEG"]}  # val keys have no wnid prefix: `n01440764_x` again


def _color(i: int) -> tuple[int, int, int]:
    return (10 + 20 * (i % 12), 10 + 20 * (i // 12 % 12), 128)


def _jpeg(i: int) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (40, 30), _color(i)).save(b, "JPEG", quality=95)
    return b.getvalue()


def _which(jpg: bytes) -> int:
    """The file index whose colour a decoded sample has."""
    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"), np.int32).reshape(-1, 3).mean(0)
    return int(round((px[0] - 10) / 20)) + 12 * int(round((px[1] - 10) / 20))


def make_tree(root: Path, train: dict, val: dict, broken: dict) -> dict[bytes, tuple[int, str, str]]:
    """A tree of distinct solid-colour JPEGs under the given names, and of ``broken`` (not images) in train/;
    relative path bytes of the images -> (colour index, split, wnid)."""
    for w, ns in broken.items():
        os.makedirs(os.fsencode(root / "train" / w), exist_ok=True)
        for n in ns:
            with open(os.path.join(os.fsencode(root / "train" / w), n), "wb") as f:
                f.write(b"<html>not an image</html>")
    files, i = {}, 0
    for split, names in (("train", train), ("val", val)):
        for w, ns in names.items():
            d = os.fsencode(root / split / w)
            os.makedirs(d, exist_ok=True)
            for n in ns:
                with open(os.path.join(d, n), "wb") as f:
                    f.write(_jpeg(i))
                files[f"{split}/{w}/".encode() + n] = (i, split, w)
                i += 1
    return files


def shard_cli(root: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fastft", "shard", str(root), "--out", str(out), "--resize", "32x32", "--shard-mb", "0.004",
           "--classes", W1, W2, W3, "--workers", "2", "--quiet", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def odd(tmp_path_factory):
    """(tree, {path bytes: (colour, split, wnid)}, store): the awkward names sharded by the real `fastft shard`."""
    root = tmp_path_factory.mktemp("odd") / "ILSVRC2012"
    files = make_tree(root, TRAIN_NAMES, VAL_NAMES, BROKEN_NAMES)
    out = root.parent / "store"
    r = shard_cli(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, files, out


def _rows(store: Path):
    return open_store(store).samples()


def test_colliding_names_each_get_their_own_key_and_read_back_distinct(odd):
    import webdataset as wds

    root, files, out = odd
    m = open_store(out).manifest
    assert m["totals"]["written"] == len(files) and m["totals"]["rejected"] == 2 and m["totals"]["inputs"] == len(files) + 2
    df = _rows(out)
    assert len(df) == len(files) and df["key"].is_unique
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+(~[0-9]+)?", k) and len(k) + 4 <= 100 for k in df["key"])
    # the names: three keys, none of them twice, `x-2` kept for the file of that name
    key = {(r.split, r.source): r.key for r in df.itertuples()}
    # names with nothing readable share the base `img`: numbered in name-byte order (rejected inputs hold numbers too)
    nothing = sorted([b"---.JPEG", b".jpg", b"img.JPEG", "猫.jpg".encode(), "犬.jpg".encode(), b"\xff\xfe.JPEG"] + BROKEN_NAMES[W3])
    n = nothing.index(b"\xff\xfe.JPEG") + 1
    assert key[("train", f"train/{W3}/%FF%FE.JPEG")] == f"{W3}_img~{n}"
    assert key[("train", f"train/{W1}/x-2.JPEG")] == f"{W1}_x-2"
    assert {key[("train", f"train/{W1}/{n}")] for n in ("x.JPEG", "x.jpg", f"{W1}_x.JPEG")} == {f"{W1}_x~{n}" for n in (1, 2, 3)}
    assert key[("val", f"val/{W1}/{W1}_x.JPEG")] == f"{W1}_x~4"
    # every sample, read at its index offsets, is the image of its own source file, with its label
    h = load()
    seen = set()
    for r in df.itertuples():
        with open(out / f"{r.shard}.tar", "rb") as f:
            jpg = os.pread(f.fileno(), r.jpg_size, r.jpg_offset)
            cls = int(os.pread(f.fileno(), len(str(r.label)), r.cls_offset))
        i, split, w = files[source_bytes(r.source)]
        assert _which(jpg) == i and (r.split, r.wnid) == (split, w) and cls == r.label == h.label[w]
        seen.add(i)
    assert seen == {i for i, _, _ in files.values()}
    # and WebDataset groups the tar members into exactly these samples
    tars = sorted(str(p) for p in out.glob("*.tar"))
    got = {s["__key__"]: _which(s["jpg"]) for s in wds.WebDataset(tars, shardshuffle=False)}
    assert got == {r.key: files[source_bytes(r.source)][0] for r in df.itertuples()}


def test_a_view_of_the_awkward_names_reads_every_sample_through_dali(odd, tmp_path):
    from nvidia.dali import fn, pipeline_def, types

    from fastft.data.views import resolve
    from fastft.data.subsets import ClassSet, SubsetSpec

    _, files, out = odd
    v = resolve(SubsetSpec("custom", 0, {}, {"t": ClassSet((W1, W2, W3))}, {}), "t", out, tmp_path / "view")
    df = _rows(out)
    want = {r.key: files[source_bytes(r.source)][0] for r in df[df["split"] == "train"].itertuples()}
    tars, idxs = v.files("train")

    @pipeline_def(batch_size=len(want), num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"], dtypes=[types.UINT8, types.UINT8],
                                         missing_component_behavior="error", name="r")
        return fn.get_property(jpg, key="source_info"), jpg

    p = pipe()
    p.build()
    assert p.epoch_size("r") == len(want)
    info, jpg = p.run()
    got = {bytes(np.array(info[i])).decode().rsplit(":", 1)[-1].split(".")[0]: _which(bytes(np.array(jpg[i]))) for i in range(len(info))}
    assert got == want


def test_keys_are_the_same_whatever_order_the_inputs_come_in(odd):
    from dataclasses import replace

    from fastft.data.shard.inputs import Input, _assign_keys

    _, files, _ = odd
    inputs = [Input(s, w, os.fsdecode(p)) for p, (_, s, w) in files.items()]
    assert len({x.key for x in _assign_keys(inputs)}) == len(inputs)
    keys = {x.source: x.key for x in _assign_keys(inputs)}
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [inputs[i] for i in rng.permutation(len(inputs))]
        assert {x.source: x.key for x in _assign_keys(shuffled)} == keys
    # the same names read from the downloaded archives (other paths, same folders) get the same keys
    arch = [replace(x, source=f"ILSVRC2012_img_{x.split}.tar/{x.source.split('/', 1)[1]}") for x in inputs]
    assert [x.key for x in _assign_keys(arch)] == [keys[x.source] for x in inputs]


def test_any_legal_name_is_written_verified_and_kept_exactly_in_the_index(odd):
    """Long, non-UTF-8, spaced, dotted, unicode, %, newline and comma names: `fastft verify` passes, the `source` column
    gives each file's exact path bytes back (and opens it), and rejected.csv names the rejected ones exactly."""
    import csv

    root, files, out = odd
    r = subprocess.run([sys.executable, "-m", "fastft", "verify", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"OK {out}"), r.stdout + r.stderr
    df = _rows(out)
    assert sorted(source_bytes(s) for s in df["source"]) == sorted(files)
    for s in df["source"]:
        with open(os.path.join(os.fsencode(root), source_bytes(s)), "rb") as f:
            assert f.read(2) == b"\xff\xd8"  # the JPEG it names
    with open(out / "rejected.csv", newline="", encoding="utf-8") as f:
        rejected = [source_bytes(x["source"]) for x in csv.DictReader(f)]
    assert sorted(rejected) == sorted(f"train/{W3}/".encode() + n for n in BROKEN_NAMES[W3])


def _damaged(out: Path, dst: Path, edit) -> Path:
    """A copy of the store whose sample index ``edit(rows)`` changed, its hash updated in the manifest (what a writer
    bug, not a bit flip, leaves: only the index checks can see it)."""
    import hashlib
    import json

    import pandas as pd

    shutil.copytree(out, dst)
    df = edit(pd.read_csv(dst / "samples.csv.gz"))
    data = gzip.compress(df.to_csv(index=False).encode(), mtime=0)
    (dst / "samples.csv.gz").write_bytes(data)
    m = json.loads((dst / "manifest.json").read_text())
    m["files"]["samples.csv.gz"] = hashlib.sha256(data).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_verify_names_every_damage_to_the_sample_index(odd, tmp_path):
    import pandas as pd

    _, _, out = odd
    assert verify(out) == [] and verify(out, full=False) == []
    df = _rows(out)
    shard = df["shard"].value_counts().index[0]  # a shard with several samples
    a, b = df[df["shard"] == shard]["key"].tolist()[:2]

    def dup(d):
        return pd.concat([d, d[d["key"] == a]])

    def outside(d):
        d.loc[d["key"] == a, "jpg_offset"] = (out / f"{shard}.tar").stat().st_size - 10
        return d

    def wrong(d):  # a's row points at b's image (right offset and size of another member)
        for c in ("jpg_offset", "jpg_size"):
            d.loc[d["key"] == a, c] = d.loc[d["key"] == b, c].iloc[0]
        return d

    def foreign(d):  # a row of a shard the manifest does not list, and a row dropped from another
        d.loc[d["key"] == a, "shard"] = "train-999999"
        return d

    for name, edit, want in [
        ("dup", dup, [f"keys appear in more than one row (first: {a})", f"rows for {shard}, the manifest lists"]),
        ("outside", outside, [f"{shard}.tar: 1 sample-index rows point outside the tar (first: {a})"]),
        ("wrong", wrong, [f"{shard}.tar: 1 sample-index rows do not match the member of their key (name, offset, size) (first: {a})"]),
        ("foreign", foreign, ["train-999999", f"{shard}.tar: 2 members no sample-index row names (first: {a}.cls, {a}.jpg)"]),
    ]:
        bad = _damaged(out, tmp_path / name, edit)
        for full in (True, False):
            problems = verify(bad, full=full)
            for w in want:
                assert any(w in p for p in problems), (name, full, w, problems)
    # a run reading a view of such a store refuses to start (checked once per store version, with the shard hashes)
    from fastft.errors import FastFTError
    from fastft.data.views import open_view, resolve
    from fastft.data.subsets import ClassSet, SubsetSpec

    spec = SubsetSpec("custom", 0, {}, {"t": ClassSet((W1, W2, W3))}, {})
    open_view(resolve(spec, "t", out, tmp_path / "view-ok").path)
    with pytest.raises(FastFTError, match=f"rows do not match the member of their key .* run `fastft verify {tmp_path / 'wrong'}`"):
        open_view(resolve(spec, "t", tmp_path / "wrong", tmp_path / "view").path)
    r = subprocess.run([sys.executable, "-m", "fastft", "verify", str(tmp_path / "wrong")], capture_output=True, text=True)
    assert r.returncode == 1 and f"FAIL {shard}.tar: 1 sample-index rows do not match" in r.stdout


def _tree_files(root: Path) -> dict[str, str]:
    """Relative path -> wnid of every image of a synthetic tree (val as wnid folders)."""
    return {str(p.relative_to(root)): p.parent.name for p in root.glob("*/*/*") if p.is_file()}


def test_resume_after_an_input_was_renamed_starts_over_and_writes_every_image_once(tmp_path, capsys):
    from fastft.errors import FastFTError
    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.synth import synth

    root, out = tmp_path / "tree", tmp_path / "store"
    synth(root, [W1, W2, W3], train_per_class=16, val_per_class=3, size=40, val_layout="folders", seed=1)
    cfg = ShardConfig(resize="32x32", shard_mb=0.02, classes=(W1, W2, W3))
    with pytest.raises(KeyboardInterrupt):
        write_store(root, out, cfg, workers=2, progress=False, on_shard=stop_after(3))
    import json

    done = json.loads((out / "train-000001.json").read_text())["rows"][0]["source"]  # already in a finished shard
    renamed = (root / done).with_name("renamed.JPEG")
    (root / done).rename(renamed)
    capsys.readouterr()
    m = write_store(root, out, cfg, workers=2, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fastft shard: the unfinished store {out} was started on a different input (files were renamed, added, "
                   "removed or changed): starting over"]
    files = _tree_files(root)
    df = _rows(out)
    h = load()
    assert sorted(df["source"]) == sorted(files) and m["totals"]["written"] == len(files)  # each once, none lost
    assert all(files[r.source] == r.wnid and r.label == h.label[r.wnid] for r in df.itertuples())
    assert verify(out) == []
    # the same input again: confirmed, nothing written; a finished store of another input is never trusted
    assert write_store(root, out, cfg, workers=2, progress=False)["shards"] == m["shards"]
    renamed.rename(root / done)
    with pytest.raises(FastFTError, match="is a finished store of a different input"):
        write_store(root, out, cfg, workers=2, progress=False)


# ---------------------------------------------------------------- the spool between worker processes
class _Planted:
    """A pickle that, when loaded, creates the file ``path`` (what a planted spool file would do with pickle.load)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_spool_directory_is_private_and_a_planted_pickle_is_never_run(tmp_path, monkeypatch):
    import pickle
    import stat
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from fastft.errors import FastFTError
    from fastft.data.spool import bounded_imap, read_spool, spool_dir, write_spool

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    old = os.umask(0)  # the most permissive umask: the directory is still the user's alone
    try:
        with spool_dir() as d:
            st = os.stat(d)
            assert Path(d).parent == tmp_path and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
            write_spool(Path(d) / "r", [(b"\xff\xd8jpeg", "rgb"), (None, "not an image (text)"), 3, "caf\udce9"])
            assert read_spool(Path(d) / "r") == [(b"\xff\xd8jpeg", "rgb"), (None, "not an image (text)"), 3, "caf\udce9"]
            assert stat.S_IMODE(os.stat(Path(d) / "r").st_mode) == 0o600
    finally:
        os.umask(old)
    assert not Path(d).exists()

    sentinel = tmp_path / "PWNED"
    planted = tmp_path / "spool"
    planted.mkdir()
    evil = pickle.dumps([_Planted(sentinel)])
    pickle.loads(evil)  # (it works: loading it creates the sentinel)
    assert sentinel.exists()
    sentinel.unlink()
    (planted / "p").write_bytes(evil)
    with pytest.raises(FastFTError, match="is not a fastft spool file"):
        read_spool(planted / "p")
    (planted / "0").write_bytes(evil)  # where the first chunk's results go: the worker never writes through it
    with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
        with pytest.raises(FastFTError, match="was there before its worker wrote it"):
            list(bounded_imap(pool, abs, [-1, -2], planted, window=8))
        assert list(bounded_imap(pool, abs, [-1, -2], tmp_path, window=8)) == [1, 2]
    assert not sentinel.exists()


def test_a_full_tmpdir_is_named_as_such_not_as_a_full_store_disk(tmp_path, tmpfs):
    from PIL import Image

    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for w in (W1, W2, W3):
        (root / "train" / w).mkdir(parents=True)
        for i in range(4):  # noise: every spool file (a chunk of up to 8 images) needs more than one 4 KiB page
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), np.uint8)).save(root / "train" / w / f"{i}.JPEG", quality=95)
    small = tmpfs("64k")
    fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)  # another program filled it, up to one page (Python
    with pytest.raises(OSError, match="No space left"):        # ignores a $TMPDIR it cannot write 4 bytes to)
        while True:
            os.write(fd, b"\0" * 4096)
    os.ftruncate(fd, os.fstat(fd).st_size - 4096)
    os.close(fd)
    r = shard_cli(root, tmp_path / "s", env={"TMPDIR": str(small)})
    assert r.returncode == 2 and "no space left on the device writing the store" not in r.stderr, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert f"the temporary directory {small} ($TMPDIR) is full" in line and "point TMPDIR at" in line and "re-run" in line
    r = shard_cli(root, tmp_path / "s")  # with room: it goes on and finishes
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p.name for p in small.iterdir()] == ["filler"]  # the spool was removed
