"""The second study, Yosinski et al. 2014 (plans/yosinski-2014.yaml): its constructions (random halves, natural vs
man-made), the plan's format (grid keys that follow another, the paper's numbers per grid point), the claims it needs
(a trend over a range, a base network compared at every grid point) and a tiny sweep + report of the same format on
the synthetic store, through the real CLI."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clirun import fastft
from fastft import study as sw
from fastft.data.subsets import make
from fastft.data.taxonomy import load
from fastft.errors import FastFTError
from fastft.report import claims as check_claims, collect, write_report

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "plans" / "yosinski-2014.yaml"
# Yosinski et al.'s released natural half (github.com/yosinski/convnet_transfer, ilsvrc12/data/half_nat_idx.txt), as
# label ranges (ends included); every other class is in their man-made half
RELEASED_NATURAL = [(0, 397), (936, 958), (970, 970), (972, 998)]


# ---------------------------------------------------------------- constructions
def test_halves_are_two_disjoint_seeded_halves_of_every_class():
    h = load()
    a0, a0_again, a1 = (make("halves", s).sets for s in (0, 0, 1))
    assert len(a0["A"].classes) == len(a0["B"].classes) == 500
    assert not set(a0["A"].classes) & set(a0["B"].classes) and set(a0["A"].classes) | set(a0["B"].classes) == set(h.wnids)
    assert a0 == a0_again and make("halves", 0).hash == make("halves", 0).hash
    assert a1["A"] != a0["A"] and 150 < len(set(a1["A"].classes) & set(a0["A"].classes)) < 350  # a new draw per seed
    assert list(a0["A"].classes) == sorted(a0["A"].classes, key=h.label.__getitem__)  # label order


def test_natural_made_is_the_hierarchys_natural_vs_man_made_rule():
    h = load()
    s = make("natural-made", 0).sets
    nat, made = set(s["natural"].classes), set(s["made"].classes)
    assert (len(nat), len(made)) == (449, 551) and not nat & made and nat | made == set(h.wnids)
    assert s == make("natural-made", 3).sets  # no seed in it
    released = {h.wnids[i] for lo, hi in RELEASED_NATURAL for i in range(lo, hi + 1)}
    assert len(released) == 449
    # 998 of 1000 agree; the two that do not, as fastft/data/subsets.py documents
    assert {h.name(w) for w in nat - released} == {"mashed potato"} and {h.name(w) for w in released - nat} == {"hay"}


def test_the_plans_construction_holds_both_splits_and_works_on_part_of_the_classes(store_classes):
    both = make("yosinski-2014", 2).sets
    assert {k: both[k] for k in ("A", "B")} == make("halves", 2).sets
    assert {k: both[k] for k in ("natural", "made")} == make("natural-made", 2).sets
    part = make("yosinski-2014", 0, within=store_classes).sets  # a partial store's classes: halves of those
    a, b = set(part["A"].classes), set(part["B"].classes)
    assert (len(a), len(b)) == (len(store_classes) // 2, len(store_classes) - len(store_classes) // 2)
    assert a | b == set(store_classes) == set(part["natural"].classes) | set(part["made"].classes) and not a & b
    living = set(load().living_artifact()[0])
    assert set(part["natural"].classes) == living & set(store_classes)
    odd = make("halves", 0, within=store_classes[:7]).sets
    assert (len(odd["A"].classes), len(odd["B"].classes)) == (3, 4)
    with pytest.raises(FastFTError, match="at least 2 classes"):
        make("halves", 0, within=store_classes[:1])
    only_living = [c for c in store_classes if c in living]
    with pytest.raises(FastFTError, match="no made class"):
        make("natural-made", 0, within=only_living)
    with pytest.raises(FastFTError, match="within lists classes the store does not have"):
        make("halves", 0, within=["n00000000"])


# ---------------------------------------------------------------- the plan
def test_the_plan_expands_with_copy_freeze_and_the_papers_numbers_per_point(tmp_path):
    plan = sw.load_plan(PLAN)
    runs = sw.expand(plan)
    by = {r.key: r for r in runs}
    assert len(runs) == 5 * (4 + 6 * 7)
    bnb, plus = by["BnB-copy4-s0"], by["BnB+-copy4-s0"]
    assert bnb.grid == {"copy": 4} and bnb.overrides["copy"] == bnb.overrides["freeze"] == 4 and bnb.deps == ["baseB-s0"]
    assert plus.overrides["copy"] == 4 and "freeze" not in plus.overrides and by["AnB+-copy2-s3"].deps == ["baseA-s3"]
    assert bnb.labels["paper"] == {"ref": "Fig. 2, BnB (released logs)", "top1": 60.4}
    assert by["AnB-copy7-s1"].labels["paper"]["top1"] == 54.2 and by["AnB+-copy3-s2"].labels["paper"]["top1"] == 64.2
    assert plus.labels["paper"] is None and by["baseB-s0"].labels["paper"]["top1"] == 62.5
    assert by["NnM-copy2-s0"].overrides["set"] == "made" and by["NnM-copy2-s0"].deps == ["baseNat-s0"]
    # the dry run: each run's state and cost, from ILSVRC2012's nominal class sizes (1,281,167 images / 1000 classes)
    r = fastft("sweep", str(PLAN), "--dry-run", "--seeds", "0", "--out", tmp_path / "dry", "--img-per-s", "30000")
    classes = 30 * 500 + 8 * 449 + 8 * 551  # A / B runs: 2 bases + 4 templates x 7; natural and made: a base + 7 each
    assert f"46 runs, {classes * 1281.167 * 180 / 1e6:.1f} M image-iterations" in r.stdout
    assert "AnB+-copy7-s0" in r.stdout and "after baseA-s0" in r.stdout and "GPU-hours" in r.stdout


def _plan(tmp_path, **change):
    p = yaml.safe_load(PLAN.read_text())
    for k, v in change.items():
        p[k] = v(p[k]) if callable(v) else v
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p))
    return f


def _run(p, name):
    return next(r for r in p if r["name"] == name)


@pytest.mark.parametrize("edit, says", [
    (lambda runs: _run(runs, "BnB")["grid"].update(freeze="cpy") or runs, "grid freeze: 'cpy' must name another grid key"),
    (lambda runs: _run(runs, "BnB")["grid"].update(copy=[]) or runs, "grid copy must be a non-empty list"),
    (lambda runs: _run(runs, "AnB")["paper"].update(key="freeze") or runs, "paper key 'freeze' is not a grid key with values"),
    (lambda runs: _run(runs, "AnB")["paper"]["top1"].update({9: 50.0}) or runs, r"paper top1 gives copy=9, not in its grid"),
    (lambda runs: _run(runs, "AnB")["paper"].pop("key") and runs, "paper top1 is given per grid point: name the grid key"),
])
def test_plan_grid_and_paper_mistakes_are_named_when_it_loads(tmp_path, edit, says):
    with pytest.raises(FastFTError, match=says):
        sw.load_plan(_plan(tmp_path, runs=edit))


@pytest.mark.parametrize("claim, says", [
    ({"trend": "AnB", "key": "copy", "direction": "down", "range": [7, 3]}, r"range must be \[lo, hi\] with lo < hi"),
    ({"trend": "AnB", "key": "copy", "direction": "down", "range": [7, 9]}, "holds fewer than 2 of AnB's copy values"),
    ({"trend": "AnB", "key": "freeze", "direction": "down"}, "'freeze' follows 'copy' in the grid of 'AnB'; name 'copy'"),
])
def test_claim_mistakes_are_named_when_the_plan_loads(tmp_path, claim, says):
    with pytest.raises(FastFTError, match=says):
        sw.load_plan(_plan(tmp_path, claims=[{**claim, "text": "x"}]))


# ---------------------------------------------------------------- the claims' verdicts
def _fake(root: Path, template: str, seed: int, top1: float, claims: list, copy=None):
    name = f"{template}-{copy}-{seed}"
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"run_id": name, "config": {"seed": seed, "mode": "finetune", "set": "B", "name": name},
                                               "num_classes": 500}))
    (d / "sweep.json").write_text(json.dumps({"plan": "y", "template": template, "seed": seed, "grid": {} if copy is None else {"copy": copy},
                                              "claims": claims}))
    (d / "final.json").write_text(json.dumps({"run_id": name, "top1": top1, "top5": top1 + 10, "epochs": 1}))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": top1, "train_loss": 1.0, "lr": 0.01}) + "\n")


def test_trends_over_a_range_and_base_networks_compared_at_every_grid_point(tmp_path):
    """AnB rises to n = 3 and falls after it (5 seeds): it falls over [3, 7], but not along all of n; AnB+ beats the
    gridless base B at every n, a worse one at 2 of 3; a difference with a gridless base term (AnB − base B vs NnM −
    base made) is paired by seed at each n."""
    claims = [{"trend": "AnB", "key": "copy", "direction": "down", "range": [3, 7], "text": "AnB falls beyond 3"},
              {"trend": "AnB", "key": "copy", "direction": "down", "text": "AnB falls along n"},
              {"trend": "AnB", "key": "copy", "direction": "up", "range": [1, 3], "text": "AnB rises to 3"},
              {"a": "AnB+", "b": "baseB", "text": "AnB+ beats base B"},
              {"a": "late", "b": "baseB", "text": "late beats base B"},
              {"a": "AnB - baseB", "b": "NnM - baseMade", "text": "dissimilar transfers worse"},
              {"a": "baseB", "b": "AnB+", "text": "base B beats AnB+"}]
    anb = {1: 50, 2: 56, 3: 62, 4: 61, 5: 60, 6: 59, 7: 58}  # ρ over 1 … 7: +0.29 in every seed
    for seed in range(5):
        jitter = (0.0, 0.3, -0.2, 0.1, -0.1)[seed]
        _fake(tmp_path, "baseB", seed, 60.0 + seed, claims)
        _fake(tmp_path, "baseMade", seed, 50.0 + seed, claims)
        for n, v in anb.items():
            _fake(tmp_path, "AnB", seed, v + jitter, claims, copy=n)
        for n in (1, 2, 3):
            _fake(tmp_path, "AnB+", seed, 62.0 + seed + jitter + 0.1 * n, claims, copy=n)
            _fake(tmp_path, "late", seed, 60.0 + seed + (1.0 + jitter if n > 1 else -1.0 + jitter), claims, copy=n)
            loss = anb[n] + jitter - (60.0 + seed)  # AnB − base B at this n
            _fake(tmp_path, "NnM", seed, 50.0 + seed + loss - 2.0 * n + jitter / 3, claims, copy=n)  # loses ~2n more
    c = check_claims(collect(tmp_path)[0]).set_index("claim")  # what fastft report writes to claims.csv (without its figures)
    assert c.loc["AnB falls beyond 3", "verdict"] == "holds" and c.loc["AnB falls beyond 3", "fastft"].startswith("ρ -1.00")
    assert c.loc["AnB rises to 3", "verdict"] == "holds"
    assert c.loc["AnB falls along n", "verdict"] == "does not hold (significantly the other way)"
    assert c.loc["AnB+ beats base B", "verdict"] == "holds" and "over 3 grid points" in c.loc["AnB+ beats base B", "fastft"]
    assert c.loc["late beats base B", "verdict"] == "holds at 2/3 grid points"
    assert c.loc["dissimilar transfers worse", "verdict"] == "holds"
    assert "+1.99 … +5.99 over 3 grid points; above 0 at 3, significantly at 3" in c.loc["dissimilar transfers worse", "fastft"]
    assert c.loc["base B beats AnB+", "verdict"] == "does not hold (significantly the other way)"


# ---------------------------------------------------------------- a tiny sweep of the same format
def test_a_tiny_sweep_of_the_plans_format_runs_copy_and_freeze_and_reports_the_grid(store, tmp_path):
    p = yaml.safe_load(PLAN.read_text())
    p.update(name="yos-tiny", params={"within": "store"}, seeds=[0],
             defaults={"width": 0.25, "crop": 71, "batch_size": 32, "init": "paper-scaled", "plateau_epochs": 0, "epochs": 1,
                       "num_threads": 1, "lr": 0.005, "progress": False})
    p["runs"] = [r for r in p["runs"] if r["name"] in ("baseA", "baseB", "BnB", "AnB+")]
    for r in p["runs"]:
        if "grid" in r:
            r["grid"]["copy"] = [1, 6] if r["name"] == "BnB" else [6]
        if (r.get("paper") or {}).get("key"):
            r["paper"]["top1"] = {n: v for n, v in r["paper"]["top1"].items() if n in r["grid"]["copy"]}
    p["claims"] = [{"a": "AnB+", "b": "baseB", "text": "AnB+ beats base B", "ref": "Fig. 2"},
                   {"trend": "BnB", "key": "copy", "direction": "down", "range": [1, 6], "text": "BnB falls"}]
    p["report"] = {"pairs": [["AnB+", "BnB"]], "order": ["baseA", "baseB", "BnB", "AnB+"]}
    plan = tmp_path / "yos-tiny.yaml"
    plan.write_text(yaml.safe_dump(p))
    out = tmp_path / "out"
    fastft("sweep", plan, "--store", store, "--out", out, "--quiet")
    final = {d.name.rsplit("-", 1)[0]: json.loads((d / "final.json").read_text()) for d in out.glob("*-s0-*")}
    assert sorted(final) == ["AnB+-copy6-s0", "BnB-copy1-s0", "BnB-copy6-s0", "baseA-s0", "baseB-s0"]
    assert final["BnB-copy6-s0"]["frozen"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6"] and final["AnB+-copy6-s0"]["frozen"] == []
    (bnb6,) = out.glob("BnB-copy6-s0-*")
    assert json.loads((bnb6 / "config.json").read_text())["identity"]["copy"] == 6
    rep = write_report(out, tmp_path / "rep")  # fastft report's tables
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| BnB | B | copy=1 | 1 |" in md and "| BnB | B | copy=6 | 1 |" in md and "| baseB | B | – | 1 |" in md
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    rows = {(x.template, x.grid if isinstance(x.grid, str) else ""): x for x in summary.itertuples()}
    assert (rows["BnB", "copy=1"].paper_top1, rows["BnB", "copy=6"].paper_top1, rows["AnB+", "copy=6"].paper_top1,
            rows["baseB", ""].paper_top1) == (62.6, 61.8, 64.5, 62.5)
    c = pd.read_csv(tmp_path / "rep" / "claims.csv").set_index("claim")
    assert c.loc["AnB+ beats base B", "verdict"] == c.loc["BnB falls", "verdict"] == "too few seeds (1; 3 needed)"
    assert "ahead in" in c.loc["AnB+ beats base B", "fastft"] and "| AnB+ beats base B | Fig. 2 |" in md
    assert "The paper's findings, checked: 2" in rep["findings"] and any("grid-yos-tiny-copy" in f for f in rep["figures"])
