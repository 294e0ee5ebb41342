"""Where a training step's GPU time goes: the top CUDA kernels of the paper's AlexNet step (batch 256, bf16,
channels_last) under torch.profiler, for the eager and the compiled step. Prints a table per mode.

Usage: python benchmarks/profile_step.py [--modes eager,compile+fused+pad8] [--steps 10] (modes as `fastft bench train --steps`)
"""
import argparse

import torch

from fastft.bench import _make_step, synthetic_batch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    torch.backends.cudnn.benchmark = True
    x = synthetic_batch(a.batch, 227, "cuda", "bf16")
    y = torch.randint(0, 100, (a.batch,), device="cuda")
    for mode in a.modes.split(","):
        step = _make_step(mode, 100, "cuda", "bf16", 1.0, 227)
        for _ in range(8):
            step(x, y)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(a.steps):
                step(x, y)
            torch.cuda.synchronize()
        ev = prof.key_averages()
        kernels = [e for e in ev if e.device_type == torch.autograd.DeviceType.CUDA]  # kernel rows, not the operators above them
        gpu_us = sum(e.self_device_time_total for e in kernels) / a.steps
        cpu_us = sum(e.self_cpu_time_total for e in ev) / a.steps
        print(f"## {mode}: GPU kernel time {gpu_us / 1e3:.2f} ms/step ({a.batch / gpu_us * 1e6:,.0f} img/s if kernels ran back to back), "
              f"CPU time {cpu_us / 1e3:.2f} ms/step")
        print(ev.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=70))


if __name__ == "__main__":
    main()
