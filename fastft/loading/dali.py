"""The DALI backend: the one augmentation graph (:func:`_dali_graph`) on DALI's ``mixed`` decoder (GPU, hardware
decoder) or its CPU backend, fed the plan's samples and draws through an external source, and the optional second
pipeline that decodes a share of each batch on the host cores (``cpu_decode``).

The graph is the paper's: random crop (227 of 256) + random mirror for training, centre crop for evaluation and
feature extraction, then the run's per-channel preprocessing (:mod:`fastft.preprocess`: by default the paper's Caffe
scale, mean-subtracted 0–255 pixels), the same in every backend and cache tier (:mod:`fastft.loading.augment` holds
its torch/PIL twin).
"""
from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import FastFTError
from .samples import SampleSource

if TYPE_CHECKING:
    from .loader import Loader

# DALI settings, measured by benchmarks/loader_probe.py: the loader alone against DALI's own C++ reader in the same run
# (the rate of the hardware decoder). With 8 threads the loader reaches the reader's rate, with 16 it falls short; not
# copying the feed is at least as fast as copying it, with the GPU tests passing (on since); the dynamic executor runs
# at the classic one's rate ("static"). Figures: benchmarks/results/loader-probe-h200-2026-11-26d.json, and on another
# machine benchmarks/results/loader-probe-h200-2026-11-27b.json.
EXEC_DYNAMIC = True   # DALI's dynamic executor (the classic one: same rate)
FEED_NO_COPY = True   # DALI reads the JPEG bytes in the store's memory maps without a copy (_DaliPipe.alive holds them)
MIXED_THREADS = 8     # at most this many CPU threads for a GPU-decoding pipeline (more contend for the cores)


def _dali_graph(jpegs, cx, cy, mirror, *, device: str, crop: int, fixed_size: bool, hw_decoder_load: float, fp16: bool,
                mean_std: tuple, channels_last: bool = False, aug=None, image_size=None, host_decode: bool = False,
                gpu_huffman: bool = False):
    """The one augmentation graph: decode → (§4.6 transforms of augmented copies) → (resize shorter side if the store
    is not fixed-size) → crop/mirror/normalise. Training feeds random crop positions and mirror flags; evaluation
    feeds 0.5, 0.5, 0. ``host_decode`` on a GPU: decode on the host cores, then the same graph on the GPU."""
    from nvidia.dali import fn, types

    img = _dali_decode(jpegs, device, hw_decoder_load, aug, image_size, host_decode=host_decode, gpu_huffman=gpu_huffman)
    if not fixed_size:
        img = fn.resize(img, resize_shorter=round(crop * 256 / 227))
    mean, std = mean_std
    return fn.crop_mirror_normalize(img, crop=(crop, crop), crop_pos_x=cx, crop_pos_y=cy, mirror=mirror, out_of_bounds_policy="pad",
                                    mean=list(mean), std=list(std), dtype=types.FLOAT16 if fp16 else types.FLOAT,
                                    output_layout="HWC" if channels_last else "CHW")


def _dali_decode(jpegs, device: str, hw_decoder_load: float, aug=None, image_size=None, host_decode: bool = False,
                 gpu_huffman: bool = False):
    """JPEG → RGB uint8 (``mixed`` decoder on a GPU), then the §4.6 transforms of augmented copies (see
    :meth:`SampleSource.augment_to`; originals pass with identity values). Shared by training and the cache fill.

    ``host_decode`` on a GPU: libjpeg-turbo on the host cores, and the whole decoded image moves to the GPU (DALI's
    pinned copy, inside the prefetched pipeline) before anything else. Cropping on the host first would cost markedly
    more host CPU per image (DALI's CPU crop, measured by ``benchmarks/host_decode.py``:
    ``benchmarks/results/host-decode-cpu2-2026-11-26.json``) to copy ~20 % fewer bytes.

    EXIF orientation is not applied, as PIL (the shard tool, the fallback) and torchvision's ImageFolder do not: a
    ``--resize none`` store keeps the original JPEG bytes, tags included, and both backends must see the same pixels."""
    from nvidia.dali import fn, types

    if device == "cuda" and not host_decode:
        img = fn.decoders.image(jpegs, device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load,
                                adjust_orientation=False, **({"hybrid_huffman_threshold": 0} if gpu_huffman else {}))
    else:
        img = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB, adjust_orientation=False)
        if device == "cuda":
            img = img.gpu()
    if not aug:
        return img
    scale, angle, bright, contrast, sat, u, v = aug
    w, h = image_size
    img = fn.rotate(img, angle=angle, keep_size=True, fill_value=0)
    img = fn.crop(img, crop_w=scale * w, crop_h=scale * h, crop_pos_x=u, crop_pos_y=v)
    img = fn.resize(img, resize_x=w, resize_y=h)
    return fn.color_twist(img, brightness=bright, contrast=contrast, saturation=sat)


def _require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise FastFTError("NVIDIA DALI is not installed: `pip install nvidia-dali-cuda130` (Linux), or use backend: pytorch") from None


class _DaliPipe:
    """The one DALI pipeline builder: externally fed batches of ``(index, crop_x, crop_y, mirror)`` through the whole
    :func:`_dali_graph` (decoded, cropped, mirrored, normalised), or with ``decode_only`` through its decode step alone
    (feed ``(index,)``; uint8 HWC images at the store's size, as the decoded-image cache fills its tiers).
    ``host_decode``: decode on the host cores, the rest of the graph on the GPU (``cpu_decode``'s pipeline)."""

    def __init__(self, loader: Loader, batch: int, threads: int, host_decode: bool = False, decode_only: bool = False):
        from nvidia.dali import fn, pipeline_def, types

        self.src, cfg = loader.src, loader.cfg
        self.decode_only = decode_only
        self.feed: list = []
        self.alive = collections.deque(maxlen=cfg.prefetch + 2)  # batches DALI may still read (FEED_NO_COPY)
        n_aug = len(SampleSource.AUG) if self.src.aug is not None else 0
        n_draws = 0 if decode_only else 3
        if cfg.device == "cuda" and not host_decode:  # a GPU-decoding pipeline: more threads contend for the cores
            threads = min(threads, MIXED_THREADS)

        @pipeline_def(batch_size=batch, num_threads=threads, device_id=loader.device.index if cfg.device == "cuda" else None,
                      seed=loader.plan.seed, prefetch_queue_depth=cfg.prefetch, exec_dynamic=EXEC_DYNAMIC)
        def pipe():
            jpegs, *rest = fn.external_source(
                source=self._source, num_outputs=1 + n_draws + n_aug, batch=True, no_copy=FEED_NO_COPY,
                dtype=[types.UINT8] + [types.FLOAT, types.FLOAT, types.INT32][:n_draws] + [types.FLOAT] * n_aug)
            draws, aug = rest[:n_draws], rest[n_draws:] or None
            if decode_only:
                return _dali_decode(jpegs, cfg.device, cfg.hw_decoder_load, aug, loader.image_size, gpu_huffman=cfg.gpu_huffman)
            return _dali_graph(jpegs, *draws, device=cfg.device, crop=cfg.crop, fixed_size=loader.fixed_size,
                               hw_decoder_load=cfg.hw_decoder_load, fp16=cfg.fp16, mean_std=cfg.mean_std,
                               channels_last=cfg.channels_last, aug=aug, image_size=loader.image_size,
                               host_decode=host_decode, gpu_huffman=cfg.gpu_huffman)

        self.pipe = pipe()
        self.pipe.build()

    def _source(self, iteration: int):
        if iteration >= len(self.feed):
            raise StopIteration
        idx, *draws = self.feed[iteration]
        out = (self.src.jpegs(idx),)
        if not self.decode_only:
            cx, cy, mirror = draws
            out += (cx, cy, mirror.astype(np.int32))
        if self.src.aug is not None:
            out += tuple(self.src.aug[k][idx] for k in SampleSource.AUG)
        self.alive.append(out)
        return out

    def outputs(self, feed: list):
        """The pipeline's output (a DALI TensorList) for each entry of ``feed``, in order; DALI prefetches ahead."""
        self.feed = feed
        self.pipe.reset()
        for _ in feed:
            (out,) = self.pipe.run()
            yield out.as_tensor()
        try:  # drain: the source raises StopIteration once the prefetched batches are out
            self.pipe.run()
        except StopIteration:
            pass


class _DaliBackend:
    """DALI decoding: ``mixed`` (GPU, hardware decoder) on a GPU, DALI's CPU backend otherwise.

    With ``cpu_decode`` = f > 0 a second pipeline takes the last ⌈f·B⌉ samples of every batch: it decodes them on
    the host cores (libjpeg-turbo) and hands the decoded images to the GPU for the same crop, mirror and
    normalisation (see :func:`_dali_decode`). The hardware decoder then serves only the rest of each batch. Same
    samples, crops and flags, in the plan's order."""

    def __init__(self, loader: Loader, threads: int):
        _require_dali()
        self.L, cfg = loader, loader.cfg
        B = cfg.batch_size
        self.kc = min(B, math.ceil(cfg.cpu_decode * B)) if cfg.cpu_decode > 0 else 0  # host-decoded per full batch
        self.kg = B - self.kc
        mixed = max(1, threads // 4) if self.kc else threads  # both pipelines: a quarter of the threads drive the GPU decoder
        host = threads if not self.kg else max(1, threads - mixed)
        self.main = _DaliPipe(loader, self.kg, mixed) if self.kg else None
        self.host = _DaliPipe(loader, self.kc, host, host_decode=True) if self.kc else None
        self.dev = loader.device

    def stats(self) -> dict:
        """Samples of a full batch each pipeline decodes (``main``: the mixed decoder on a GPU, DALI's CPU backend
        otherwise; ``host``: the ``cpu_decode`` share), and each pipeline's threads (0: no such pipeline)."""
        return {"decode_batch": {"main": self.kg, "host": self.kc},
                "decode_threads": {k: p.pipe.num_threads if p else 0 for k, p in (("main", self.main), ("host", self.host))}}

    def _host_count(self, n: int) -> int:
        """Samples of an n-sample batch for the host pipeline: its share, within both pipelines' batch sizes."""
        return min(self.kc, max(n - self.kg, round(self.kc * n / (self.kc + self.kg))))

    def decode(self, feed: list):
        """Decoded, augmented images for each ``(index, crop_x, crop_y, mirror)`` of ``feed`` (any batch size up to
        the pipeline's), in order, as device tensors."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        cfg, dev = self.L.cfg, self.dev
        dtype = torch.float16 if cfg.fp16 else torch.float32
        stream = torch.cuda.current_stream(dev) if dev.type == "cuda" else None
        split = [len(f[0]) - self._host_count(len(f[0])) for f in feed]
        main = self.main.outputs([tuple(a[:g] for a in f) for f, g in zip(feed, split) if g]) if self.main else iter(())
        host = self.host.outputs([tuple(a[g:] for a in f) for f, g in zip(feed, split) if g < len(f[0])]) if self.host else iter(())
        c = cfg.crop
        for f, g in zip(feed, split):
            n = len(f[0])  # DALI writes HWC when channels_last (an NCHW view in NHWC memory), else CHW
            x = torch.empty((n, c, c, 3) if cfg.channels_last else (n, 3, c, c), dtype=dtype, device=dev)
            if g:
                feed_ndarray(next(main), x[:g], cuda_stream=stream)
            if g < n:
                feed_ndarray(next(host), x[g:], cuda_stream=stream)
            yield x.permute(0, 3, 1, 2) if cfg.channels_last else x
        for rest in (main, host):  # run the generators' drains
            next(rest, None)

    def run(self, plan: dict, start: int):
        labels, weights = self.L.src.targets(plan, self.dev)
        steps = range(start, len(plan["index"]))
        feed = [(plan["index"][s], plan["crop_x"][s], plan["crop_y"][s], plan["mirror"][s]) for s in steps]
        for s, x in zip(steps, self.decode(feed)):
            yield x, labels[s], weights[s]
