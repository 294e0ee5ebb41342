"""``fastft bench``: throughput with its baselines in the same run."""
from __future__ import annotations

import os
import sys

from ..errors import FastFTError


def _floats(csv: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in csv.split(","))
    except ValueError:
        raise FastFTError(f"expected comma-separated numbers, e.g. 0,0.25,0.5; got {csv!r}") from None


def cmd_bench(a):
    from .. import bench

    if a.what == "loader":
        res = bench.bench_loader(a.view, a.batch, a.device, a.seconds, a.threads, a.crop, hw_loads=_floats(a.hw_load),
                                 cpu_shares=_floats(a.cpu_decode), gpu_huffman=a.gpu_huffman)
    elif a.what == "train":
        steps = tuple(a.steps.split(",")) if a.steps else None
        bench.check_modes(steps or ())
        res = bench.bench_train(a.view, a.batch, a.device, a.seconds, steps, a.width, a.crop, a.threads, cache=a.cache,
                                hw_loads=_floats(a.hw_load), cpu_shares=_floats(a.cpu_decode), model=a.model)
    else:
        bench.check_modes([a.steps or "graph"])
        res = bench.bench_pack(a.view, tuple(int(k) for k in a.runs.split(",")), a.batch, a.seconds, a.steps or "graph",
                               not a.no_cache, _floats(a.hw_load)[0])
    bench.write(res, a.out)
    # On a GPU machine, `bench loader` once printed its result and then hung in interpreter shutdown (DALI pipelines
    # and DataLoader workers torn down together). The result is written: leave without the teardown.
    sys.stdout.flush()
    os._exit(0)


def add_commands(sub) -> None:
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
    s.add_argument("--model", default="alexnet", help="train: a registered model (fastft.models), given --width and --crop if it takes them")
    s.add_argument("--steps", help="train: step modes whose ceilings to measure, comma-separated; a mode is eager or flags joined "
                                   "by +: compile, graph (CUDA graph), fused (fused SGD), pad4/pad8 (conv1 input channels), and "
                                   "step variants: fused-relu-pool-lrn (fastft.train.variants), e.g. "
                                   "eager,compile+graph+fused,compile+graph+fused+fused-relu-pool-lrn (default: eager,graph on a GPU, eager on CPU); the fastest runs "
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
