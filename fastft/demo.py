"""``fastft demo``: the whole flow on a synthetic ImageNet on CPU — synth → shard → verify → near/far sweep → SVM
analysis → report. ``--target folder``: the same study with its target a synthetic image-folder dataset (4 dog classes
the ImageNet store does not hold, in ``train/<name>/`` folders named by their WordNet names), sharded as a store of
its own (``--dataset imagefolder``); the near and far models of the ImageNet store are fine-tuned onto it across stores
(``_data/demo_folder_plan.yaml``).

Every step is the real one (the same functions the CLI commands call); only the data are synthetic and the model is
a scaled configuration (see ``_data/demo_plan.yaml``).
"""
from __future__ import annotations

import re
import time
from importlib import resources
from pathlib import Path

from .errors import FastFTError
from .files import fsync_write


TARGETS = ("imagenet", "folder")


def demo(out: str | Path = "fastft-demo", seeds: int = 3, parallel: int = 2, target: str = "imagenet") -> dict:
    from . import study as sw
    from .report import write_report
    from .data.shard import ShardConfig, write_store
    from .data.store import verify
    from .data.synth import synth

    if target not in TARGETS:
        raise FastFTError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    out = Path(out)
    t0 = time.time()
    say = lambda msg: print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    tree, store, runs, rep = out / "imagenet", out / "store", out / "runs", out / "report"
    if not tree.exists():
        say(f"1/6 synthetic ImageNet (24 classes in the ILSVRC2012 layout, with broken files) -> {tree}")
        synth(tree, train_per_class=40, val_per_class=10, size=96, val_layout="devkit", broken=True, seed=0)
    say(f"2/6 fastft shard {tree} --out {store} --resize 80x80 --shard-mb 2 --allow-missing")
    m = write_store(tree, store, ShardConfig(resize="80x80", shard_mb=2, allow_missing=True), progress=False)
    t = m["totals"]
    say(f"    {t['written']} written + {t['rejected']} rejected = {t['inputs']} inputs; converted {m['input_kinds']}")
    problems = verify(store)
    if problems:
        raise FastFTError(f"demo store failed verification: {problems}")
    say("3/6 fastft verify: OK")
    stores = {"folder": str(_folder_store(out, say))} if target == "folder" else {}
    plan_file = resources.files("fastft") / "_data" / ("demo_folder_plan.yaml" if stores else "demo_plan.yaml")
    plan = sw.load_plan(Path(str(plan_file)))
    mine = out / f"{plan['name']}.yaml"  # the plan as the demo ran it (its seeds): `fastft sweep` runs it again
    fsync_write(mine, re.sub(r"(?m)^seeds: .*$", f"seeds: {list(range(seeds))}", Path(str(plan_file)).read_text()))
    runs_list = sw.expand(plan, list(range(seeds)))
    sw.prepare(plan, runs_list, str(store), runs, stores=stores)
    say(f"4/6 fastft sweep {plan['name']}: {len(runs_list)} runs ({seeds} seeds x near/far pretrain, scratch, 2 fine-tunes), "
        f"{parallel} at a time")
    summary = sw.run_local(runs_list, runs, sw.slots_for(None, 1, parallel), retries=1, progress=True)
    if summary["failed"] or summary["skipped"]:
        raise FastFTError(f"demo runs failed: {summary['failed'] + summary['skipped']}; see their sweep.log under {runs}")
    say("5/6 fastft analyze svm: linear SVM on fc7 of every model, on each seed's target view (Table 3's before/after)")
    from .analysis import analysis_targets, svm

    for view, group in analysis_targets([runs], plan=plan["name"]):  # as `fastft analyze svm RUNS --plan demo-near-far`
        for run in group:
            svm(run, view)
    # A scratch run on 10-20 images per class may stay at ln C under the paper's recipe (the paper's Fig. 12 (c): from
    # scratch on scarce data "does not converge"); the report names it and, as that figure does, counts it
    r = write_report(runs, rep, include_flagged=True)
    say(f"6/6 fastft report -> {rep}" + (f" ({r['flagged']} run(s) did not learn: listed in the report and counted, "
                                          "as the paper counts scratch runs that do not converge on scarce data)" if r["flagged"] else ""))
    print()
    print(Path(r["tables"][0]).read_text())
    print(f"target accuracy: {target_order(r['summary'], plan['name'])}  (near > far > scratch is what the paper finds)")
    print(f"tables:  {', '.join(r['tables'])}")
    print(f"figures: {', '.join(r['figures'])}")
    say("done")
    return r


def target_order(summary, plan: str) -> str:
    """``ft-near 100.0 > ft-far 83.3 > scratch 30.8``: this plan's target runs by mean top-1 (the runs directory may
    hold the other demo's plan too, with the same templates)."""
    s = summary[summary["plan"] == plan].set_index("template")["top1_mean"]
    return " > ".join(f"{k} {s[k]:.1f}" for k in sorted({"ft-near", "ft-far", "scratch"} & set(s.index), key=lambda k: -s[k]))


def _folder_store(out: Path, say) -> Path:
    """``--target folder``: a synthetic image-folder dataset of 4 dog classes the ImageNet store does not hold (so
    the near source, other dogs, transfers to it best), sharded with ``--dataset imagefolder`` and verified."""
    from .data.shard import ShardConfig, write_store
    from .data.store import verify
    from .data.synth import demo_classes, synth_folder
    from .data.taxonomy import DOG, load

    h = load()
    held = set(demo_classes())
    dogs = [w for w in h.under(DOG) if w not in held][5::23][:4]
    tree, store = out / "folder", out / "folder-store"
    if not tree.exists():
        say(f"    synthetic image-folder dataset (4 dog classes named by their WordNet names, no wnids) -> {tree}")
        synth_folder(tree, {h.name(w): w for w in dogs}, train_per_class=10, val_per_class=10, size=96, seed=1)
    m = write_store(tree, store, ShardConfig(resize="80x80", shard_mb=2, dataset="imagefolder"), progress=False)
    problems = verify(store)
    if problems:
        raise FastFTError(f"demo folder store failed verification: {problems}")
    classes = (store / "classes.txt").read_text(encoding="utf-8").splitlines()
    say(f"    fastft shard {tree} --dataset imagefolder --out {store} --resize 80x80 --shard-mb 2: "
        f"{m['totals']['written']} images of {len(classes)} classes ({', '.join(classes)}); verify: OK")
    return store


# ---------------------------------------------------------------- the README's excerpt of the demo's output
_STEP = re.compile(r"^\[\s*\d+\.\d+s\] ")
_KEEP = ("**The paper's findings", "Linear SVM on fc7", "target accuracy:")


def excerpt(output: str) -> list[str]:
    """The lines of ``fastft demo``'s output the README shows (``tools/readme_demo.py`` writes them there; a test
    checks they are what the demo prints): the timed steps, the findings' verdicts and every table row but the rules.
    The progress bar (carriage returns) and the prose of the report are left out."""
    keep = []
    for line in output.splitlines():
        line = line.split("\r")[-1].rstrip()
        if _STEP.match(line) or line.startswith(_KEEP) or line.startswith("| ") and not line.startswith("|---"):
            keep.append(line)
    return keep


README_BEGIN = "<!-- demo-output: written by tools/readme_demo.py; tests/test_sweep_report.py checks it -->"
README_END = "<!-- /demo-output -->"


def readme_block(text: str) -> str:
    """The README's demo block, markers included (what ``tools/readme_demo.py`` rewrites)."""
    m = re.search(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), text, re.S)
    if not m:
        raise FastFTError(f"README.md has no demo-output block ({README_BEGIN} … {README_END})")
    return m.group(0)


def readme_excerpt(text: str) -> list[str]:
    """The demo output lines the README shows (inside its block's code fence)."""
    block = readme_block(text)
    return block[block.index("```\n") + 4:block.rindex("```")].splitlines()


def untimed(lines: list[str]) -> list[str]:
    """``lines`` with their timestamps masked (what may differ between two runs of the demo)."""
    return [_STEP.sub("[ ... s] ", line) for line in lines]
