"""The figures issue 28 asks of a ``fastft bench train --cache`` JSON (``benchmarks/results/train-<gpu>-<date>.json``),
each against its target, with the miss where one is missed: the step ceiling (≥ 40,000 img/s), each step variant
against the same mode without it (≥ 1.25×), and the device tier, the host tier and half device / half host against
the ceiling measured in the same run (≥ 0.95), the host tier both staged and read by the GPU (``host_gather``).

Usage: python benchmarks/train_keys.py benchmarks/results/train-h200-<date>.json  (prints one JSON line)
"""
import json
import sys

TARGETS = {"synthetic_ceiling_img_s": 40_000, "fastft_cached_vs_ceiling": 0.95, "fastft_host_cached_vs_ceiling": 0.95,
           "fastft_half_device_half_host_vs_ceiling": 0.95, "fastft_host_cached_gpu_gather_vs_ceiling": 0.95,
           "fastft_half_device_half_host_gpu_gather_vs_ceiling": 0.95}
VARIANT_TARGET = 1.25


def check(res: dict) -> dict:
    out = {"step": res.get("step"), "gpu": res.get("gpu")}
    for k, target in TARGETS.items():
        v = res.get(k)
        out[k] = {"value": v, "target": target, "met": v >= target if isinstance(v, (int, float)) else None,
                  "short_by": round(target - v, 3) if isinstance(v, (int, float)) and v < target else None}
    for mode, r in (res.get("variant_vs_baseline") or {}).items():
        out[f"variant:{mode}"] = {"value": r, "target": VARIANT_TARGET, "met": r >= VARIANT_TARGET}
    errors = {m: v for m, v in (res.get("ceiling_img_s") or {}).items() if isinstance(v, str)}
    if errors:
        out["step_errors"] = errors
    return out


if __name__ == "__main__":
    print(json.dumps(check(json.load(open(sys.argv[1])))))
