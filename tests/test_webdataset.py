"""The store and its views read without fastft: plain ``webdataset`` with its defaults reads a store's labels
(version 2: ``.cls`` is the ASCII label), :class:`fastft.ViewDataset` reads a view as a PyTorch dataset (in DataLoader
workers too), ``fastft export`` writes a view as WebDataset shards or a URL list; version-1 stores (int32 ``.cls``)
still open, verify, shard-resume and train as before."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import SMALL, fastft, metrics, run_dir, stop_after, strip_speed
from conftest import V1_CONFIG
from fastft.data.store import check_sample_index, open_store, verify
from fastft.errors import FastFTError


def _wds(tars, decode=True):
    import webdataset as wds

    ds = wds.WebDataset([str(t) for t in tars], shardshuffle=False)
    return ds.decode("pil") if decode else ds


def _tar_members(tars) -> dict[str, bytes]:
    """name -> bytes of every member, read with tarfile (independent of fastft's offsets)."""
    out = {}
    for t in tars:
        with tarfile.open(t) as tf:
            out.update({m.name: tf.extractfile(m).read() for m in tf if m.isreg()})
    return out


def test_plain_webdataset_reads_a_stores_labels_with_its_defaults(store):
    st = open_store(store)
    assert st.version == st.manifest["settings"]["store_version"] == 2
    df = st.samples()
    tars = sorted(store.glob("*.tar"))
    got = {}
    for key, img, cls in _wds(tars).to_tuple("__key__", "jpg", "cls"):  # the one-liner, plus the key
        assert isinstance(img, Image.Image) and img.mode == "RGB" and isinstance(cls, int)
        got[key] = cls
    assert got == dict(zip(df["key"], df["label"].tolist()))
    cls = {k: v for k, v in _tar_members(tars).items() if k.endswith(".cls")}
    assert all(v.isdigit() and v == str(int(v)).encode() for v in cls.values())  # no sign, padding or newline


def _tampered(store: Path, tmp_path: Path, key: str, data: bytes) -> Path:
    """A copy of ``store`` with the ``.cls`` of ``key`` overwritten in place by ``data`` (same size)."""
    copy = tmp_path / f"copy-{hashlib.sha256(data).hexdigest()[:6]}"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns(".verified"))
    row = open_store(copy).samples().set_index("key").loc[key]
    with open(copy / f"{row.shard}.tar", "r+b") as f:
        f.seek(row.cls_offset)
        assert len(data) == len(f.read(len(data)))
        f.seek(row.cls_offset)
        f.write(data)
    return copy


@pytest.mark.parametrize("version", [1, 2])
def test_full_verify_names_a_cls_that_does_not_hold_its_rows_label(store, store_v1, tmp_path, version):
    src = store if version == 2 else store_v1
    df = open_store(src).samples()
    row = df.iloc[len(df) // 2]
    other = int(df["label"][df["label"] != row.label].iloc[0])
    n = len(str(row.label))  # same size: offsets and sizes still match, only the member's content is wrong
    same_size = ([str(other).encode(), b"0" * n, b"x" * n] if version == 2
                 else [other.to_bytes(4, "little"), (int(row.label) + 2**16).to_bytes(4, "little"), str(row.label).encode().ljust(4)])
    for data in same_size:
        copy = _tampered(src, tmp_path, row.key, data)
        problems = verify(copy, full=True)
        want = f"{row.shard}.tar: 1 .cls members do not hold the label of their sample-index row (first: {row.key})"
        assert want in problems, problems
        assert check_sample_index(open_store(copy), full=True) == [want]  # the sample-index check alone names it too
        assert verify(copy, full=False) == []  # sizes and offsets unchanged: only reading the member shows it
    assert verify(src, full=True) == [] and verify(src, full=False) == []


def test_a_version_1_store_opens_verifies_resumes_writing_in_its_version_and_trains_as_version_2(
        small_tree, store_v1, tmp_path):
    from fastft.data.shard import ShardConfig, write_store
    from fastft.data.subsets import make

    st = open_store(store_v1)
    assert st.version == 1 and verify(store_v1) == []
    df = st.samples()
    for name, data in _tar_members(store_v1.glob("*.tar")).items():
        if name.endswith(".cls"):
            assert data == int(df.set_index("key").label[name[:-4]]).to_bytes(4, "little")
    cfg = ShardConfig(**V1_CONFIG)
    assert write_store(small_tree, store_v1, cfg, workers=1, progress=False)["store_version"] == 1  # confirmed as is
    # an interrupted version-1 shard run resumes in version 1: byte-identical to the uninterrupted one
    part = tmp_path / "v1-resumed"
    with pytest.raises(KeyboardInterrupt):
        write_store(small_tree, part, cfg, workers=1, progress=False, on_shard=stop_after(2), store_version=1)
    write_store(small_tree, part, cfg, workers=1, progress=False)
    assert (part / "manifest.json").read_bytes() == (store_v1 / "manifest.json").read_bytes()
    # the same input as version 2: the same JPEG bytes, keys and offsets' order; ASCII labels
    v2 = tmp_path / "v2"
    write_store(small_tree, v2, cfg, workers=1, progress=False)
    assert open_store(v2).version == 2 and verify(v2) == []
    a, b = (open_store(p).samples() for p in (store_v1, v2))
    assert a[["key", "label", "shard", "jpg_size"]].equals(b[["key", "label", "shard", "jpg_size"]])
    with pytest.raises(FastFTError, match=r"different settings \(store_version: the store.s 2, now 1\)"):  # no silent mix of versions
        write_store(small_tree, v2, cfg, workers=1, progress=False, store_version=1)
    # training on the version-1 store, interrupted and resumed, learns exactly what the version-2 store teaches
    spec = tmp_path / "spec.json"
    make("all", 0, within=list(V1_CONFIG["classes"])).save(spec)
    args = ["train", f"spec={spec}", "set=target", "name=t", "epochs=2", "lr=0.005", *SMALL]  # 64 images: 2 steps an epoch
    fastft(*args, f"store={v2}", f"out={tmp_path / 'r2'}")
    r = fastft(*args, f"store={store_v1}", f"out={tmp_path / 'r1'}", env={"FASTFT_TEST_SIGTERM_AT_STEP": "3"}, check=False)
    assert r.returncode == 143, r.stderr[-2000:]
    fastft(*args, f"store={store_v1}", f"out={tmp_path / 'r1'}")
    m1, m2 = (metrics(run_dir(tmp_path / d, "t")) for d in ("r1", "r2"))
    assert len(m1) == 2 and strip_speed(m1) == strip_speed(m2)
    idx = (next((tmp_path / "r1" / "views").glob("*-target-*")) / "train").glob("*.idx")
    assert all(" cls " in line and line.split()[6] == "4" for p in idx for line in p.read_text().splitlines()[1:])


def _view_rows(view, split="train"):
    return view.keys(split).sort_values("key").reset_index(drop=True)


def test_view_dataset_is_the_views_samples_decoded_from_the_tars(view_near, store):
    import fastft

    ds = fastft.ViewDataset(view_near.path)
    rows = _view_rows(view_near)
    assert len(ds) == view_near.split("train")["samples"] == len(rows) > 0
    assert ds.keys == rows["key"].tolist() and ds.classes == view_near.classes
    members = _tar_members(store / f"{n}.tar" for n in view_near.split("train")["shards"])
    labels = []
    for i, key in enumerate(ds.keys):
        img, label = ds[i]
        assert img.mode == "RGB"
        assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(members[f"{key}.jpg"])).convert("RGB")))
        labels.append(label)
    assert labels == rows["view_label"].tolist() and set(labels) == set(range(view_near.num_classes))
    store_labels = fastft.ViewDataset(view_near.path, labels="store")
    assert [store_labels[i][1] for i in range(len(ds))] == rows["label"].tolist()
    val = fastft.ViewDataset(view_near.path, split="val")
    assert len(val) == view_near.split("val")["samples"] and val.keys == _view_rows(view_near, "val")["key"].tolist()
    with pytest.raises(FastFTError, match="no 'test' split"):
        fastft.ViewDataset(view_near.path, split="test")
    with pytest.raises(FastFTError, match="labels must be"):
        fastft.ViewDataset(view_near.path, labels="wnid")
    with pytest.raises(IndexError):
        ds[len(ds)]


def _to_tensor(img):
    import torch

    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_view_dataset_under_a_dataloader_with_two_workers_reads_what_it_reads_alone(view_near):
    import torch

    import fastft

    ds = fastft.ViewDataset(view_near.path, transform=_to_tensor)
    ds[0]  # handles opened in this process first: the workers must open their own
    alone = [ds[i] for i in range(len(ds))]
    dl = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    x = torch.cat([b[0] for b in dl])
    y = torch.cat([b[1] for b in dl])
    assert torch.equal(x, torch.stack([a[0] for a in alone])) and y.tolist() == [a[1] for a in alone]
    again = pickle.loads(pickle.dumps(ds))  # as spawned workers receive it
    assert torch.equal(again[3][0], alone[3][0]) and again[3][1] == alone[3][1]


def test_exported_shards_are_the_view_read_by_plain_webdataset(view_near, store, tmp_path):
    from fastft.data.export import export_shards
    from fastft.data.store import dali_index

    a = export_shards(view_near.path, tmp_path / "a", shard_mb=0.05)
    assert len(a["splits"]["train"]["shards"]) > 1  # several shards, each closed at the size
    members = _tar_members(store.glob("*.tar"))
    for split in ("train", "val"):
        rows = _view_rows(view_near, split)
        tars = sorted((tmp_path / "a").glob(f"{split}-*.tar"))
        raw = {k: (jpg, cls) for k, jpg, cls in _wds(tars, decode=False).to_tuple("__key__", "jpg", "cls")}
        assert sorted(raw) == rows["key"].tolist()
        assert all(raw[k][0] == members[f"{k}.jpg"] for k in raw)  # the stored JPEG, byte for byte
        labels = dict(_wds(tars).to_tuple("__key__", "cls"))  # webdataset's defaults: ints
        assert labels == dict(zip(rows["key"], rows["view_label"].tolist()))
        assert all((t.with_suffix(".idx")).read_text() == dali_index(t) for t in tars)
    assert (tmp_path / "a" / "classes.txt").read_text().split("\n")[:-1] == view_near.classes
    rec = json.loads((tmp_path / "a" / "export.json").read_text())
    assert rec["manifest_sha256"] == view_near.meta["manifest_sha256"] and rec["labels"] == "view"
    export_shards(view_near.path, tmp_path / "b", shard_mb=0.05)  # byte-deterministic
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    with pytest.raises(FastFTError, match="already holds a finished export"):
        export_shards(view_near.path, tmp_path / "a")
    with pytest.raises(FastFTError, match="no split 'test'"):
        export_shards(view_near.path, tmp_path / "c", splits=["test"])


def test_export_cli_writes_shards_or_the_url_list_of_the_store_shards_a_view_reads(view_near, tmp_path):
    r = fastft("export", view_near.path, "--urls", tmp_path / "urls.txt", "--split", "train")
    urls = (tmp_path / "urls.txt").read_text().splitlines()
    assert urls == view_near.files("train")[0] and "hold other samples too" in r.stdout
    want = set(view_near.keys("train")["key"])
    got = dict(_wds(urls).select(lambda s: s["__key__"] in want).to_tuple("__key__", "cls"))  # the README's filter
    rows = view_near.keys("train")
    assert got == dict(zip(rows["key"], rows["label"].tolist()))  # the store's labels, in the store's shards
    r = fastft("export", view_near.path, "--shards", tmp_path / "ex", "--split", "val")
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["classes.txt", "export.json", "val-000000.idx", "val-000000.tar"]
    r = fastft("export", view_near.path, check=False)
    assert r.returncode == 2 and "one of the arguments --shards --urls is required" in r.stderr


def test_export_mistakes_are_one_line_each_and_write_nothing(view_near, store, tmp_path):
    """Each mistake a user makes with `fastft export` is one line naming what to fix (exit 2, no traceback), and
    nothing is written or made: a target that is a file, a directory holding someone's files, a missing parent of the
    URL list, a split the view lacks, a path that is not a view."""
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me\n")
    cases = [(["--shards", afile], "is a file, not a directory"),
             (["--shards", theirs], "already holds other files"),
             (["--urls", tmp_path / "nodir" / "u.txt"], "cannot write the URL list"),
             (["--shards", tmp_path / "new", "--split", "test"], "has no split 'test'"),
             ]
    for extra, msg in cases:
        r = fastft("export", view_near.path, *extra, check=False)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr[-800:])
    for not_a_view, msg in ((store, "is a store, not a view"), (tmp_path / "nope", "does not exist")):
        r = fastft("export", not_a_view, "--shards", tmp_path / "new", check=False)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
    assert afile.read_text() == "mine\n" and [p.name for p in theirs.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "new").exists() and not (tmp_path / "nodir").exists()
