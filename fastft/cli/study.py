"""``fastft sweep``, ``report``, ``demo``: a study's plans run as a DAG, its tables and figures, the whole flow on CPU."""
from __future__ import annotations

import collections
from pathlib import Path

from ..errors import FastFTError


STATE_ORDER = ("finished", "running", "pending", "stuck", "failed", "cancelled", "ended", "interrupted", "to run")


def _stores_arg(given: list[str] | None) -> tuple[str | None, dict]:
    """``--store PATH`` (the plans' store) and ``--store NAME=PATH`` (a store a plan's ``stores`` names), each once."""
    import re

    main, named = None, {}
    for v in given or []:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_-]*)=(.+)", v)
        if m and not Path(v).exists():
            if m[1] in named:
                raise FastFTError(f"--store {m[1]}=… is given twice")
            named[m[1]] = m[2]
        elif main is not None:
            raise FastFTError(f"--store is given twice ({main}, {v}); other stores are given as --store NAME=PATH")
        else:
            main = v
    return main, named


def cmd_sweep(a):
    from .. import study as sw

    total = {"runs": 0, "image_iterations": 0.0, "left": 0.0}
    states: collections.Counter = collections.Counter()
    seen: set = set()
    seen_left: set = set()
    a.store, stores = _stores_arg(a.store)
    if not a.store and not stores and not a.dry_run:
        raise FastFTError("fastft sweep needs --store DIR (the shard store the runs read) to run or to write SLURM jobs; "
                          "only --dry-run works without one (an estimate from ILSVRC2012's class sizes)")
    on_slurm = a.backend == "slurm" and not a.dry_run
    if on_slurm:  # resources checked against the partition before any work; every path absolute (jobs start in --out)
        from ..study import slurm

        if a.submit:
            slurm.require_submit()
        cluster = slurm.cluster(a.partition)
        res = slurm.resolve(slurm.Resources(
            partition=a.partition, time=a.time, gpus=a.gpus_per_run, cpus=a.cpus_per_run, mem=a.mem, account=a.account,
            qos=a.qos, constraint=a.constraint, throttle=a.array_throttle, sbatch_lines=tuple(a.sbatch_line),
            setup=tuple(a.setup), signal_lead=a.signal_lead), cluster)
        a.out, a.store = str(Path(a.out).resolve()), a.store and str(Path(a.store).resolve())
        stores = {k: str(Path(v).resolve()) for k, v in stores.items()}
    plans: list = []      # each plan's prepared runs, run (or submitted) together at the end
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
    loaded = []  # every plan read and expanded before any is prepared: a mistake in the last is named before work
    for plan_path in a.plans:
        plan = sw.load_plan(plan_path)
        loaded.append((plan_path, plan, sw.expand(plan, seeds)))
    for plan_path, plan, runs in loaded:
        out = Path(a.out)
        sw.prepare(plan, runs, a.store, out, progress=not a.quiet, stores=stores)
        c = sw.cost(runs, seen=seen)
        total["runs"] += c["runs"]
        total["image_iterations"] += c["image_iterations"]
        if a.dry_run:
            shared = f" (+{c['shared']} shared with plans above)" if c["shared"] else ""
            print(f"plan {plan['name']} ({plan_path}): {c['runs']} runs{shared}, {c['image_iterations'] / 1e6:.1f} M image-iterations")
            st = _states(runs, out)
            for r in runs:
                dep = f"  after {r.deps[0]}" if r.deps else ""
                print(f"  {r.key:40s} {r.overrides['mode']:8s} set={r.overrides['set']:12s} {r.images_per_epoch:9.0f} img/epoch  "
                      f"{r.run_id or '-':12s} {st[r.key]}{dep}")
            here = collections.Counter(v.split(":")[0].split(" on ")[0] for v in st.values())
            print("  " + ", ".join(f"{here[k]} {k}" for k in STATE_ORDER if here[k]))
            states.update(here)
            total["left"] += sw.cost([r for r in runs if st[r.key] != "finished"], seen=seen_left)["image_iterations"]
            continue
        plans.append(runs)
    if on_slurm:
        _submit(plans, a, res, cluster)
        return
    if plans:  # every plan's runs in one DAG: the GPUs are shared across plans, and a shared run trains once
        merged = sw.merge(plans)
        summary = sw.run_local(merged, Path(a.out), sw.slots_for(a.gpus, a.per_gpu, a.parallel), retries=a.retries,
                               progress=not a.quiet, launcher=a.launch)
        for runs in plans:
            name = runs[0].labels["plan"] if runs else "?"
            n = {k: sum(x.startswith(f"{name}/") for x in summary[k]) for k in ("done", "failed", "skipped")}
            shared = len(runs) - sum(r.key.startswith(f"{name}/") for r in merged)
            print(f"plan {name}: {n['done']} done, {n['failed']} failed, {n['skipped']} skipped (dependency failed)" +
                  (f", {shared} shared with plans above" if shared else "") + f"; runs in {a.out}")
        print(f"{len(merged)} runs in {summary['secs']:.0f} s")
        eff = summary.get("efficiency")
        if eff:
            top = sorted(eff["fixed_s"].items(), key=lambda kv: -kv[1])[:4]
            print(f"efficiency: {eff['efficiency']:.0%} of {eff['slots']} slot(s) × {eff['wall_s']:.0f} s in training steps "
                  f"({eff['sum_step_s']:.0f} s over {eff['runs']} runs trained now); the rest, summed over runs: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in top))
        for k in summary["failed"]:
            print(f"  FAILED {k}: see its sweep.log and failed.json")
        for k in summary["did_not_learn"]:
            print(f"  did not learn: {k} (train loss still at ln C; see its final.json; the report keeps it out of means)")
        if summary["failed"] or summary["skipped"]:
            raise SystemExit(1)
    if a.dry_run:
        line = f"total: {total['runs']} runs, {total['image_iterations'] / 1e9:.2f} G image-iterations"
        if a.img_per_s:
            h = total["image_iterations"] / a.img_per_s / 3600
            line += f"; at {a.img_per_s:.0f} img/s per GPU: {h:.1f} GPU-hours = {h / a.node_gpus:.1f} h on one {a.node_gpus}-GPU node"
        print(line)
        if sum(states.values()) > states["to run"]:  # a sweep in progress: what is left
            left = f"left: {sum(states.values()) - states['finished']} unfinished runs, at most {total['left'] / 1e9:.2f} G image-iterations"
            if a.img_per_s:
                h = total["left"] / a.img_per_s / 3600
                left += f" = {h:.1f} GPU-hours = {h / a.node_gpus:.1f} h on one {a.node_gpus}-GPU node"
            print(left)


def _states(runs, out: Path) -> dict[str, str]:
    """Each run's state for --dry-run: ``state`` or ``state: detail``."""
    from .. import study as sw
    from ..study import slurm

    queued, note = slurm.queue_states(runs, out) if (out / "slurm").is_dir() else ({}, "")
    if note:
        print(f"  SLURM: {note}; the states of tasks that left the queue come from their run directories")
    return {r.key: (f"{queued[r.key][0]}: {queued[r.key][1]}" if queued.get(r.key, ("", ""))[1] else
                    queued[r.key][0]) if r.key in queued else sw.state(out, r) for r in runs}


def _submit(plans: list, a, res, cluster) -> None:
    """``--backend slurm``: the plans' runs as job arrays, written and (``--submit``) submitted (fastft.slurm)."""
    from ..study import slurm

    s = slurm.sweep(plans, Path(a.out), res, cluster, a.submit)
    print(f"SLURM: {s['resources']}")
    for n in s["notes"]:
        print(f"  note: {n}")
    listed = {r.run_id for A in s["arrays"] for r in A.runs}
    for runs in plans:
        name = runs[0].labels["plan"] if runs else "?"
        fin = sum((r.run_dir / "final.json").exists() for r in runs)
        new = sum(r.run_id in listed for r in runs)
        print(f"plan {name}: {len(runs)} runs: {new} to {'submit' if a.submit else 'list'}, {fin} finished, "
              f"{len(runs) - new - fin} queued")
    if s["dead"]:
        print(f"{len(s['dead'])} queued tasks could never start (a dependency failed): "
              + ("cancelled, their runs listed again: " if a.submit else "--submit cancels them and lists their runs again: ")
              + " ".join(s["dead"]))
    if s["queued"]:
        print(f"{s['queued']} runs of earlier submissions are queued or running: the new arrays wait for their tasks")
    if not s["arrays"]:
        print("nothing to submit: every run is finished or queued")
        return
    for A in s["arrays"]:
        after = ", ".join(f"{ref[4:] if ref.startswith('job:') else ref}_{t}" for ref, t in A.after)
        print(f"  {A.script.name}: {len(A.runs)} run{'s' * (len(A.runs) > 1)}" + (f", after {after}" if after else ""))
    if a.submit:
        print(f"submitted {len(s['ids'])} job arrays: " + ", ".join(f"{k} = {v}" for k, v in s["ids"].items()))
        print(f"logs: <run>/sweep.log (also {Path(a.out) / 'slurm' / 'logs'}/<job name>-<task>.log); states: fastft sweep "
              "… --dry-run")
    else:
        print(f"submit with: bash {s['script']}  (or pass --submit); each array waits (afterok) for its own source tasks")


def cmd_report(a):
    from ..report import write_report

    r = write_report(a.runs, a.out, include_flagged=a.include_flagged)
    print(f"report of {r['finished']}/{r['runs']} finished runs:")
    if r["flagged"] or r["failed"]:
        print(f"  {r['flagged']} did not learn ({'counted' if a.include_flagged else 'left out of means; --include-flagged counts them'}), "
              f"{r['failed']} failed: listed at the top of report.md")
    for t in r["tables"]:
        print(f"  table  {t}")
    for f in r["figures"]:
        print(f"  figure {f}")
    if not r["summary"].empty:
        print()
        print(Path(r["tables"][0]).read_text())
    if r["findings"]:
        print(r["findings"].replace("**", "") + f" See {Path(a.out) / 'claims.csv'}.")


def cmd_demo(a):
    from ..demo import demo

    demo(a.out, seeds=a.seeds, parallel=a.parallel, target=a.target)


def add_commands(sub) -> None:
    s = sub.add_parser("sweep", help="run a study plan (templates x grid x seeds) as a DAG: locally on GPUs/CPU, or as SLURM job arrays",
                       description="Expand plans into runs (source pretrain -> its fine-tunes), skip finished runs, resume interrupted "
                                   "ones, retry failed ones. Example: fastft sweep plans/near-far-instru.yaml --store shards/imagenet --gpus 0,1,2,3")
    s.add_argument("plans", nargs="+", help="plan YAML files (see plans/)")
    s.add_argument("--store", action="append", metavar="[NAME=]DIR",
                   help="the shard store the runs read; a plan whose runs read other stores (its stores: key) names "
                        "each as --store NAME=DIR (repeat)")
    s.add_argument("--out", default="runs", help="runs directory (specs, views, claims and run directories)")
    s.add_argument("--seeds", help="comma-separated seeds instead of the plan's (e.g. 0 or 0,1)")
    s.add_argument("--gpus", help="GPUs to pack runs onto: all, or indices such as 0,1,2,3 (under CUDA_VISIBLE_DEVICES, "
                                  "indices into it); default: the CPU")
    s.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (on an H200, 2 runs gave 0.90x the throughput of 1: the step is GPU-bound; "
                                                                 "runs sharing a GPU split its cache memory, and the node's runs split host_cache_gb auto)")
    s.add_argument("--parallel", type=int, default=1, help="concurrent runs without GPUs")
    s.add_argument("--retries", type=int, default=1, help="retries of a failed run")
    s.add_argument("--launch", choices=["preloaded", "fresh"], help="local: how each run's process starts — preloaded "
                   "(the default for CPU runs where the OS has a fork server): forked from a process that imported torch, "
                   "accelerate and DALI once, which saves a small run most of its start-up; fresh: a new interpreter per "
                   "run (the default for GPU runs until preloaded is proven on a GPU)")
    s.add_argument("--backend", default="local", choices=["local", "slurm"], help="local: run here, packed onto --gpus; "
                   "slurm: write (and with --submit, submit) job arrays with afterok dependencies")
    s.add_argument("--submit", action="store_true", help="SLURM: submit the job arrays with sbatch (default: only write them); "
                   "again after a failure: resubmits the failed runs and what depends on them, cancels what can never start")
    g = s.add_argument_group("SLURM jobs (--backend slurm; defaults read from the partition where it can be read)")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default partition)")
    g.add_argument("--time", help="time limit per task; a task checkpoints and requeues itself --signal-lead seconds "
                   "before it, and resumes (default: 24:00:00, or the partition's MaxTime if shorter)")
    g.add_argument("--signal-lead", type=int, default=120, help="seconds before the time limit at which a task checkpoints "
                   "and requeues (default %(default)s; --time must leave room to train)")
    g.add_argument("--gpus-per-run", type=int, help="GPUs per run; 0: a CPU job (no gres); more than 1: a multi-GPU run "
                   "(torchrun). Default: 1 where the partition has GPUs, else 0")
    g.add_argument("--cpus-per-run", type=int, help="CPUs per run (default: the run's share of a node: its CPUs × "
                   "GPUs per run / GPUs per node; a CPU job: a node's CPUs)")
    g.add_argument("--mem", help="memory per run (sbatch --mem, e.g. 64G; default: the partition's)")
    g.add_argument("--account", help="sbatch --account")
    g.add_argument("--qos", help="sbatch --qos")
    g.add_argument("--constraint", help="sbatch --constraint (node features, e.g. h100)")
    g.add_argument("--array-throttle", type=int, help="at most N tasks of each array at once (--array=…%%N)")
    g.add_argument("--sbatch-line", action="append", default=[], metavar="LINE",
                   help="an extra #SBATCH option, repeatable: --sbatch-line=--exclusive --sbatch-line=--nice=10")
    g.add_argument("--setup", action="append", default=[], metavar="CMD",
                   help="a shell line each task runs before training, repeatable: --setup 'module load cuda/12.4'")
    s.add_argument("--dry-run", action="store_true", help="print the runs with their state in --out (finished, running, interrupted, failed, to run), "
                   "dependencies and cost, total and left; train nothing")
    s.add_argument("--img-per-s", type=float, help="with --dry-run: measured training img/s per GPU, to print GPU-hours")
    s.add_argument("--node-gpus", type=int, default=8, help="with --dry-run: GPUs per node for the wall-time estimate")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("report", help="tables (mean +- std over seeds, paper numbers alongside) and figures from run directories",
                       description="Tables: report.md (per plan: mean ± std and 95 % CI over seeds, the paper's numbers and "
                                   "the difference; comparisons paired by seed; the paper's findings checked (claims.csv); SVM and probe "
                                   "results of `fastft analyze`), "
                                   "summary.csv, paired.csv, runs.csv (one row per run and plan, finished or not), filters.csv (Fig. 9). "
                                   "Figures (PNG): curves-<plan>, final-<plan>, grid-<plan>-<key>, gains-<plan>, probes-<plan>, "
                                   "filters-<plan>, distance. "
                                   "Runs may still be training: the report shows what has finished.")
    s.add_argument("runs", help="directory holding run directories (searched recursively)")
    s.add_argument("--out", required=True, help="where to write report.md, CSVs and PNG figures")
    s.add_argument("--include-flagged", action="store_true",
                   help="count runs flagged 'did not learn' (train loss still at ln C; see plateau_epochs) in means and claims")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("demo", help="the whole flow on a built-in synthetic ImageNet on CPU: synth -> shard -> near/far sweep -> report")
    s.add_argument("--out", default="fastft-demo", help="working directory (created)")
    s.add_argument("--seeds", type=int, default=3, help="seeds of the study (3: the fewest a claim is checked on; 5 as in the paper)")
    s.add_argument("--parallel", type=int, default=2, help="concurrent training runs")
    s.add_argument("--target", default="imagenet", choices=["imagenet", "folder"],
                   help="folder: fine-tune the ImageNet store's near/far models onto a synthetic image-folder dataset "
                        "(a store of its own, classes named by name; see README, Image-folder datasets)")
    s.set_defaults(fn=cmd_demo)
