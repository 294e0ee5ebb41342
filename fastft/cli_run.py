"""CLI commands that run things: ``train``, ``sweep``, ``report``, ``bench``, ``demo``, ``analyze``.

This is where the pieces are wired: the trainer gets its loaders from :mod:`fastft.pipelines` here, so neither
imports the other.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import FastFTError


def loader_factory(backend: str, device: str, crop: int, num_threads: int = 0):
    """A ``loader_factory`` for :func:`fastft.trainer.train` backed by :class:`fastft.pipelines.Loader`."""
    from .pipelines import Loader, LoaderConfig

    def make(view, split, batch_size, rank, world, seed, train):
        dev = device if device != "auto" else ("cuda" if _cuda() else "cpu")
        cfg = LoaderConfig(batch_size=batch_size, crop=crop, backend=backend, device=dev, num_threads=num_threads,
                           fp16=False)
        return Loader(view, split, cfg, train=train, rank=rank, world_size=world, seed=seed)
    return make


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def view_for(cfg, existing_only: bool = False) -> Path:
    """Resolve ``spec`` + ``set`` + ``store`` into ``<out>/views/<spec hash>-<set>`` (once; reused by every run)."""
    from .store import open_store, resolve
    from .subsets import load_spec

    spec = load_spec(cfg.spec)
    st = open_store(cfg.store)
    path = Path(cfg.out) / "views" / f"{spec.hash[:12]}-{cfg.set}-{st.sha256[:8]}"
    if existing_only or (path / "view.json").exists():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    resolve(spec, cfg.set, cfg.store, tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process resolved it first
        shutil.rmtree(tmp, ignore_errors=True)
    # the view records its own path nowhere; only the store path, so a rename is safe
    return path


def cmd_train(a):
    from . import config
    from .trainer import TrainConfig, train

    if a.config and "=" in a.config and not Path(a.config).exists():  # only key=value overrides were given
        a.overrides, a.config = [a.config, *a.overrides], None
    cfg = config.load(TrainConfig, a.config, a.overrides)
    cfg.validate()
    if a.procs and a.procs > 1 and "RANK" not in os.environ and "ACCELERATE_PROCESS_INDEX" not in os.environ:
        return _launch(a)
    final = train(cfg, loader_factory(cfg.backend, cfg.device, cfg.crop, cfg.num_threads), view_for)
    if int(os.environ.get("RANK", "0")):
        return
    top1 = final.get("top1")
    print(f"run {final['name']}: top-1 {top1:.2f}%  top-5 {final.get('top5', float('nan')):.2f}%  ({final['epochs']} epochs)" if top1 is not None
          else f"run {final['name']} finished")


def _launch(a):
    """``fastft train --procs N``: the same command under torchrun (N GPUs, or N gloo CPU processes without a GPU);
    Accelerate reads the ranks from torchrun's environment. Multi-node: ``accelerate launch`` / ``torchrun`` directly."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(a.procs), "--master_port", str(a.port),
           "-m", "fastft", "train"] + ([a.config] if a.config else []) + list(a.overrides)
    env = dict(os.environ)
    if not _cuda():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.procs)))
    r = subprocess.run(cmd, env=env)
    if r.returncode:
        raise SystemExit(r.returncode)


def add_commands(sub) -> None:
    s = sub.add_parser("train", help="one training run (scratch / finetune / freeze-n) from a YAML config and key=value overrides",
                       description="Train one run of the paper's protocol. Example: fastft train configs/demo.yaml epochs=5 seed=1. "
                                   "Keys: see fastft.trainer.TrainConfig (unknown keys are errors). Re-running resumes an interrupted run "
                                   "and skips a finished one. Multi-GPU: `fastft train CONFIG --procs 8` or `accelerate launch -m fastft train CONFIG`.")
    s.add_argument("config", nargs="?", help="YAML file (optional: everything can be given as key=value)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--procs", type=int, default=0, help="data-parallel processes (GPUs, or CPU processes without a GPU) via accelerate launch")
    s.add_argument("--port", type=int, default=29517, help="rendezvous port for --procs")
    s.set_defaults(fn=cmd_train)
