"""Whole-study time on one node, from measured throughput: every shipped plan × five seeds (runs shared between plans
counted once), nominal ILSVRC2012 image counts, and each run's measured rate given how much of its training view the
decoded-image cache can hold on the GPU.

Model (fitted to ``fastft bench train`` on the same GPU): a run whose view fits in the cache budget trains at the
cached end-to-end rate A; one that does not keeps a fraction f cached and decodes the rest each epoch, so an image
costs f/A + (1 − f)/B seconds (B: the decode-every-epoch rate). §4.6 runs cache their transformed copies too.

Usage: python benchmarks/study_estimate.py benchmarks/results/train-h200-2026-11-26.json [--gpu-mem-gb 139] [--gpus 8]
"""
import argparse
import json
import tempfile
from pathlib import Path

from fastft import sweep as sw

IMAGE_BYTES = 256 * 256 * 3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_json", help="a `fastft bench train --cache` result")
    p.add_argument("--plans", default=str(Path(__file__).resolve().parent.parent / "plans"))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--gpu-mem-gb", type=float, default=139.0, help="GPU memory; the cache takes 80 %% of it")
    p.add_argument("--gpus", type=int, default=8, help="GPUs in the node")
    p.add_argument("--out")
    a = p.parse_args()
    b = json.loads(Path(a.bench_json).read_text())
    A, B = b["fastft_cached_e2e_img_s"], b["fastft_e2e_img_s"]
    budget = 0.8 * a.gpu_mem_gb * 1e9
    seeds = [int(s) for s in a.seeds.split(",")]
    seen, per_plan = set(), {}
    tot = {"runs": 0, "image_iterations": 0.0, "gpu_secs": 0.0, "gpu_secs_if_decoding": 0.0, "gpu_secs_if_all_cached": 0.0}
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
                iters = r.images_per_epoch * int(r.overrides.get("epochs", 100))
                f = min(1.0, budget / (r.images_per_epoch * IMAGE_BYTES))
                secs = iters * (f / A + (1 - f) / B)
                row["runs"] += 1
                row["image_iterations"] += iters
                row["gpu_secs"] += secs
                tot["gpu_secs_if_decoding"] += iters / B
                tot["gpu_secs_if_all_cached"] += iters / A
            per_plan[plan["name"]] = {"runs": row["runs"], "G_image_iterations": round(row["image_iterations"] / 1e9, 3),
                                      "gpu_hours": round(row["gpu_secs"] / 3600, 1)}
            for k in ("runs", "image_iterations", "gpu_secs"):
                tot[k] += row[k]
    h = tot["gpu_secs"] / 3600
    res = {"bench": "study_estimate", "from": a.bench_json, "gpu": b.get("gpu"), "cached_img_s": A, "decoding_img_s": B,
           "gpu_mem_gb": a.gpu_mem_gb, "seeds": seeds, "runs": tot["runs"], "G_image_iterations": round(tot["image_iterations"] / 1e9, 2),
           "gpu_hours": round(h, 1), f"wall_hours_on_{a.gpus}_gpus": round(h / a.gpus, 1),
           "gpu_hours_if_every_run_decoded": round(tot["gpu_secs_if_decoding"] / 3600, 1),
           "gpu_hours_if_every_run_fit_the_cache": round(tot["gpu_secs_if_all_cached"] / 3600, 1),
           "runs_per_gpu": 1, "per_plan": per_plan,
           "assumes": "one run per GPU (bench pack: 2 runs on one H200 gave 0.90x the aggregate of 1), runs spread evenly "
                      "over the node's GPUs, evaluation and checkpoint time not counted"}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
