"""The dataset-source seam of `fastft shard` and the old module paths: a source added as one class and a registration
shards a real store (what it cannot convert in the ledger), what the writer relies on is checked whatever the source,
a root no source recognises names every registered source, and the pre-package module paths read and write through."""
import csv

import pytest
from PIL import Image

from fastft.data import sources
from fastft.data.shard import ShardConfig, write_store
from fastft.data.sources import SOURCES, Input, Listing, Source
from fastft.data.store import open_store, verify
from fastft.data.taxonomy import load
from fastft.errors import FastFTError

CFG = ShardConfig(resize="24x24", allow_missing=True)


class CsvList(Source):
    """The README's example ("Adding a dataset source"), as it is there."""
    name = "csv-list"
    describe = "labels.csv (path,split,wnid) and the images it lists"

    @classmethod
    def detect(cls, root, cfg):
        return (root / "labels.csv").is_file()

    def read(self, progress=False):
        with open(self.root / "labels.csv", newline="") as f:
            return Listing([Input(r["split"], r["wnid"], r["path"]) for r in csv.DictReader(f)])


def _csv_root(tmp_path, rows):
    """A root of PNGs listed in labels.csv (a row without a wnid: a text file named .png)."""
    root = tmp_path / "in"
    (root / "img").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "split", "wnid"])
        w.writeheader()
        for i, (split, wnid) in enumerate(rows):
            if wnid:
                Image.new("RGB", (30, 20), (40 * i, 100, 200)).save(root / "img" / f"{i}.png")
            else:
                (root / "img" / f"{i}.png").write_text("not a picture")
            w.writerow({"path": f"img/{i}.png", "split": split, "wnid": wnid or load().wnids[0]})
    return root


def test_a_source_added_as_one_class_and_a_registration_shards_a_store(tmp_path, monkeypatch):
    a, b = load().wnids[:2]
    root = _csv_root(tmp_path, [("train", a), ("train", b), ("train", a), ("val", b), ("train", None)])
    with pytest.raises(FastFTError, match="registered sources"):
        write_store(root, tmp_path / "before", CFG, workers=1, progress=False)
    monkeypatch.setitem(SOURCES, CsvList.name, CsvList)
    m = write_store(root, tmp_path / "store", CFG, workers=1, progress=False)
    assert {k: m["totals"][k] for k in ("inputs", "written", "rejected", "by_split")} == \
        {"inputs": 5, "written": 4, "rejected": 1, "by_split": {"train": 3, "val": 1}}
    assert m["input_kinds"] == {"png-rgb": 4} and verify(tmp_path / "store") == []
    df = open_store(tmp_path / "store").samples()
    assert sorted(zip(df["source"], df["wnid"], df["split"])) == [
        ("img/0.png", a, "train"), ("img/1.png", b, "train"), ("img/2.png", a, "train"), ("img/3.png", b, "val")]
    rejected = list(csv.DictReader(open(tmp_path / "store" / "rejected.csv")))
    assert [(r["source"], r["reason"]) for r in rejected] == [("img/4.png", "not an image (text)")]


@pytest.mark.parametrize("split, wnid, what", [("train", "cat", "not an ILSVRC2012 class"),
                                               ("test", None, "split other than train or val")])
def test_what_the_writer_relies_on_is_checked_whatever_the_source(tmp_path, monkeypatch, split, wnid, what):
    a = load().wnids[0]
    root = _csv_root(tmp_path, [("train", a), (split, wnid or a)])
    monkeypatch.setitem(SOURCES, CsvList.name, CsvList)
    with pytest.raises(FastFTError, match=f"source csv-list listed 1 inputs .*{what}"):
        write_store(root, tmp_path / "store", CFG, workers=1, progress=False)
    assert not (tmp_path / "store").exists(), "named before any work"


def test_a_root_no_source_recognises_names_every_registered_source(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(FastFTError) as e:
        sources.find(tmp_path, CFG)
    for name, cls in SOURCES.items():
        assert f"{name}: {cls.describe}" in str(e.value)


def test_old_module_paths_read_and_write_through(monkeypatch):
    """``fastft.shard``, ``fastft.store`` … (kept for one release) name the same objects, and a setting or function
    assigned there is changed where it is read (in every module that binds it), and restored there on undo."""
    import fastft.shard as old_shard
    import fastft.store as old_store
    import fastft.taxonomy as old_taxonomy
    from fastft import spool as old_spool, subsets as old_subsets, synth as old_synth
    from fastft.data import shard, spool, store, subsets, synth, taxonomy, views
    from fastft.data.shard import convert
    from fastft.data.sources import ilsvrc2012_archives

    assert (old_taxonomy.load, old_subsets.make, old_synth.synth, old_spool.bounded_imap) == \
        (taxonomy.load, subsets.make, synth.synth, spool.bounded_imap)
    assert (old_store.open_store, old_store.open_view, old_store.View) == (store.open_store, views.open_view, views.View)
    assert (old_shard.write_store, old_shard._process, old_shard.Input, old_shard.VAL_TAR) == \
        (shard.write_store, convert._process, sources.Input, ilsvrc2012_archives.VAL_TAR)
    assert {"open_view", "verify", "resolve"} <= set(old_store.__all__)
    limit, process, hashed = convert.MAX_PIXELS, convert._process, store.sha256_file
    monkeypatch.setattr(old_shard, "MAX_PIXELS", 5)
    monkeypatch.setattr(old_shard, "_process", len)
    monkeypatch.setattr(old_store, "sha256_file", str)
    assert convert.MAX_PIXELS == 5 and old_shard.MAX_PIXELS == 5
    assert convert._process is len and shard._process is len, "the alias the shard loop calls is rebound too"
    assert store.sha256_file is str
    monkeypatch.undo()
    assert (convert.MAX_PIXELS, convert._process, shard._process, store.sha256_file) == (limit, process, process, hashed)
