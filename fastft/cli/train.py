"""``fastft train``: one run. This is where the pieces are wired: the trainer gets its loaders from
:mod:`fastft.loading` here, so neither imports the other."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import FastFTError
from ..util.device import cuda_available
from ..util.env import usable_cores


def loader_factory(cfg):
    """A ``loader_factory`` for :func:`fastft.trainer.train` backed by :class:`fastft.loading.Loader`, from a
    :class:`~fastft.trainer.TrainConfig`. ``cache="auto"`` caches decoded training images on GPUs when the store has
    a fixed image size (the cache then holds what fits, on the device and in the host tier; see
    :mod:`fastft.loading.cache`). GPU batches come as float16 in NHWC memory when training in bf16."""
    from ..loading import Loader, LoaderConfig, batch_format
    from ..data.views import open_view
    from ..train.config import resolve_device

    dev, precision = resolve_device(cfg)

    def make(view, split, batch_size, rank, world, seed, train):
        use_cache = cfg.cache is True
        if cfg.cache == "auto" and train and dev == "cuda":
            use_cache = open_view(view).image_size is not None
        lc = LoaderConfig(batch_size=batch_size, crop=cfg.crop, backend=cfg.backend, device=dev, num_threads=cfg.num_threads,
                          hw_decoder_load=cfg.hw_decoder_load, cpu_decode=cfg.cpu_decode if dev == "cuda" else 0.0,
                          augment_to=cfg.augment_to, cache=use_cache and train, cache_gb=cfg.cache_gb,
                          host_cache_gb=cfg.host_cache_gb if dev == "cuda" else 0.0, host_gather=cfg.host_gather, preprocess=cfg.preprocess,
                          **(batch_format(dev, precision) if cfg.channels_last else {}))
        return Loader(view, split, lc, train=train, rank=rank, world_size=world, seed=seed)
    return make


def cmd_train(a):
    from .. import config
    from ..train import TrainConfig, train

    if a.config and "=" in a.config and not Path(a.config).exists():  # only key=value overrides were given
        a.overrides, a.config = [a.config, *a.overrides], None
    cfg = config.load(TrainConfig, a.config, a.overrides)
    cfg.validate()
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "WORLD_SIZE" not in os.environ:
        # Accelerate's CPU launcher starts one process whatever --num_processes says, and tells the process nothing
        raise FastFTError("`accelerate launch --cpu` starts one process, whatever --num_processes asks; for N CPU "
                          "processes use `fastft train … --procs N` (torchrun with gloo), for one plain `fastft train …`")
    if "RANK" not in os.environ:  # the top process of a run a sweep started (a --procs launcher passes its SIGTERM to
        from ..util import env  # the ranks): it stops, checkpointed, if the sweep dies
        from ..util.children import stop_when_gone

        stop_when_gone(os.environ.get(env.SUPERVISOR), say=lambda m: print(m, flush=True))
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


def _train_keys() -> str:
    """The config keys with defaults and help (fastft.train.config, torch-free)."""
    from ..train.config import key_help

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
    s.add_argument("--procs", type=int, default=0, help="data-parallel processes (GPUs, or CPU processes without a GPU), started with torchrun")
    s.add_argument("--port", type=int, default=29517, help="rendezvous port for --procs")
    s.set_defaults(fn=cmd_train)
