"""CLI commands that run things: ``train``, ``sweep``, ``report``, ``bench``, ``demo``, ``analyze``.

This is where the pieces are wired: the trainer gets its loaders from :mod:`fastft.pipelines` here, so neither
imports the other.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import FastFTError
from .util.device import cuda_available
from .util.env import usable_cores


def loader_factory(cfg):
    """A ``loader_factory`` for :func:`fastft.trainer.train` backed by :class:`fastft.pipelines.Loader`, from a
    :class:`~fastft.trainer.TrainConfig`. ``cache="auto"`` caches decoded training images on GPUs when the store has
    a fixed image size (the cache then holds what fits, on the device and in the host tier; see
    :class:`fastft.pipelines._CacheBackend`). GPU batches come as float16 in NHWC memory when training in bf16."""
    from .pipelines import Loader, LoaderConfig, batch_format
    from .store import open_view
    from .train.config import resolve_device

    dev, precision = resolve_device(cfg)

    def make(view, split, batch_size, rank, world, seed, train):
        use_cache = cfg.cache is True
        if cfg.cache == "auto" and train and dev == "cuda":
            use_cache = open_view(view).image_size is not None
        lc = LoaderConfig(batch_size=batch_size, crop=cfg.crop, backend=cfg.backend, device=dev, num_threads=cfg.num_threads,
                          hw_decoder_load=cfg.hw_decoder_load, cpu_decode=cfg.cpu_decode if dev == "cuda" else 0.0,
                          augment_to=cfg.augment_to, cache=use_cache and train, cache_gb=cfg.cache_gb,
                          host_cache_gb=cfg.host_cache_gb if dev == "cuda" else 0.0, preprocess=cfg.preprocess,
                          **(batch_format(dev, precision) if cfg.channels_last else {}))
        return Loader(view, split, lc, train=train, rank=rank, world_size=world, seed=seed)
    return make


def cmd_train(a):
    from . import config
    from .train import TrainConfig, train

    if a.config and "=" in a.config and not Path(a.config).exists():  # only key=value overrides were given
        a.overrides, a.config = [a.config, *a.overrides], None
    cfg = config.load(TrainConfig, a.config, a.overrides)
    cfg.validate()
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "WORLD_SIZE" not in os.environ:
        # Accelerate's CPU launcher starts one process whatever --num_processes says, and tells the process nothing
        raise FastFTError("`accelerate launch --cpu` starts one process, whatever --num_processes asks; for N CPU "
                          "processes use `fastft train … --procs N` (torchrun with gloo), for one plain `fastft train …`")
    if a.procs and a.procs > 1 and "RANK" not in os.environ and "ACCELERATE_PROCESS_INDEX" not in os.environ:
        return _launch(a)
    final = train(cfg, loader_factory(cfg), on_step=_test_sigterm_hook())
    if int(os.environ.get("RANK", "0")):
        return
    top1 = final.get("top1")
    print(f"run {final['name']}: top-1 {top1:.2f}%  top-5 {final.get('top5', float('nan')):.2f}%  ({final['epochs']} epochs)" if top1 is not None
          else f"run {final['name']} finished")


def _test_sigterm_hook():
    """``FASTFT_TEST_SIGTERM_AT_STEP=N`` (tests only): a real SIGTERM to this process at global step N, exercising the
    preemption path at an exact step through the real CLI — injected here, not read in the training loop."""
    at = int(os.environ.get("FASTFT_TEST_SIGTERM_AT_STEP", "-1"))
    if at < 0:
        return None
    return lambda step: step == at and os.kill(os.getpid(), signal.SIGTERM)


def _launch(a):
    """``fastft train --procs N``: the same command under torchrun (N GPUs, or N gloo CPU processes without a GPU);
    Accelerate reads the ranks from torchrun's environment. Multi-node: ``accelerate launch`` / ``torchrun`` directly."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.procs), "--master_port", str(a.port),
           "-m", "fastft", "train"] + ([a.config] if a.config else []) + list(a.overrides)
    env = dict(os.environ)
    if not cuda_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // a.procs)))
    p = subprocess.Popen(cmd, env=env)
    # SIGTERM / SIGUSR1 to this launcher alone (a SLURM task's shell passes its time-limit signal on to it): torchrun
    # gets SIGTERM, which it passes to the ranks, and this process waits while they checkpoint
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda *_: p.poll() is None and p.send_signal(signal.SIGTERM))
    while True:
        try:
            rc = p.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C reached torchrun and the ranks too: they checkpoint and stop; wait for them
            continue
    if rc:
        raise SystemExit(rc)


def cmd_sweep(a):
    from . import study as sw

    total = {"runs": 0, "image_iterations": 0.0, "left": 0.0}
    states: collections.Counter = collections.Counter()
    seen: set = set()
    seen_left: set = set()
    if not a.store and not a.dry_run:
        raise FastFTError("fastft sweep needs --store DIR (the shard store the runs read) to run or to write SLURM jobs; "
                          "only --dry-run works without one (an estimate from ILSVRC2012's class sizes)")
    on_slurm = a.backend == "slurm" and not a.dry_run
    if on_slurm:  # resources checked against the partition before any work; every path absolute (jobs start in --out)
        from .study import slurm

        if a.submit:
            slurm.require_submit()
        cluster = slurm.cluster(a.partition)
        res = slurm.resolve(slurm.Resources(
            partition=a.partition, time=a.time, gpus=a.gpus_per_run, cpus=a.cpus_per_run, mem=a.mem, account=a.account,
            qos=a.qos, constraint=a.constraint, throttle=a.array_throttle, sbatch_lines=tuple(a.sbatch_line),
            setup=tuple(a.setup), signal_lead=a.signal_lead), cluster)
        a.out, a.store = str(Path(a.out).resolve()), str(Path(a.store).resolve())
    plans: list = []      # each plan's prepared runs, run (or submitted) together at the end
    for plan_path in a.plans:
        plan = sw.load_plan(plan_path)
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else None
        runs = sw.expand(plan, seeds)
        out = Path(a.out)
        sw.prepare(plan, runs, a.store, out, progress=not a.quiet)
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
                               progress=not a.quiet)
        for runs in plans:
            name = runs[0].labels["plan"] if runs else "?"
            n = {k: sum(x.startswith(f"{name}/") for x in summary[k]) for k in ("done", "failed", "skipped")}
            shared = len(runs) - sum(r.key.startswith(f"{name}/") for r in merged)
            print(f"plan {name}: {n['done']} done, {n['failed']} failed, {n['skipped']} skipped (dependency failed)" +
                  (f", {shared} shared with plans above" if shared else "") + f"; runs in {a.out}")
        print(f"{len(merged)} runs in {summary['secs']:.0f} s")
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


# the states --dry-run counts, in this order: from run directories and claims, and for a sweep submitted to SLURM
# from its queue (fastft.slurm.queue_states)
STATE_ORDER = ("finished", "running", "pending", "stuck", "failed", "cancelled", "ended", "interrupted", "to run")


def _states(runs, out: Path) -> dict[str, str]:
    """Each run's state for --dry-run: ``state`` or ``state: detail``."""
    from . import study as sw
    from .study import slurm

    queued, note = slurm.queue_states(runs, out) if (out / "slurm").is_dir() else ({}, "")
    if note:
        print(f"  SLURM: {note}; the states of tasks that left the queue come from their run directories")
    return {r.key: (f"{queued[r.key][0]}: {queued[r.key][1]}" if queued.get(r.key, ("", ""))[1] else
                    queued[r.key][0]) if r.key in queued else sw.state(out, r) for r in runs}


def _submit(plans: list, a, res, cluster) -> None:
    """``--backend slurm``: the plans' runs as job arrays, written and (``--submit``) submitted (fastft.slurm)."""
    from .study import slurm

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
    from .report import write_report

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


def _floats(csv: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in csv.split(","))
    except ValueError:
        raise FastFTError(f"expected comma-separated numbers, e.g. 0,0.25,0.5; got {csv!r}") from None


def cmd_bench(a):
    from . import bench

    if a.what == "loader":
        res = bench.bench_loader(a.view, a.batch, a.device, a.seconds, a.threads, a.crop, hw_loads=_floats(a.hw_load),
                                 cpu_shares=_floats(a.cpu_decode), gpu_huffman=a.gpu_huffman)
    elif a.what == "train":
        steps = tuple(a.steps.split(",")) if a.steps else None
        res = bench.bench_train(a.view, a.batch, a.device, a.seconds, steps, a.width, a.crop, a.threads, cache=a.cache,
                                hw_loads=_floats(a.hw_load), cpu_shares=_floats(a.cpu_decode))
    else:
        res = bench.bench_pack(a.view, tuple(int(k) for k in a.runs.split(",")), a.batch, a.seconds, a.steps or "graph",
                               not a.no_cache, _floats(a.hw_load)[0])
    bench.write(res, a.out)
    # On a GPU machine, `bench loader` once printed its result and then hung in interpreter shutdown (DALI pipelines
    # and DataLoader workers torn down together). The result is written: leave without the teardown.
    sys.stdout.flush()
    os._exit(0)


def cmd_analyze(a):
    from . import analysis as an

    if a.what in ("svm", "filters", "probes"):
        groups = an.analysis_targets(a.runs, a.view, a.plan)
        if a.view is None:
            print(f"{sum(len(r) for _, r in groups)} analyses of {len({x for _, r in groups for x in r})} runs on "
                  f"{len(groups)} target views (each run's own, or its fine-tunes')")
        for view, runs in groups:
            if len(groups) > 1:
                print(f"== view {view}")
            if a.what == "svm":
                for run in runs:
                    r = an.svm(run, view, a.device)
                    print(f"{Path(run).name}: linear SVM on fc7: {r['summary']['svm_top1']:.2f}% ({r['test_n']} test images)")
            elif a.what == "filters":
                out = a.out and (Path(a.out) / view.name if len(groups) > 1 else a.out)
                r = an.filters(runs, view, a.device, out=out)
                print(json.dumps({k: r[k] for k in ("mean_sensitivity", "percent_of_classes_a_beats_b")}, indent=1))
                if r.get("figure"):
                    print(f"precision-recall curves: {r['figure']}\nclasses where A beats B (Fig. 9): {r['beats_figure']}")
            else:
                r = an.probes(runs, view, device=a.device, pool=a.pool, memory_gb=a.memory_gb)
                layers = r["layers"]
                print("run".ljust(32) + "".join(l.rjust(8) for l in layers))
                for name, accs in r["accuracy"].items():
                    print(name[:31].ljust(32) + "".join(f"{accs[l]:8.2f}" for l in layers))
    elif a.what == "classviz":
        r = an.class_images(a.runs[0], [int(c) for c in a.classes.split(",")], device=a.device,
                            out=a.out or str(Path(a.runs[0]) / "analysis" / "classviz.png"))
        print(f"class-model images: {r['image']} (class scores {['%.2f' % x for x in r['score_before']]} -> {['%.2f' % x for x in r['score_after']]})")
    elif a.what == "distance":
        if bool(a.source_view) != bool(a.view):
            raise FastFTError("analyze distance takes both --view (the target) and --source-view, or neither (each "
                              "fine-tuned run's source and target, measured in the source model)")
        pairs = [(a.runs[0], a.source_view, a.view)] if a.view else an.distance_targets(a.runs, a.plan)
        for model, sview, tview in pairs:
            r = an.feature_distance(model, sview, tview, a.device)["summary"]
            print(f"{Path(model).name}: {Path(sview).name} -> {Path(tview).name}: feature (fc7 cosine, nearest) "
                  f"{r['feature_cosine_nearest']:.4f}, WordNet {r['wordnet_wup_nearest']:.4f}")


def cmd_demo(a):
    from .demo import demo

    demo(a.out, seeds=a.seeds, parallel=a.parallel)


def _train_keys() -> str:
    """The config keys with defaults and help (fastft.train.config, torch-free)."""
    from .train.config import key_help

    return "config keys (default) — fastft.train.TrainConfig:\n" + "\n".join(
        f"  {k:16s} {d:10s} {h}".rstrip() for k, d, h in key_help())


def add_commands(sub) -> None:
    s = sub.add_parser("train", help="one training run (scratch / finetune / freeze-n) from a YAML config and key=value overrides",
                       description="Train one run of the paper's protocol. Example: fastft train spec=specs/instru-0.json set=near "
                                   "store=shards/imagenet seed=1, or a YAML file of the same keys followed by overrides. "
                                   "Unknown keys are errors. Re-running resumes an interrupted run and skips a finished one. "
                                   "Multi-GPU: `fastft train CONFIG --procs 8` or `accelerate launch -m fastft train CONFIG`.",
                       epilog=_train_keys())
    s.add_argument("config", nargs="?", help="YAML file (optional: everything can be given as key=value)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--procs", type=int, default=0, help="data-parallel processes (GPUs, or CPU processes without a GPU) via accelerate launch")
    s.add_argument("--port", type=int, default=29517, help="rendezvous port for --procs")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("sweep", help="run a study plan (templates x grid x seeds) as a DAG: locally on GPUs/CPU, or as SLURM job arrays",
                       description="Expand plans into runs (source pretrain -> its fine-tunes), skip finished runs, resume interrupted "
                                   "ones, retry failed ones. Example: fastft sweep plans/near-far-instru.yaml --store shards/imagenet --gpus 0,1,2,3")
    s.add_argument("plans", nargs="+", help="plan YAML files (see plans/)")
    s.add_argument("--store", help="the shard store the runs read")
    s.add_argument("--out", default="runs", help="runs directory (specs, views, claims and run directories)")
    s.add_argument("--seeds", help="comma-separated seeds instead of the plan's (e.g. 0 or 0,1)")
    s.add_argument("--gpus", help="GPUs to pack runs onto: all, or indices such as 0,1,2,3 (under CUDA_VISIBLE_DEVICES, "
                                  "indices into it); default: the CPU")
    s.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (on an H200, 2 runs gave 0.90x the throughput of 1: the step is GPU-bound; "
                                                                 "runs sharing a GPU split its cache memory, and the node's runs split host_cache_gb auto)")
    s.add_argument("--parallel", type=int, default=1, help="concurrent runs without GPUs")
    s.add_argument("--retries", type=int, default=1, help="retries of a failed run")
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

    s = sub.add_parser("bench", help="throughput of the loader or of training, with the PyTorch DataLoader baseline in the same run (JSON)")
    s.add_argument("what", choices=["loader", "train", "pack"],
                   help="loader: DALI vs DataLoader images/s; train: step-rate ceilings and end-to-end training; "
                        "pack: aggregate images/s of several concurrent runs on one GPU")
    s.add_argument("view", help="a view directory (fastft subsets resolve)")
    s.add_argument("--batch", type=int, default=256, help="images per batch")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU if there is one")
    s.add_argument("--seconds", type=float, default=10.0, help="measuring time per variant")
    s.add_argument("--threads", type=int, default=0, help="DALI threads / DataLoader workers (0 = all cores)")
    s.add_argument("--crop", type=int, default=227, help="random crop side (227 as in the paper)")
    s.add_argument("--width", type=float, default=1.0, help="train: AlexNet width multiplier")
    s.add_argument("--steps", help="train: step modes whose ceilings to measure, comma-separated; a mode is eager or flags joined "
                                   "by +: compile, graph (CUDA graph), fused (fused SGD), pad4/pad8 (conv1 input channels), e.g. "
                                   "eager,compile+graph+fused (default: eager,graph on a GPU, eager on CPU); the fastest runs "
                                   "end to end. pack: the one mode")
    s.add_argument("--hw-load", default="1.0", help="share(s) of JPEG decoding on the hardware decoder, e.g. 0.65,0.8,1.0 "
                                                     "(loader, train: each is measured; the best is reported)")
    s.add_argument("--cpu-decode", default="0", help="share(s) of each batch DALI decodes on the host cores instead of the GPU, "
                                                     "e.g. 0,0.25,0.4 (loader, train: each × each --hw-load; the best is reported)")
    s.add_argument("--gpu-huffman", action="store_true", help="loader: the JPEGs beyond the hardware decoder's share (--hw-load "
                                                               "below 1) are decoded wholly on the GPU's cores, not partly on the host")
    s.add_argument("--cache", action="store_true", help="train: also measure the decoded-image cache (decode once, crop on the "
                                                        "device): whole view, half on the device, and on GPUs the host tier")
    s.add_argument("--runs", default="1,2", help="pack: numbers of concurrent runs to measure")
    s.add_argument("--no-cache", action="store_true", help="pack: decode every epoch instead of caching decoded images")
    s.add_argument("--out", help="also write the JSON here (e.g. benchmarks/results/<gpu>-<date>.json)")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("analyze", help="the paper's analyses on runs: svm (fc7), filters (conv5 AP), probes (conv1..fc8), classviz, distance",
                       description="Features come from the eval pipeline and are cached per run/view/layer under <run>/analysis/. "
                                   "Results land in <run>/analysis/*.json and in fastft report. A study's Table 3 and Fig. 10: "
                                   "`fastft analyze svm runs --plan near-far-instru`, `fastft analyze probes runs --plan "
                                   "near-far-instru --pool 6`, then `fastft report runs`.")
    s.add_argument("what", choices=["svm", "filters", "probes", "classviz", "distance"],
                   help="svm: linear SVM on fc7 (Table 3); filters: per-filter AP of conv5 (Figs. 8-9); probes: a linear "
                        "classifier on each layer (Fig. 10); classviz: images that maximise class scores; distance: source-"
                        "target feature distance")
    s.add_argument("runs", nargs="+", help="run directories, or a runs directory (its finished runs; see --plan)")
    s.add_argument("--view", help="the (target) view: its train split trains SVM/probes, its val split tests. Default (svm, "
                                  "filters, probes): each run's target view — its own if it trained on a target set, else "
                                  "those of the runs fine-tuned from it — so one call covers every seed of a study")
    s.add_argument("--plan", help="with a runs directory: only this plan's runs (and, for a source model, its fine-tunes)")
    s.add_argument("--source-view", help="distance: the source view")
    s.add_argument("--classes", default="0,1,2,3", help="classviz: comma-separated class indices of the run's model")
    s.add_argument("--pool", type=int, help="probes: max-pool conv maps to NxN before the linear layer (default: the paper's full maps)")
    s.add_argument("--memory-gb", type=float, help="probes: features held in memory at once (default: half the free GPU memory "
                   "or RAM); a layer larger than this is streamed through the network every epoch instead")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: the GPU if there is one")
    s.add_argument("--out", help="filters: directory for filters.json and PR curves; classviz: PNG path")
    s.set_defaults(fn=cmd_analyze)

    s = sub.add_parser("demo", help="the whole flow on a built-in synthetic ImageNet on CPU: synth -> shard -> near/far sweep -> report")
    s.add_argument("--out", default="fastft-demo", help="working directory (created)")
    s.add_argument("--seeds", type=int, default=3, help="seeds of the study (3: the fewest a claim is checked on; 5 as in the paper)")
    s.add_argument("--parallel", type=int, default=2, help="concurrent training runs")
    s.set_defaults(fn=cmd_demo)
