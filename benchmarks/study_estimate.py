"""Whole-study time on one node, from measured throughput: every shipped plan × five seeds (runs shared between plans
counted once), nominal ILSVRC2012 image counts, and each run's measured rate given how much of its training view the
decoded-image cache holds on the GPU and in pinned host memory.

Model (rates from one ``fastft bench train --cache`` on the same GPU): a run first decodes its cached images once
(the fill, at F img/s), then every image of every epoch costs f_d/A + f_h/H + f_x/B seconds, where f_d, f_h, f_x are
the fractions of its view on the device, in the host tier and decoded each epoch, and A, H, B the measured rates
of each alone. Measured mixtures came out 3–6 % below this linear model (half device/half host, half device/half
decoded), so the script also reports the total with the worst of those corrections applied to every mixed run.
§4.6 runs cache their transformed copies too.

With ``--costs-from RUNS`` (finished runs measured on the same GPU, e.g. a ``fastft sweep`` of a scaled plan), each
run also pays the fixed costs its ``final.json`` records (``costs``: start-up, view check, build, loaders, first
batch and step, CUDA-graph capture, the end), the median over those runs, and evaluation and checkpoint per epoch
(their median per epoch). Without it those are not counted, and the output says so.

Usage: python benchmarks/study_estimate.py benchmarks/results/train-h200-2026-11-26b.json [--gpu-mem-gb 141]
       [--host-mem-gb 2048] [--gpus 8] [--fill-img-s F] [--costs-from RUNS]
"""
import argparse
import json
import statistics
import tempfile
from pathlib import Path

from fastft import study as sw
from fastft.runs import read_final

FIXED = ("startup", "accelerator", "open_view", "build", "loaders", "first_batch", "first_step", "capture", "finish")
PER_EPOCH = ("eval", "checkpoint")


def measured_costs(runs_dir: str) -> dict:
    """Median fixed seconds per run and eval + checkpoint seconds per epoch, over the finished runs in ``runs_dir``."""
    fixed, per_epoch = [], []
    for f in sorted(Path(runs_dir).rglob("final.json")):
        d = read_final(f.parent) or {}
        c, epochs = d.get("costs") or {}, d.get("epochs") or 0
        if "sum_step_s" not in c or not epochs:
            continue
        fixed.append(sum(c.get(k) or 0.0 for k in FIXED))
        per_epoch.append(sum(c.get(k) or 0.0 for k in PER_EPOCH) / epochs)
    if not fixed:
        raise SystemExit(f"--costs-from {runs_dir}: no finished runs with recorded costs (final.json costs) there")
    return {"runs": len(fixed), "fixed_s_per_run": round(statistics.median(fixed), 2),
            "eval_checkpoint_s_per_epoch": round(statistics.median(per_epoch), 3), "from": str(runs_dir)}

IMAGE_BYTES = 256 * 256 * 3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_json", help="a `fastft bench train --cache` result from a GPU")
    p.add_argument("--plans", default=str(Path(__file__).resolve().parent.parent / "plans"))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--gpu-mem-gb", type=float, default=141.0, help="memory of one GPU; the cache takes 80 %% of it")
    p.add_argument("--host-mem-gb", type=float, default=2048.0, help="the node's RAM; host_cache_gb auto gives each run "
                                                                     "half of it divided by the runs on the node")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the node (one run per GPU)")
    p.add_argument("--fill-img-s", type=float, help="the cache fill's decode rate (default: the bench's cache_fill_img_s)")
    p.add_argument("--costs-from", metavar="RUNS", help="finished runs measured on the same GPU: add their median fixed "
                                                          "costs per run and eval + checkpoint per epoch")
    p.add_argument("--out")
    a = p.parse_args()
    costs = measured_costs(a.costs_from) if a.costs_from else None
    b = json.loads(Path(a.bench_json).read_text())
    if a.fill_img_s:
        b["cache_fill_img_s"] = a.fill_img_s
    need = ["fastft_cached_e2e_img_s", "fastft_host_cached_e2e_img_s", "fastft_e2e_img_s", "cache_fill_img_s",
            "fastft_half_device_half_host_e2e_img_s", "fastft_half_cached_e2e_img_s"]
    if missing := [k for k in need if not b.get(k)]:
        p.error(f"{a.bench_json} lacks {', '.join(missing)}: it must come from `fastft bench train --cache` "
                "(files before 2026-11-26b have no host tier; an old file's fill rate can be given with --fill-img-s)")
    A, H, B = b["fastft_cached_e2e_img_s"], b["fastft_host_cached_e2e_img_s"], b["fastft_e2e_img_s"]
    F = b["cache_fill_img_s"]
    lin = lambda fd, fh: 1 / (fd / A + fh / H + (1 - fd - fh) / B)  # noqa: E731
    worst = min(b["fastft_half_device_half_host_e2e_img_s"] / lin(0.5, 0.5), b["fastft_half_cached_e2e_img_s"] / lin(0.5, 0))
    dev_budget, host_budget = 0.8 * a.gpu_mem_gb * 1e9, 0.5 * a.host_mem_gb * 1e9 / a.gpus
    seeds = [int(s) for s in a.seeds.split(",")]
    seen, per_plan = set(), {}
    tot = {"runs": 0, "image_iterations": 0.0, "gpu_secs": 0.0, "gpu_secs_mix_corrected": 0.0, "gpu_secs_if_decoding": 0.0,
           "gpu_secs_device_cache_only": 0.0, "fill_secs": 0.0, "runs_fully_cached": 0, "overhead_secs": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for plan_path in sorted(Path(a.plans).glob("*.yaml")):
            plan = sw.load_plan(plan_path)
            runs = sw.expand(plan, seeds)
            sw.prepare(plan, runs, None, Path(tmp) / plan["name"])
            row = {"runs": 0, "image_iterations": 0.0, "gpu_secs": 0.0}
            for r in runs:
                if r.pseudo_id in seen:
                    continue
                seen.add(r.pseudo_id)
                n = r.images_per_epoch
                epochs = int(r.overrides.get("epochs", 100))
                iters = n * epochs
                overhead = costs["fixed_s_per_run"] + epochs * costs["eval_checkpoint_s_per_epoch"] if costs else 0.0
                fd = min(1.0, dev_budget / (n * IMAGE_BYTES))
                fh = min(1.0 - fd, host_budget / (n * IMAGE_BYTES))
                fill = n * (fd + fh) / F
                rate = lin(fd, fh)
                secs = fill + iters / rate + overhead
                row["runs"] += 1
                row["image_iterations"] += iters
                row["gpu_secs"] += secs
                tot["fill_secs"] += fill
                tot["runs_fully_cached"] += fd + fh >= 1.0
                tot["overhead_secs"] += overhead
                tot["gpu_secs_mix_corrected"] += fill + iters / (rate * (worst if 0 < fd < 1 else 1.0)) + overhead
                tot["gpu_secs_if_decoding"] += iters / B
                tot["gpu_secs_device_cache_only"] += n * fd / F + iters / lin(fd, 0)
            per_plan[plan["name"]] = {"runs": row["runs"], "G_image_iterations": round(row["image_iterations"] / 1e9, 3),
                                      "gpu_hours": round(row["gpu_secs"] / 3600, 1)}
            for k in ("runs", "image_iterations", "gpu_secs"):
                tot[k] += row[k]
    hours = lambda secs: round(secs / 3600, 1)  # noqa: E731
    res = {"bench": "study_estimate", "from": a.bench_json, "gpu": b.get("gpu"),
           "rates_img_s": {"device_cache": A, "host_cache": H, "decoding": B, "fill": round(F, 1)},
           "gpu_mem_gb": a.gpu_mem_gb, "host_mem_gb_per_node": a.host_mem_gb, "cache_gb_per_run": {"device": round(dev_budget / 1e9, 1),
                                                                                                 "host": round(host_budget / 1e9, 1)},
           "seeds": seeds, "runs": tot["runs"], "runs_fully_cached": int(tot["runs_fully_cached"]),
           "G_image_iterations": round(tot["image_iterations"] / 1e9, 2),
           "gpu_hours": hours(tot["gpu_secs"]), f"wall_hours_on_{a.gpus}_gpus": round(tot["gpu_secs"] / 3600 / a.gpus, 2),
           "gpu_hours_with_mixture_correction": hours(tot["gpu_secs_mix_corrected"]),
           f"wall_hours_on_{a.gpus}_gpus_with_mixture_correction": round(tot["gpu_secs_mix_corrected"] / 3600 / a.gpus, 2),
           "mixture_correction": round(worst, 3), "fill_gpu_hours": hours(tot["fill_secs"]),
           "gpu_hours_without_host_tier": hours(tot["gpu_secs_device_cache_only"]),
           "gpu_hours_if_every_run_decoded": hours(tot["gpu_secs_if_decoding"]),
           "runs_per_gpu": 1, "per_plan": per_plan, "measured_costs": costs,
           "fixed_and_eval_gpu_hours": hours(tot["overhead_secs"]),
           "assumes": "one run per GPU (bench pack: 2 runs on one H200 gave 0.90x the aggregate of 1), runs spread evenly over "
                      "the node's GPUs, host_cache_gb auto on a node with --host-mem-gb of RAM, " +
                      ("each run's fixed costs and eval + checkpoint per epoch as measured in --costs-from" if costs else
                       "fixed costs per run (start-up, build, compile, capture) and evaluation and checkpoint time not "
                       "counted (give --costs-from)")}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
