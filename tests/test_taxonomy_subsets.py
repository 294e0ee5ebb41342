"""WordNet hierarchy (shipped file) and the study's subset constructions."""
import json

import pytest

from fastft.data.subsets import CONSTRUCTIONS, load_spec, make, distances
from fastft.data.taxonomy import ARTIFACT, DOG, INSTRUMENTALITY, LIVING_THING, load
from fastft.errors import FastFTError


def test_branch_sizes_match_paper():
    h = load()
    assert len(h.wnids) == 1000 and h.wnids[0] == "n01440764"
    assert len(h.under(DOG)) == 118
    assert len(h.under(INSTRUMENTALITY)) == 347
    assert len(h.under(INSTRUMENTALITY, "any")) == 358
    assert len(h.under(LIVING_THING, "any")) == 410 and len(h.under(ARTIFACT, "any")) == 522


def test_partition_covers_every_class_once():
    h = load()
    living, artifact = h.living_artifact()
    assert len(living) + len(artifact) == 1000 and not set(living) & set(artifact)
    assert set(h.under(LIVING_THING, "any")) <= set(living)
    assert set(h.under(INSTRUMENTALITY)) <= set(artifact)
    assert (len(living), len(artifact)) == (449, 551)


def test_unknown_wnid_suggests_close_matches():
    h = load()
    with pytest.raises(FastFTError, match="n02084071"):
        h.check("n02084017")
    assert h.check("beagle") == "n02088364"


def test_cli_taxonomy_json(capsys):
    from fastft.cli import main

    assert main(["taxonomy", "n02084071", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["count"] == 118 and d["name"] == "dog" and len(d["classes"]) == 118
    assert main(["taxonomy", "n03575240", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 347
    assert main(["taxonomy", "n0000bogus"]) == 2
    assert "unknown synset" in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_stops_quietly():
    import subprocess
    import sys

    # the reader (like `head`) is gone before the output is written
    p = subprocess.Popen([sys.executable, "-m", "fastft", "taxonomy", "n00021939"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait() == 0 and err == "", err


@pytest.mark.parametrize("name", list(CONSTRUCTIONS))
def test_constructions_sizes_disjoint_deterministic(name):
    specs = [make(name, s) for s in range(5)]
    assert len({s.hash for s in specs}) == 5, "five seeds must give five different draws"
    assert make(name, 3).hash == specs[3].hash, "same seed, same spec"
    for spec in specs:
        sets = {k: set(v.classes) for k, v in spec.sets.items()}
        for k, v in spec.sets.items():
            assert len(v.classes) == len(set(v.classes)), k
        tgt = [k for k in sets if k == "target" or k.startswith("k")]
        src = [k for k in sets if k not in tgt and k != "src1000"]
        for t in tgt:
            for s in src:
                assert not sets[t] & sets[s], f"{name}: {t} and {s} overlap"
        if name in ("dog", "instru", "instru-240"):
            assert len(sets["target"]) == 100 and len(sets["near"]) == 500 and len(sets["far"]) == 500
            assert len(sets["near"] & sets["far"]) == 100
            assert sets["target"] | sets["near"] | sets["far"] == set(load().wnids)
        if name == "dog":
            assert sets["target"] <= set(load().under(DOG))
            assert sets["far"] <= set(load().living_artifact()[1])
        if name.startswith("instru"):
            target = sets.get("target") or sets["k100_n1200"]
            assert target <= set(load().under(INSTRUMENTALITY))
            assert set(load().living_artifact()[0]) <= sets["far"]
        if name == "source-size":
            assert [len(sets[f"src{n}"]) for n in (1000, 800, 500, 200, 100, 80)] == [1000, 800, 500, 200, 100, 80]
            assert sets["src80"] <= sets["src100"] <= sets["src200"] <= sets["src500"] <= sets["src800"]


def test_instru_family_shares_sets_and_grid_is_nested():
    a, b, g = make("instru", 2), make("instru-240", 2), make("instru-grid", 2)
    assert a.sets["near"] == b.sets["near"] == g.sets["near"] and a.sets["far"] == g.sets["far"]
    assert b.sets["target"].cap == 240 and set(b.sets["target"].classes) == set(a.sets["target"].classes)
    assert set(g.sets["k100_n30"].classes) == set(a.sets["target"].classes)
    assert set(g.sets["k10_n30"].classes) < set(g.sets["k20_n30"].classes) < set(g.sets["k40_n30"].classes)
    assert {g.sets[f"k40_n{n}"].cap for n in (1200, 240, 30)} == {1200, 240, 30}
    assert make("random", 1).sets["target"] == make("source-size", 1).sets["target"]


def test_spec_roundtrip_and_tamper(tmp_path, capsys):
    from fastft.cli import main

    spec = make("dog", 0)
    p = spec.save(tmp_path / "dog.json")
    assert load_spec(p).hash == spec.hash
    assert main(["subsets", "show", str(p), "--json"]) == 0  # what `fastft subsets show` lists: the same classes
    shown = json.loads(capsys.readouterr().out)
    assert shown["hash"] == spec.hash and [c["wnid"] for c in shown["sets"]["target"]["classes"]] == list(spec.sets["target"].classes)
    assert all(c["name"] for c in shown["sets"]["far"]["classes"]) and len(shown["sets"]["far"]["classes"]) == 500
    assert main(["subsets", "show", str(p), "--set", "targt"]) == 2  # a set it does not have: named, with those it has
    assert "has no set 'targt'; it has: " in capsys.readouterr().err
    d = json.loads(p.read_text())
    d["sets"]["target"]["classes"][0] = d["sets"]["far"]["classes"][0]
    p.write_text(json.dumps(d))
    with pytest.raises(FastFTError, match="hash"):
        load_spec(p)
    assert main(["subsets", "show", str(p)]) == 2 and "hash" in capsys.readouterr().err


def test_impossible_requests_are_named():
    with pytest.raises(FastFTError, match="only 118"):
        make("dog", 0, target=200)
    with pytest.raises(FastFTError, match="no parameter"):
        make("dog", 0, tagret=10)
    with pytest.raises(FastFTError, match="unknown construction"):
        make("dogs", 0)
    with pytest.raises(FastFTError, match="integer"):
        make("random", 0, target="100")


def test_near_is_closer_than_far():
    for name in ("dog", "instru"):
        rows = {r["source"]: r for r in distances(make(name, 0))}
        assert rows["near"]["wup_nearest"] < rows["far"]["wup_nearest"]
        assert rows["near"]["wup_mean"] < rows["far"]["wup_mean"]


def test_released_splits_are_still_drawn():
    """``plans/splits.json`` pins every subset the study plans use (plan × seed) by spec hash: the shipped hierarchy,
    rules and constructions must still draw exactly those class lists (regenerate the file with
    ``tools/release_splits.py`` only when a change of the released splits is intended)."""
    from pathlib import Path

    from fastft.sweep import load_plan

    root = Path(__file__).resolve().parents[1]
    pinned = json.loads((root / "plans" / "splits.json").read_text())
    plans = {load_plan(p)["name"]: load_plan(p) for p in sorted((root / "plans").glob("*.yaml"))}
    assert sorted(pinned) == sorted(plans) and sum(len(v["seeds"]) for v in pinned.values()) == 40
    for name, plan in plans.items():
        for seed in plan["seeds"]:
            spec = make(plan["construction"], seed, **plan["params"])
            assert spec.hash == pinned[name]["seeds"][str(seed)]["hash"], f"{name} seed {seed}: its class lists changed"
