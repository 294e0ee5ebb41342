"""The loader: a view's split → ``(images, labels, weights)`` batches as PyTorch tensors for one rank, on DALI, the
PyTorch fallback or the decoded-image cache. :class:`LoaderConfig` is its typed config; :func:`batch_format` the
fields GPU training asks for. The order comes from :mod:`fastft.loading.order`, the bytes from
:mod:`fastft.loading.samples`; the backends (:mod:`~fastft.loading.dali`, :mod:`~fastft.loading.fallback`,
:mod:`~fastft.loading.cache`) only decode and transform.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import preprocess
from ..data.views import View, open_view
from ..errors import FastFTError
from .cache import DECODE, _CacheBackend
from .dali import _DaliBackend
from .fallback import _TorchBackend
from .order import EpochPlan
from .resources import loader_threads
from .samples import SampleSource


@dataclass
class LoaderConfig:
    batch_size: int = 256          # per rank
    crop: int = 227
    backend: str = "dali"          # dali | pytorch
    device: str = "cpu"            # cpu | cuda
    num_threads: int = 0           # DALI threads / DataLoader workers (0 = usable cores / (ranks × runs) on the node)
    hw_decoder_load: float = 1.0   # share of JPEG decoding on the hardware decoder (A100/H100/H200)
    cpu_decode: float = 0.0        # share of each batch DALI decodes on the host cores instead of the GPU (dali backend)
    gpu_huffman: bool = False      # JPEGs beyond the hardware decoder's share decoded wholly on the GPU's cores (nvJPEG's GPU
                                   # Huffman), not Huffman on the host: for the loader alone, when no training uses the GPU
    prefetch: int = 2
    fp16: bool = False             # emit float16 images (GPU training in bf16/fp16 autocast)
    channels_last: bool = False    # emit NCHW-shaped batches in NHWC memory (what GPU convolutions read; no re-layout)
    augment_to: int = 0            # §4.6: grow each class of the training split to this many images (0 = off)
    cache: bool = False            # decode the split once, keep uint8 images on the device, crop/flip/normalise there
    cache_gb: float = 0.0          # cache budget (0 = 80 % of the GPU's free memory; the whole split on CPU)
    host_cache_gb: float | str = 0.0  # second cache tier in pinned host memory for what the GPU cannot hold ("auto": see host_cache_budget)
    host_gather: str = "staged"    # how host-tier images reach the GPU: staged (CPU gather into pinned buffers + copy stream) |
                                   # gpu (the GPU reads each crop from the mapped pinned memory itself; fastft.kernels.host_gather)
    preprocess: str = preprocess.DEFAULT  # the model's input scale (fastft.preprocess): caffe | imagenet

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return preprocess.mean_std(self.preprocess)


def batch_format(device: str, precision: str) -> dict:
    """The LoaderConfig fields for training batches: on GPUs in bf16, float16 in NHWC memory (the layout channels_last
    convolutions read, so the step starts without a re-layout pass); float32 NCHW otherwise."""
    return {"fp16": device == "cuda" and precision == "bf16", "channels_last": device == "cuda"}


class Loader:
    """Epoch-wise batches of one view split for one rank. ``for x, y, w in loader.epoch(e)``; ``len(loader)`` = steps."""

    def __init__(self, view: View | str | Path, split: str, cfg: LoaderConfig, *, train: bool | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool | None = None):
        """``train`` (default: the train split): random crops and mirrors, and a seeded order per epoch; else centre
        crops in key order. ``shuffle`` overrides the order alone (the probes train on shuffled centre crops)."""
        self.view = view if isinstance(view, View) else open_view(view)
        self.split, self.cfg = split, cfg
        self.train = (split == "train") if train is None else train
        self.src = SampleSource(self.view, split)
        self.image_size = self.view.image_size
        self.fixed_size = self.image_size is not None
        self.view.check_crop(cfg.crop)
        if cfg.augment_to and self.train:
            if not self.fixed_size:
                raise FastFTError("augment_to needs a store with a fixed image size (fastft shard --resize WxH)")
            self.src.augment_to(cfg.augment_to, seed)
        self.plan = EpochPlan(len(self.src), cfg.batch_size, world_size, rank, seed,
                              shuffle=self.train if shuffle is None else shuffle, augment=self.train)
        if cfg.backend not in ("dali", "pytorch"):
            raise FastFTError(f"loader backend must be 'dali' or 'pytorch', got {cfg.backend!r}")
        if not 0.0 <= cfg.cpu_decode <= 1.0:
            raise FastFTError(f"cpu_decode is the share of each batch decoded on the host cores: 0 to 1, got {cfg.cpu_decode}")
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise FastFTError("device 'cuda' requested but no CUDA GPU is visible")
        self.device = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else torch.device("cpu")
        self.threads = threads = loader_threads(cfg.num_threads, world_size)
        if cfg.cache:
            self._impl = _CacheBackend(self, threads)
        else:
            self._impl = (_DaliBackend if cfg.backend == "dali" else _TorchBackend)(self, threads)
        self.position = (0, 0)  # (epoch, next step)

    def __len__(self):
        return self.plan.steps

    @property
    def num_classes(self) -> int:
        return self.view.num_classes

    def state_dict(self) -> dict:
        return {"epoch": self.position[0], "step": self.position[1], "seed": self.plan.seed, "n": self.plan.n}

    def load_state_dict(self, s: dict) -> None:
        if s["n"] != self.plan.n or s["seed"] != self.plan.seed:
            raise FastFTError("loader state is from a different view or seed; cannot resume")
        self.position = (s["epoch"], s["step"])

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices (rows of :attr:`src`) per step of ``epoch``: shape [steps, batch_size]."""
        return self.plan.epoch(epoch)["index"]

    def epoch(self, epoch: int, start_step: int | None = None):
        """Yield ``(images NCHW float, labels int64, weights float)`` for the steps of ``epoch`` from ``start_step``
        (default: the restored position if it is in this epoch, else 0)."""
        if start_step is None:
            start_step = self.position[1] if self.position[0] == epoch else 0
        for step, batch in enumerate(self.batches(self.plan.epoch(epoch), start_step), start_step):
            self.position = (epoch, step + 1)
            yield batch
        self.position = (epoch + 1, 0)

    def batches(self, plan: dict, start_step: int = 0):
        """Yield the batches of an explicit ``plan`` (arrays [steps, batch_size] as :meth:`EpochPlan.epoch` returns:
        ``index`` into :attr:`src`, ``weight``, ``crop_x``, ``crop_y``, ``mirror``) from ``start_step``, without
        moving the loader's position. :meth:`epoch` runs this loader's own plan through it."""
        return self._impl.run(plan, start_step)

    def tiers(self, rows: np.ndarray) -> np.ndarray:
        """The cache tier of samples ``rows`` (0 device, 1 pinned host, 2 decoded each epoch; all 2 without a cache).
        The cache serves each step's samples in this order (stable within a tier): ``argsort(tiers(row), stable)``."""
        tier = getattr(self._impl, "tier", None)
        return np.full(np.shape(rows), DECODE, np.int8) if tier is None else tier[rows]

    def fill_cache(self) -> None:
        """Decode the cache's device and host tiers now rather than at the first batch (a benchmark times this pass
        apart); nothing to do without a cache, or once filled."""
        if isinstance(self._impl, _CacheBackend) and self._impl.images is None:
            self._impl._fill()

    def stats(self) -> dict:
        """What this loader runs on: ``backend`` (dali | pytorch), ``cache`` (bool), ``device``, ``threads``,
        ``samples`` and ``steps``; the cache's ``cache_fraction`` / ``host_cache_fraction`` (shares of the split on
        the device / in pinned host memory; None / 0.0 without a cache), ``cache_filled``, ``cached_images``
        (``{"device": n, "host": n}``, once filled), ``cached_image_shape`` (H, W, 3), ``host_gather`` (how the
        host tier reaches the device: staged | gpu; None without a cache), ``compiled_crop`` (True once
        the compiled crop served a batch, False after it failed, None if not used); the DALI decoding's
        ``decode_batch`` / ``decode_threads`` (``{"main": …, "host": …}``: samples of a full batch and threads of the
        mixed-or-CPU and the host-decoding pipeline; None when DALI decodes nothing); the fallback's ``workers``."""
        out = {"backend": self.cfg.backend, "cache": self.cfg.cache, "device": str(self.device), "threads": self.threads,
               "samples": len(self.src), "steps": len(self), "cache_fraction": None, "host_cache_fraction": 0.0,
               "cache_filled": False, "cached_images": {"device": 0, "host": 0}, "cached_image_shape": None,
               "host_gather": None, "compiled_crop": None, "decode_batch": None, "decode_threads": None, "workers": None}
        return {**out, **self._impl.stats()}
