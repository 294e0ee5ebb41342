"""Plans whose runs read several stores (``stores:`` in the plan, ``--store NAME=DIR``): a model trained on one store
fine-tuned on another, by the real ``fastft sweep`` and ``fastft report``."""
import json
from pathlib import Path

import pytest
import yaml

from clirun import fastft
from fastft import study as sw
from fastft.errors import FastFTError

SMALL = {"width": 0.25, "crop": 71, "batch_size": 32, "init": "paper-scaled", "plateau_epochs": 0, "epochs": 1,
         "num_threads": 1, "lr": 0.005}


def two_store_plan(tmp_path: Path, other: dict | None = None, runs: list | None = None) -> Path:
    plan = {"name": "across", "construction": "near-far", "params": {"within": "store", "target": 4, "source": 8, "cap": 10},
            "stores": {"other": other or {"construction": "near-far",
                                          "params": {"within": "store", "target": 3, "source": 8, "cap": 12}}},
            "seeds": [0], "defaults": SMALL,
            "runs": runs or [{"name": "src", "set": "near"},
                             {"name": "ft-other", "store": "other", "set": "target", "mode": "finetune", "source": "src"},
                             {"name": "scratch-other", "store": "other", "set": "target"}]}
    p = tmp_path / "across.yaml"
    p.write_text(yaml.safe_dump(plan))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["runs"].append({"name": "x", "store": "elsewhere", "set": "target"}),
     r"run 'x' reads store 'elsewhere', which the plan's stores do not name \(its stores: other\)"),
    (lambda p: p.update(stores={"other": {"params": {}}}), "store 'other' must be a mapping with construction"),
    (lambda p: p.update(stores={"other": {"construction": "all", "sets": 1}}), "store 'other' must be a mapping with"),
    (lambda p: p.update(stores={"9x": {"construction": "all"}}), "store name '9x' must be a letter"),
    (lambda p: p.update(stores=["other"]), "stores must be a mapping name"),
    (lambda p: p["stores"]["other"].update(params=[1]), "store 'other': params must be a mapping"),
])
def test_a_plans_stores_are_checked_when_it_loads(tmp_path, edit, message):
    plan = yaml.safe_load(two_store_plan(tmp_path).read_text())
    edit(plan)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(plan))
    with pytest.raises(FastFTError, match=message):
        sw.load_plan(p)


def test_a_store_the_runs_read_must_be_given_and_an_undeclared_one_is_named(store, tmp_path):
    p = two_store_plan(tmp_path)
    r = fastft("sweep", p, "--store", store, "--out", tmp_path / "o", "--quiet", check=False)
    assert r.returncode == 2 and "runs read store 'other': give --store other=PATH" in r.stderr
    r = fastft("sweep", p, "--store", store, "--store", f"othr={store}", "--out", tmp_path / "o", "--quiet", check=False)
    assert r.returncode == 2 and "plan across has no store 'othr' (its stores: other)" in r.stderr
    r = fastft("sweep", p, "--store", store, "--store", store, "--out", tmp_path / "o", "--quiet", check=False)
    assert r.returncode == 2 and "--store is given twice" in r.stderr
    assert not (tmp_path / "o" / "specs").exists() or not list((tmp_path / "o").glob("*-*/final.json"))


def test_a_mistake_in_a_run_on_the_other_store_is_named_before_any_run_starts(store, tmp_path):
    p = two_store_plan(tmp_path, other={"construction": "near-far",
                                        "params": {"within": "store", "target": 3, "source": 8, "cap": 8}})
    r = fastft("sweep", p, "--store", store, "--store", f"other={store}", "--out", tmp_path / "o", "--quiet", check=False)
    assert r.returncode == 2 and "batch_size 32 is larger than the training split (24 images" in r.stderr
    assert not list((tmp_path / "o").glob("*-*/sweep.log")), "no run started"


def test_a_source_trained_on_one_store_is_fine_tuned_on_another(store, tmp_path):
    """The other store is given by its own path (a copy of the store's directory would be a different store to
    fastft only by path; what matters here is that each run reads its own store's subsets and views)."""
    p, out = two_store_plan(tmp_path), tmp_path / "runs"
    dry = fastft("sweep", p, "--store", store, "--store", f"other={store}", "--out", out, "--dry-run", "--quiet").stdout
    assert "3 runs" in dry and "3 to run" in dry
    fastft("sweep", p, "--store", store, "--store", f"other={store}", "--out", out, "--quiet")
    spec_main = json.loads((out / "specs" / "across-seed0.json").read_text())
    spec_other = json.loads((out / "specs" / "across-other-seed0.json").read_text())
    assert len(spec_main["sets"]["target"]["classes"]) == 4 and len(spec_other["sets"]["target"]["classes"]) == 3
    done = [d for d in out.iterdir() if (d / "final.json").exists()]
    template = {json.loads((d / "sweep.json").read_text())["memberships"][0]["template"]: d for d in done}
    cfg = {t: json.loads((d / "config.json").read_text())["config"] for t, d in template.items()}
    assert set(cfg) == {"src", "ft-other", "scratch-other"}
    assert cfg["ft-other"]["spec"].endswith("across-other-seed0.json") and cfg["src"]["spec"].endswith("across-seed0.json")
    ft = template["ft-other"]
    assert json.loads((ft / "final.json").read_text())["num_classes"] == 3
    assert json.loads((ft / "sweep.json").read_text())["memberships"][0]["store"] == "other"
    fastft("report", out, "--out", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "ft-other" in md and "scratch-other" in md and "src" in md
