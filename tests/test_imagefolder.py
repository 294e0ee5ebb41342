"""Image-folder datasets (``fastft shard --dataset imagefolder``): a store of classes with any names, its own class
vocabulary (``classes.txt``), subsets of any store, and models trained on the ILSVRC2012-layout store fine-tuned onto
it — by ``fastft train`` and by a plan through ``fastft sweep`` and ``fastft report``. Stores written before stores
carried ``classes.txt`` still verify and train, with the run ids they had."""
import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from clirun import SMALL, fastft, run_dir
from fastft.data.shard import ShardConfig, write_store
from fastft.data.store import encode_source, open_store, verify
from fastft.data.synth import FOLDER_NAMES, demo_classes, synth_folder
from fastft.data.taxonomy import load
from fastft.errors import FastFTError

NAMES = FOLDER_NAMES[1:]  # spaces, punctuation, Unicode, "NA", a comma, quotes, "007"; 7 (the source has 8)
FOLDER = ShardConfig(resize="80x80", shard_mb=0.1, dataset="imagefolder")


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder") / "flowers"
    synth_folder(root, dict(zip(NAMES, demo_classes()[:len(NAMES)])), train_per_class=10, val_per_class=2, size=64, broken=True)
    d = root / "train" / NAMES[1]  # a file name that is not UTF-8 (Latin-1 "é"), beside Unicode ones
    shutil.copy(next(d.iterdir()), d / b"caf\xe9 1.jpg".decode("utf-8", "surrogateescape"))
    return root


@pytest.fixture(scope="module")
def folder_store(folder_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fstore") / "store"
    r = fastft("shard", folder_tree, "--dataset", "imagefolder", "--out", out, "--resize", "80x80", "--shard-mb", "0.1",
               "--workers", "2", "--quiet")
    assert "classes" in r.stdout
    return out


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_folder_store_labels_its_classes_as_imagefolder_and_accounts_for_every_file(folder_tree, folder_store):
    from torchvision.datasets import ImageFolder

    st = open_store(folder_store)
    assert st.vocabulary == ImageFolder(folder_tree / "train").classes == sorted(NAMES)
    assert (folder_store / "classes.txt").read_text(encoding="utf-8") == "".join(f"{c}\n" for c in sorted(NAMES))
    assert st.manifest["vocabulary"] == {"file": "classes.txt", "classes": len(NAMES), "kind": "names"}
    df = st.samples()
    rejected = list(csv.DictReader(open(folder_store / "rejected.csv", encoding="utf-8")))
    # every input written once or listed as rejected, with the reasons the ILSVRC2012 path gives
    assert sorted(df["source"].tolist() + [r["source"] for r in rejected]) == sorted(map(encode_source, _files(folder_tree)))
    assert f"train/{NAMES[1]}/caf%E9 1.jpg" in set(df["source"])
    assert df["source"].is_unique and df["key"].is_unique
    reasons = {Path(r["source"]).name: r["reason"].split(" (")[0] for r in rejected}
    first = NAMES[0]
    assert reasons == {f"{first}_truncated.jpg": "undecodable JPEG", f"{first}_empty.jpg": "0-byte file",
                       f"{first}_html.jpg": "not an image", f"{first}_gzip.jpg": "not an image",
                       f"{first}_random.jpg": "not an image", "README.txt": "not in a class folder"}
    assert st.manifest["input_kinds"]["cmyk"] == 1 and st.manifest["input_kinds"]["png-rgba"] == 1
    # each sample's class is its folder, its label that class's line in classes.txt
    assert (df["wnid"] == df["source"].map(lambda s: Path(s).parts[1])).all()
    assert (df["label"] == df["wnid"].map(st.label)).all()
    assert set(df[df["split"] == "val"]["wnid"]) == set(NAMES) and df["key"].str.fullmatch(r"[A-Za-z0-9_~-]+").all()
    assert verify(folder_store) == []
    again = write_store(folder_tree, folder_store, FOLDER, workers=1, progress=False)  # a finished store: confirmed
    assert again["shards"] == st.manifest["shards"]


def test_verify_names_a_changed_or_missing_class_list(folder_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(folder_store, copy)
    lines = (copy / "classes.txt").read_text(encoding="utf-8").splitlines()
    (copy / "classes.txt").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    problems = verify(copy)
    assert "classes.txt: sha256 mismatch" in problems
    assert any("rows have a label other than their class in the store" in p for p in problems)
    (copy / "classes.txt").unlink()
    r = fastft("verify", copy, check=False)
    assert r.returncode == 1 and "FAIL classes.txt: missing" in r.stdout


def _tree(tmp_path: Path, files: list[str]) -> Path:
    root = tmp_path / "tree"
    good = next(p for p in Path(synth_folder(tmp_path / "one", {"a": demo_classes()[0]}, 1, 0)["root"]).rglob("*.jpg"))
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good, root / f)
    return root


@pytest.mark.parametrize("files, cfg, message", [
    (["train/roses/x.jpg", "train/tulips/2019/y.jpg"], FOLDER, r"train/tulips/2019/ is a folder inside a class folder"),
    (["train/roses/x.jpg", "val/roses/deep/y.jpg"], FOLDER, r"val/roses/deep/ is a folder inside a class folder"),
    (["train/roses/x.jpg", "val/daisy/y.jpg"], FOLDER, r"val/daisy/ is a class train/ does not have"),
    (["train/line\nbreak/x.jpg"], FOLDER, r"holds a control or line-break character"),
    (["val/roses/x.jpg"], FOLDER, r"--dataset imagefolder reads ROOT/train/<class>/"),
    (["train/roses/x.jpg", "train/tulips/y.jpg"], ShardConfig(dataset="imagefolder", classes=("roses", "lilies")),
     r"--classes names 1 class train/ has no folder for \(first: \['lilies'\]\)"),
    (["train/roses/x.jpg", "val/roses/y.jpg"], ShardConfig(), r"not named by an ILSVRC2012 wnid: \['roses'\].*--dataset imagefolder"),
])
def test_what_an_image_folder_cannot_hold_is_refused_before_any_work(tmp_path, files, cfg, message):
    root, out = _tree(tmp_path, files), tmp_path / "out"
    with pytest.raises(FastFTError, match=message):
        write_store(root, out, cfg, workers=1, progress=False)
    assert not out.exists(), "nothing written"


def test_a_non_utf8_class_folder_is_refused_with_its_name(tmp_path):
    root = _tree(tmp_path, ["train/roses/x.jpg"])
    (root / "train" / "roses").rename(root / "train" / b"ros\xe9s".decode("utf-8", "surrogateescape"))
    with pytest.raises(FastFTError, match=r"b'ros\\xe9s' is not valid UTF-8"):
        write_store(root, tmp_path / "out", FOLDER, workers=1, progress=False)


def test_without_val_the_store_has_only_a_train_split_and_classes_sort_like_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    names = ["b", "B", "a b", "Ä", "_x", "10", "9"]
    root = _tree(tmp_path, [f"train/{n}/img.jpg" for n in names])
    m = write_store(root, tmp_path / "out", FOLDER, workers=1, progress=False)
    assert m["totals"]["by_split"] == {"train": len(names)} and m["val_layout"] == "none"
    assert open_store(tmp_path / "out").vocabulary == ImageFolder(root / "train").classes == sorted(names)


def _spec(out: Path, *args) -> dict:
    fastft("subsets", "make", *args, "--out", out)
    return json.loads(out.read_text(encoding="utf-8"))


def test_subsets_of_a_folder_store_all_random_lists_and_caps(folder_store, tmp_path):
    every = _spec(tmp_path / "all.json", "all", "--store", folder_store)
    assert every["sets"]["target"]["classes"] == sorted(NAMES) and every["vocabulary"]["classes"] == len(NAMES)
    rnd = [_spec(tmp_path / f"r{s}.json", "random", "--store", folder_store, "--seed", str(s), "--param", "target=3",
                 "--param", "source=0", "--param", "cap=5") for s in (0, 0, 1)]
    assert rnd[0] == rnd[1] and list(rnd[0]["sets"]) == ["target"] and rnd[0]["sets"]["target"]["cap"] == 5
    assert len(rnd[0]["sets"]["target"]["classes"]) == 3 and set(rnd[0]["sets"]["target"]["classes"]) <= set(NAMES)
    picked = [NAMES[3], NAMES[0], NAMES[2], NAMES[5], NAMES[4]]  # Unicode, brackets, "NA", quotes, a comma: label order
    listed = _spec(tmp_path / "list.json", "all", "--store", folder_store, "--param", "within=" + json.dumps(picked),
                   "--param", "cap=4")
    assert listed["sets"]["target"]["classes"] == sorted(picked)
    shown = fastft("subsets", "show", tmp_path / "list.json", "--set", "target").stdout
    assert all(f"{i:4d}  {c}" in shown for i, c in enumerate(sorted(picked))), shown
    r = fastft("subsets", "resolve", tmp_path / "list.json", "--set", "target", "--store", folder_store,
               "--out", tmp_path / "view")
    assert "5 classes, cap 4" in r.stdout
    with gzip.open(tmp_path / "view" / "train.csv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {c: sum(r["wnid"] == c for r in rows) for c in sorted(picked)} == dict.fromkeys(sorted(picked), 4)
    assert {(r["wnid"], int(r["view_label"])) for r in rows} == {(c, i) for i, c in enumerate(sorted(picked))}


@pytest.mark.parametrize("args, message", [
    (["dog"], "construction 'dog' draws from the WordNet hierarchy, and the store's classes are its own names, not "
              f"ILSVRC2012 wnids ({len(NAMES)} classes in its classes.txt"),
    (["near-far", "--param", "within=store"], "construction 'near-far' draws from the WordNet hierarchy"),
    (["all", "--param", 'within=["NA", "roses"]'], "within lists classes the store does not have: ['roses']"),
    (["random", "--param", "target=5", "--param", "source=5"], f"exceeds the {len(NAMES)} classes of the store"),
])
def test_a_construction_the_folder_store_cannot_serve_is_named(folder_store, tmp_path, args, message):
    r = fastft("subsets", "make", *args, "--store", folder_store, "--out", tmp_path / "x.json", check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_model_of_the_ilsvrc_store_fine_tunes_onto_the_folder_store(source_run, folder_store, tmp_path):
    _, _, src = source_run
    spec = tmp_path / "all.json"
    fastft("subsets", "make", "all", "--store", folder_store, "--param", "cap=8", "--out", spec)
    out = tmp_path / "runs"
    fastft("train", f"spec={spec}", "set=target", f"store={folder_store}", f"out={out}", "name=ft", "mode=finetune",
           f"source={src}", "epochs=1", "freeze=2", *SMALL)
    import torch

    ft = run_dir(out, "ft")
    blob = torch.load(ft / "model.pt", weights_only=True)
    source = torch.load(src / "model.pt", weights_only=True)
    for k, v in blob["model"].items():  # the source's weights were read: conv1-2 kept exactly, conv3 on trained
        if k.startswith(("conv1.", "conv2.")):
            assert torch.equal(v, source["model"][k]), k
        elif k.startswith("conv3.") and k.endswith("weight"):
            assert not torch.equal(v, source["model"][k]), k
    assert blob["classes"] == sorted(NAMES) and blob["model_config"]["num_classes"] == len(NAMES)
    assert source["model_config"]["num_classes"] == len(source["classes"]) != len(NAMES)  # the head was replaced
    assert json.loads((ft / "final.json").read_text())["num_classes"] == len(NAMES)
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["identity"]["source"] == json.loads((src / "final.json").read_text())["run_id"]


def test_a_plan_fine_tunes_from_the_ilsvrc_store_onto_the_folder_store(store, folder_store, tmp_path):
    plan = {"name": "tofolder", "construction": "near-far", "params": {"within": "store", "target": 4, "source": 8},
            "stores": {"flowers": {"construction": "all", "params": {"cap": 8}}}, "seeds": [0],
            "defaults": {"width": 0.25, "crop": 71, "batch_size": 16, "init": "paper-scaled", "plateau_epochs": 0,
                         "epochs": 1, "num_threads": 1, "lr": 0.005},
            "runs": [{"name": "src", "set": "target"},
                     {"name": "ft-flowers", "store": "flowers", "set": "target", "mode": "finetune", "source": "src"}]}
    p, out = tmp_path / "plan.yaml", tmp_path / "runs"
    p.write_text(yaml.safe_dump(plan))
    fastft("sweep", p, "--store", store, "--store", f"flowers={folder_store}", "--out", out, "--quiet")
    spec = json.loads((out / "specs" / "tofolder-flowers-seed0.json").read_text(encoding="utf-8"))
    assert spec["sets"]["target"]["classes"] == sorted(NAMES) and spec["vocabulary"]["classes"] == len(NAMES)
    (ft,) = [d for d in out.glob("ft-flowers-*") if (d / "final.json").exists()]
    assert json.loads((ft / "config.json").read_text())["config"]["store"] == str(folder_store)
    fastft("report", out, "--out", tmp_path / "report")
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("| ft-flowers "))
    assert "| target |" in row

    plan["stores"]["flowers"] = {"construction": "dog", "params": {"target": 3}}  # WordNet on the folder store: named
    plan["name"] = "wordnet"
    p.write_text(yaml.safe_dump(plan))
    r = fastft("sweep", p, "--store", store, "--store", f"flowers={folder_store}", "--out", tmp_path / "o2", "--quiet", check=False)
    assert r.returncode == 2 and "plan wordnet, store flowers" in r.stderr and "draws from the WordNet hierarchy" in r.stderr
    assert not list((tmp_path / "o2").glob("*-*/sweep.log")), "no run started"


def test_specs_of_ilsvrc2012_classes_are_those_of_before_stores_had_vocabularies():
    from fastft.data.subsets import make

    wnids = list(load().wnids)
    for construction, params in (("random", {}), ("all", {}), ("near-far", {"within": wnids[::3]}), ("dog", {})):
        spec = make(construction, 2, wnids, **params)
        assert spec.hash == make(construction, 2, **params).hash and "vocabulary" not in spec.to_json()
        assert "cap" not in spec.params or construction == "near-far"  # an optional parameter is recorded only when given


def test_a_store_written_before_classes_txt_verifies_and_trains_with_its_run_ids(store, demo_spec, tmp_path):
    """The store of before is this store without classes.txt and the manifest's two additive entries (byte for byte
    what the writer wrote before: the rest of the manifest, the shards and the sample index are unchanged)."""
    old = tmp_path / "old"
    shutil.copytree(store, old, ignore=shutil.ignore_patterns(".verified"))
    (old / "classes.txt").unlink()
    m = json.loads((old / "manifest.json").read_text())
    assert m.pop("vocabulary") == {"file": "classes.txt", "classes": 1000, "kind": "ilsvrc2012"}
    m["files"].pop("classes.txt")
    (old / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    assert verify(old) == [] and open_store(old).vocabulary == list(load().wnids)
    assert (store / "classes.txt").read_text().split() == list(load().wnids)
    from fastft.data.views import resolve

    new_view, old_view = (resolve(demo_spec, "near", s, tmp_path / f"v{i}") for i, s in enumerate((store, old)))
    assert old_view.classes == new_view.classes and \
        {k: v["keys_sha256"] for k, v in old_view.meta["splits"].items()} == {k: v["keys_sha256"] for k, v in new_view.meta["splits"].items()}
    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    fastft("train", f"spec={spec}", "set=target", f"store={old}", f"out={tmp_path / 'runs'}", "name=old", "epochs=1", *SMALL)
    d = run_dir(tmp_path / "runs", "old")
    ident = json.loads((d / "config.json").read_text())["identity"]
    # the identity holds what it held before: the old manifest's hash, the classes and the keys; nothing of classes.txt
    assert ident["data"]["manifest_sha256"] == open_store(old).sha256 and "vocabulary" not in json.dumps(ident)
    from fastft import runs

    assert d.name == f"old-{runs.run_id(ident)}"


def test_the_folder_demo_runs_end_to_end(tmp_path):
    """``fastft demo --target folder`` as a user runs it (one seed: about 30 s on 2 cores): the sources train on the
    ImageNet store, scratch and the fine-tunes on the folder store, whose class names the fine-tuned models carry; the
    fine-tunes start from their sources; the report has every run and says one seed is too few for a claim."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastft", "demo", "--target", "folder", "--seeds", "1", "--out", "d"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "\r" not in r.stderr and "sweep: 100%" in r.stderr, r.stderr[-2000:]  # progress in a log: lines (fastft.util.progress)
    d = tmp_path / "d"
    cfg = {p.parent.name.split("-s0-")[0]: json.loads(p.read_text()) for p in (d / "runs").glob("*/config.json")}
    assert {t: Path(c["config"]["store"]).name for t, c in cfg.items()} == {
        "near": "store", "far": "store", "scratch": "folder-store", "ft-near": "folder-store", "ft-far": "folder-store"}
    vocabulary = open_store(d / "folder-store").vocabulary
    import torch

    for t in ("ft-near", "ft-far", "scratch"):
        (run,) = (d / "runs").glob(f"{t}-s0-*")
        assert torch.load(run / "model.pt", weights_only=True)["classes"] == list(vocabulary), t
    for t in ("ft-near", "ft-far"):
        (src,) = (d / "runs").glob(f"{t[3:]}-s0-*")
        assert cfg[t]["identity"]["source"] == json.loads((src / "final.json").read_text())["run_id"]
    report = (d / "report" / "report.md").read_text()
    assert "5 finished runs, 0 failed" in report and "too few seeds (1; 3 needed)" in report
    assert (d / "report" / "curves-demo-folder.png").stat().st_size > 0
    # the plan as the demo ran it, which the README runs again: the same runs, all finished
    again = subprocess.run([sys.executable, "-m", "fastft", "sweep", d / "demo-folder.yaml", "--store", d / "store", "--store",
                            f"folder={d / 'folder-store'}", "--out", d / "runs", "--dry-run", "--quiet"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "5 finished" in again.stdout and "left: 0 unfinished runs" in again.stdout, again.stdout + again.stderr
    # run after `fastft demo` in the same directory (the README's order), the report holds both demos' plans, with
    # the same templates: the closing line is this plan's
    import pandas as pd

    from fastft.demo import target_order

    (printed,) = [x for x in r.stdout.splitlines() if x.startswith("target accuracy: ")]
    mine = pd.read_csv(d / "report" / "summary.csv")
    other = mine.assign(plan="demo-near-far", top1_mean=100 - mine["top1_mean"])
    assert printed.startswith(f"target accuracy: {target_order(pd.concat([other, mine]), 'demo-folder')}  ("), printed


def test_the_folder_demos_plan_binds_its_target_runs_to_the_folder_store(store, tmp_path):
    """``fastft demo --target folder``'s plan, bound as the demo binds it — sources on the ImageNet store, every
    target run on the folder store of the demo's dataset."""
    from importlib import resources

    from fastft import study as sw
    from fastft.data.subsets import load_spec
    from fastft.demo import _folder_store

    fstore = _folder_store(tmp_path, lambda msg: None)
    plan = sw.load_plan(Path(str(resources.files("fastft") / "_data" / "demo_folder_plan.yaml")))
    runs = sw.expand(plan, [0])
    sw.prepare(plan, runs, str(store), tmp_path / "runs", stores={"folder": str(fstore)})
    by = {r.template: r for r in runs}
    assert {t: Path(r.overrides["store"]) for t, r in by.items()} == {
        "near": store, "far": store, "scratch": fstore, "ft-near": fstore, "ft-far": fstore}
    vocabulary = open_store(fstore).vocabulary
    assert load_spec(by["ft-near"].overrides["spec"]).sets["target"].classes == tuple(vocabulary)
    assert len(vocabulary) == 4 and not any(c in load().label for c in vocabulary) and any(" " in c for c in vocabulary)
    assert by["ft-near"].deps == [by["near"].key] and by["ft-near"].run_id and by["ft-near"].labels["distance"] is None


def test_every_construction_either_draws_from_a_folder_vocabulary_or_is_refused():
    """The class of constructions, not one: each one that needs no WordNet draws only a folder store's own classes
    (spaces, unicode), seeded; each one that needs WordNet is refused with the constructions that apply."""
    from fastft.data.subsets import CONSTRUCTIONS, make

    vocab = ["golden retriever", "café au lait", "猫 & 犬", "Shih-Tzu (toy)", "NA", "007", "x y", "z"]
    small = {"random": {"target": 2, "source": 3}}
    for name, c in CONSTRUCTIONS.items():
        if c.needs_wordnet:
            with pytest.raises(FastFTError, match="draws from the WordNet hierarchy.*use a construction for any store"):
                make(name, 0, vocab, **small.get(name, {}))
            continue
        a, b = (make(name, seed, vocab, **small.get(name, {})) for seed in (0, 0))
        drawn = [w for s in a.sets.values() for w in s.classes]
        assert drawn and set(drawn) <= set(vocab), name
        assert a.sets == b.sets and a.hash == b.hash, f"{name}: not deterministic"
