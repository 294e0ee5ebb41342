"""Input pipelines: a view's samples → ``(images, labels, weights)`` batches as PyTorch tensors, on DALI or PyTorch.

Order and augmentation draws are decided here, in Python, by :class:`EpochPlan`; the backends only decode and
transform. That one decision gives the properties the trainer relies on, identically on both backends:

* **Exact epochs across ranks.** Each epoch is a seeded permutation of the view (train) or its sorted order (eval).
  With B = per-rank batch × world size, an epoch has S = ceil(N / B) steps; the last step is *padded* with the first
  S·B − N samples of the **next epoch's order** (train) or with repeats marked ``weight = 0`` (eval). Every sample is
  used once per epoch, at most B − 1 extra samples per epoch, every rank runs S steps with full batches (no empty or
  padding-only batch, no collective hang), and evaluation counts each sample exactly once (weights).
* **Resumable mid-epoch.** A loader's position is ``(epoch, step)``; restoring it replays the same remaining batches,
  augmentation included (crop positions and mirror flags are drawn by the plan from ``(seed, epoch)``, not by the
  backend's RNG). This is what DALI's pipeline checkpointing would give, without depending on the reader's state.
* **Independent of the number of ranks.** Draws are made for the global batch and sliced per rank, so 1 × 256 and
  2 × 128 see the same (sample, crop, flip) per step.

The augmentation graph (:func:`_dali_graph`, and :func:`_torch_augment` for the fallback) is the paper's: random
crop (227 of 256) + random mirror for training, centre crop for evaluation and feature extraction, then the run's
per-channel preprocessing (:mod:`fastft.preprocess`: by default the paper's Caffe scale, mean-subtracted 0–255
pixels), the same in every backend and cache tier. JPEG bytes are read straight from the store's tars (memory-mapped) at the offsets of the view.
"""
from __future__ import annotations

import collections
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import preprocess
from .util.env import gpu_share, node_share, usable_cores
from .errors import FastFTError
from .store import View, open_view

# DALI settings measured by benchmarks/e2e_probe.py and benchmarks/loader_probe.py (H200, 16 cores, 256x256 JPEGs): the
# loader alone ran 28.2k img/s with 16 threads, 34.6k with 8 — the rate of DALI's own C++ reader (34.5k), i.e. of
# the hardware decoder, in the same run. Not copying the feed: 34.6k there too; 29.5k vs 27.5k on another H200
# (2026-11-27, where DALI's reader ran 31.6k), with the GPU tests passing; on since.
EXEC_DYNAMIC = True   # DALI's dynamic executor (the classic one: same rate)
FEED_NO_COPY = True   # DALI reads the JPEG bytes in the store's memory maps without a copy (_DaliPipe.alive holds them)
MIXED_THREADS = 8     # at most this many CPU threads for a GPU-decoding pipeline (more contend for the cores)


# ---------------------------------------------------------------- order
@dataclass
class EpochPlan:
    """Which samples (and which crop/flip draws) each rank sees at each step of each epoch."""
    n: int                 # samples in the split
    batch_size: int        # per rank
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True
    augment: bool | None = None  # random crops and mirrors (default: with shuffle); else centre crops, no mirror

    def __post_init__(self):
        if self.augment is None:
            self.augment = self.shuffle
        if self.n <= 0:
            raise FastFTError("the view split is empty: nothing to load")
        if not 0 <= self.rank < self.world_size:
            raise FastFTError(f"rank {self.rank} outside world size {self.world_size}")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps(self) -> int:
        return math.ceil(self.n / self.global_batch)

    @property
    def padding(self) -> int:
        return self.steps * self.global_batch - self.n

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)

    def epoch(self, epoch: int) -> dict[str, np.ndarray]:
        """Arrays of shape [steps, batch_size] for this rank: ``index``, ``weight``, ``crop_x``, ``crop_y``, ``mirror``."""
        total = self.steps * self.global_batch
        if self.shuffle:  # pad with the next epochs' orders (never the same sample twice inside the padding)
            parts, have, e = [self._order(epoch)], self.n, epoch
            while have < total:
                e += 1
                parts.append(self._order(e))
                have += self.n
            index = np.concatenate(parts)[:total]
            weight = np.ones(total, np.float32)
        else:  # eval: repeat from the start, weighted 0 so each sample counts exactly once
            index = np.resize(np.arange(self.n), total)
            weight = (np.arange(total) < self.n).astype(np.float32)
        rng = np.random.default_rng([self.seed, epoch, 0xC409])
        cx, cy = rng.random(total, dtype=np.float32), rng.random(total, dtype=np.float32)
        mirror = rng.integers(0, 2, total, dtype=np.int32)
        if not self.augment:
            cx[:], cy[:], mirror[:] = 0.5, 0.5, 0
        shape = (self.steps, self.world_size, self.batch_size)
        sl = lambda a: a.reshape(shape)[:, self.rank]  # noqa: E731
        return {"index": sl(index), "weight": sl(weight), "crop_x": sl(cx), "crop_y": sl(cy), "mirror": sl(mirror)}


# ---------------------------------------------------------------- sample bytes
class SampleSource:
    """JPEG bytes and labels of a view split, read from the store's tars through memory maps."""

    def __init__(self, view: View, split: str):
        df = view.keys(split).sort_values("key").reset_index(drop=True)
        self.keys = df["key"].to_numpy()
        self.labels = df["view_label"].to_numpy(np.int64)
        self.offsets = df["jpg_offset"].to_numpy(np.int64)
        self.sizes = df["jpg_size"].to_numpy(np.int64)
        shards = df["shard"].to_numpy()
        self.shard_names = sorted(set(shards))
        self.shard_of = np.searchsorted(self.shard_names, shards)
        self.store = view.store
        self.aug: dict | None = None
        self._maps: list | None = None

    AUG = ("scale", "angle", "bright", "contrast", "sat", "u", "v")

    def augment_to(self, target: int, seed: int) -> None:
        """§4.6: grow every class with fewer than ``target`` images to ``target`` with transformed copies (Paulin et al.
        2014 style: a crop of 70–100 % of the side resized back, rotation ±15°, brightness/contrast/saturation ×0.8–1.2).
        Copies cycle through the class's images; their transforms are drawn once from ``seed`` (a fixed augmented
        dataset, as the paper built), then the usual random crop + mirror apply every epoch."""
        rng = np.random.default_rng([seed, 0xA06])
        rows, copy = [np.arange(len(self.keys))], []
        for c in np.unique(self.labels):
            idx = np.flatnonzero(self.labels == c)
            extra = max(0, target - len(idx))
            rows.append(np.resize(idx, extra))
            copy.append(extra)
        rows = np.concatenate(rows)
        n0, n = len(self.keys), len(rows)
        params = {"scale": np.ones(n, np.float32), "angle": np.zeros(n, np.float32), "bright": np.ones(n, np.float32),
                  "contrast": np.ones(n, np.float32), "sat": np.ones(n, np.float32), "u": np.full(n, 0.5, np.float32),
                  "v": np.full(n, 0.5, np.float32)}
        k = n - n0
        params["scale"][n0:] = rng.uniform(0.7, 1.0, k)
        params["angle"][n0:] = rng.uniform(-15, 15, k)
        for name in ("bright", "contrast", "sat"):
            params[name][n0:] = rng.uniform(0.8, 1.2, k)
        params["u"][n0:], params["v"][n0:] = rng.random(k), rng.random(k)
        for name in ("keys", "labels", "offsets", "sizes", "shard_of"):
            setattr(self, name, getattr(self, name)[rows])
        self.aug = params

    def __len__(self):
        return len(self.keys)

    def _mm(self) -> list[np.ndarray]:
        if self._maps is None:  # opened lazily: survives pickling into DataLoader workers
            self._maps = []
            for n in self.shard_names:  # plain arrays over read-only maps: slicing one is ~6x cheaper than np.memmap's
                with open(self.store / f"{n}.tar", "rb") as f:
                    self._maps.append(np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8))
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def jpeg(self, i: int) -> np.ndarray:
        o = self.offsets[i]
        return self._mm()[self.shard_of[i]][o:o + self.sizes[i]]

    def jpegs(self, idx: np.ndarray) -> list[np.ndarray]:
        """The JPEG bytes of samples ``idx`` (views into the maps; no copy): one DALI batch."""
        maps = self._mm()
        return [maps[s][o:o + k] for s, o, k in zip(self.shard_of[idx].tolist(), self.offsets[idx].tolist(), self.sizes[idx].tolist())]


# ---------------------------------------------------------------- the loader
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
        threads = cfg.num_threads or max(1, usable_cores() // node_share(world_size))
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
        plan = self.plan.epoch(epoch)
        for step, batch in enumerate(self._impl.run(plan, start_step), start_step):
            self.position = (epoch, step + 1)
            yield batch
        self.position = (epoch + 1, 0)


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
    pinned copy, inside the prefetched pipeline) before anything else. Cropping on the host first would cost 47-68 %
    more host CPU per image (DALI's CPU crop; ``benchmarks/host_decode.py``) to copy ~20 % fewer bytes.

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


def _device(cfg: LoaderConfig) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else torch.device("cpu")


def _plan_targets(src: SampleSource, plan: dict, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's labels and weights, [steps, batch], moved to the device in one copy (no per-step host transfer,
    which from pageable memory would wait for the GPU to drain)."""
    return (torch.from_numpy(src.labels[plan["index"]]).to(dev, non_blocking=True),
            torch.from_numpy(np.ascontiguousarray(plan["weight"])).to(dev, non_blocking=True))


def _require_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise FastFTError("NVIDIA DALI is not installed: `pip install nvidia-dali-cuda130` (Linux), or use backend: pytorch") from None


class _DaliPipe:
    """One DALI pipeline of :func:`_dali_graph` over externally fed batches of ``(index, crop_x, crop_y, mirror)``."""

    def __init__(self, loader: Loader, batch: int, threads: int, host_decode: bool = False):
        from nvidia.dali import fn, pipeline_def, types

        self.src, cfg = loader.src, loader.cfg
        self.feed: list = []
        self.alive = collections.deque(maxlen=cfg.prefetch + 2)  # batches DALI may still read (FEED_NO_COPY)
        n_aug = len(SampleSource.AUG) if self.src.aug is not None else 0

        @pipeline_def(batch_size=batch, num_threads=threads, device_id=torch.cuda.current_device() if cfg.device == "cuda" else None,
                      seed=loader.plan.seed, prefetch_queue_depth=cfg.prefetch, exec_dynamic=EXEC_DYNAMIC)
        def pipe():
            jpegs, cx, cy, mirror, *aug = fn.external_source(
                source=self._source, num_outputs=4 + n_aug, batch=True, no_copy=FEED_NO_COPY,
                dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32] + [types.FLOAT] * n_aug)
            return _dali_graph(jpegs, cx, cy, mirror, device=cfg.device, crop=cfg.crop, fixed_size=loader.fixed_size,
                               hw_decoder_load=cfg.hw_decoder_load, fp16=cfg.fp16, mean_std=cfg.mean_std,
                               channels_last=cfg.channels_last,
                               aug=aug or None, image_size=loader.image_size, host_decode=host_decode,
                               gpu_huffman=cfg.gpu_huffman)

        self.pipe = pipe()
        self.pipe.build()

    def _source(self, iteration: int):
        if iteration >= len(self.feed):
            raise StopIteration
        idx, cx, cy, mirror = self.feed[iteration]
        out = (self.src.jpegs(idx), cx, cy, mirror.astype(np.int32))
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
        self.main = _DaliPipe(loader, self.kg, min(mixed, MIXED_THREADS) if cfg.device == "cuda" else mixed) if self.kg else None
        self.host = _DaliPipe(loader, self.kc, host, host_decode=True) if self.kc else None
        self.dev = _device(cfg)

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
        labels, weights = _plan_targets(self.L.src, plan, self.dev)
        steps = range(start, len(plan["index"]))
        feed = [(plan["index"][s], plan["crop_x"][s], plan["crop_y"][s], plan["mirror"][s]) for s in steps]
        for s, x in zip(steps, self.decode(feed)):
            yield x, labels[s], weights[s]


# ---------------------------------------------------------------- PyTorch fallback (and the benchmark baseline)
def _torch_augment(img: torch.Tensor, cx: float, cy: float, mirror: int, crop: int) -> torch.Tensor:
    """Crop/mirror of one HWC uint8 image, same semantics as DALI's crop_mirror_normalize (normalisation is batched)."""
    h, w = img.shape[:2]
    if h < crop or w < crop:  # pad like DALI's out_of_bounds_policy="pad"
        pad = torch.zeros(max(h, crop), max(w, crop), 3, dtype=img.dtype)
        pad[:h, :w] = img
        img, h, w = pad, max(h, crop), max(w, crop)
    y0, x0 = math.floor(cy * (h - crop) + 0.5), math.floor(cx * (w - crop) + 0.5)  # half up, as DALI (not round()'s half to even)
    out = img[y0:y0 + crop, x0:x0 + crop]
    return out.flip(1) if mirror else out


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, src: SampleSource, crop: int, fixed_size: bool):
        self.src, self.crop, self.fixed = src, crop, fixed_size

    def __len__(self):
        return len(self.src)

    def __getitem__(self, job):
        from PIL import Image

        i, cx, cy, m = job
        im = _pil_decode(self.src, i)
        if not self.fixed:
            s = round(self.crop * 256 / 227) / min(im.size)
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BILINEAR)
        return _torch_augment(torch.from_numpy(np.asarray(im).copy()), cx, cy, m, self.crop), self.src.labels[i]


class _TorchBackend:
    """A DataLoader with worker processes decoding with PIL (libjpeg-turbo) — what users run without DALI.
    Workers persist across epochs. Forking a process in which DALI's thread pools already run can deadlock, so in
    such a process the fallback decodes in the main process (the benchmark runs it in its own process instead)."""

    def __init__(self, loader: Loader, threads: int):
        import sys

        self.L, self.jobs = loader, []
        ds = _DecodeDataset(loader.src, loader.cfg.crop, loader.fixed_size)
        workers = threads if threads > 1 and "nvidia.dali" not in sys.modules else 0
        self.dl = torch.utils.data.DataLoader(ds, batch_sampler=self, num_workers=workers, collate_fn=_collate,
                                              pin_memory=loader.cfg.device == "cuda", persistent_workers=bool(workers),
                                              multiprocessing_context="fork" if workers else None, prefetch_factor=4 if workers else None)

    def __iter__(self):  # the DataLoader's batch sampler: the jobs of the running epoch
        return iter(self.jobs)

    def __len__(self):
        return len(self.jobs)

    def run(self, plan: dict, start: int):
        steps = range(start, len(plan["index"]))
        self.jobs = [[(int(i), float(x), float(y), int(m)) for i, x, y, m in zip(plan["index"][s], plan["crop_x"][s], plan["crop_y"][s], plan["mirror"][s])]
                     for s in steps]
        dev = _device(self.L.cfg)
        cfg = self.L.cfg
        mean, std = (torch.tensor(v, device=dev) for v in cfg.mean_std)
        _, weights = _plan_targets(self.L.src, plan, dev)
        for s, (x, y) in zip(steps, self.dl):  # batches come pinned on CUDA machines: the copies do not block
            x = _normalize(x.to(dev, non_blocking=True), mean, std, cfg.fp16, cfg.channels_last)
            yield x, y.to(dev, non_blocking=True), weights[s]


def host_cache_budget(world_size: int = 1) -> float:
    """``host_cache_gb: auto``: half of this machine's memory (or of the job's cgroup limit, under SLURM), split among
    the loaders on the node (:func:`fastft.util.env.node_share`: every rank of a multi-GPU run caches the whole split, since its
    samples change every epoch), and never more than 80 % of what is free now."""
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line) \
        if Path("/proc/meminfo").exists() else {}
    kb = lambda k: float(info.get(k, "0 kB").split()[0]) * 1024  # noqa: E731
    total, avail = kb("MemTotal"), kb("MemAvailable")
    cg = Path("/sys/fs/cgroup/memory.max")
    if cg.exists() and cg.read_text().strip().isdigit():
        total = min(total, float(cg.read_text().strip()))
    return max(0.0, min(0.5 * total / node_share(world_size), 0.8 * avail))


def _crop(images, slot, x0, y0, mirror, crop: int) -> torch.Tensor:
    """Crop (top-left ``y0``, ``x0``) + mirror of ``images[slot]`` (uint8 [M, H, W, 3]) as one gather → uint8 [k, c, c, 3]."""
    ar = torch.arange(crop, device=images.device)
    rows = y0[:, None] + ar
    cols = torch.where(mirror[:, None], x0[:, None] + (crop - 1 - ar), x0[:, None] + ar)
    return images[slot[:, None, None], rows[:, :, None], cols[:, None, :]]


def _crop_normalize(images, slot, x0, y0, mirror, mean, std, crop: int, fp16: bool, channels_last: bool) -> torch.Tensor:
    """:func:`_crop` then normalise → [k, 3, c, c]: the form :func:`torch.compile` fuses into one kernel."""
    y = ((_crop(images, slot, x0, y0, mirror, crop).float() - mean) / std).to(torch.float16 if fp16 else torch.float32)
    y = y.permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, fp16: bool, channels_last: bool) -> torch.Tensor:
    """uint8 [k, h, w, 3] → normalised [k, 3, h, w] (NHWC memory if ``channels_last``), as DALI's crop_mirror_normalize.
    float16 output is computed in float16 (two kernels; uint8 values are exact in float16)."""
    if fp16:
        y = x.to(torch.float16).mul_(1 / std.half()).add_(-(mean / std).half())
    else:
        y = (x.float() - mean) / std
    y = y.permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


class _CacheBackend:
    """Decoded-image cache: decode once, keep uint8 images [M, H, W, 3], crop/flip/normalise on the device.

    Three tiers, decided once per run by a seeded draw over the split:

    * **device** (``cache_gb``; default 80 % of the GPU's free memory, or of its share when a sweep packs k runs per
      GPU; on CPU the whole split): a 100-class fine-tuning target (~130k images at 256×256, ~25 GB) fits whole;
    * **pinned host memory** (``host_cache_gb``) for what the GPU cannot hold: each step's host-tier images are
      gathered into a pinned staging buffer and copied to the GPU by a helper thread on a copy stream, a step ahead
      (~5 GB/s of PCIe at 28k img/s: the copy engine, not the SMs, does the work);
    * **decoded by DALI every epoch**: the rest, and only the rest.

    Each step's batch is served device-tier first, then host-tier, then decoded: the same samples, crops and flags as
    the decoding backends, in that order within the step. The hardware decoder then needs only the decoded fraction
    of the step rate. With ``augment_to`` the cache holds the transformed copies (their transforms are fixed per
    copy), so §4.6 runs are cached too. Needs a fixed-size store."""

    DEVICE, HOST, DECODE = 0, 1, 2

    def __init__(self, loader: Loader, threads: int):
        cfg = loader.cfg
        if not loader.fixed_size:
            raise FastFTError("cache needs a store with a fixed image size (fastft shard --resize WxH)")
        w, h = loader.image_size
        n, per = len(loader.src), h * w * 3
        self.dev = _device(cfg)
        if cfg.cache_gb:
            budget = cfg.cache_gb * 1e9
        elif self.dev.type == "cuda":  # a sweep packing k runs on one GPU sets FASTFT_GPU_SHARE=k
            free, total = torch.cuda.mem_get_info(self.dev)
            budget = min(0.8 * free, 0.8 * total / gpu_share())
        else:
            budget = n * per
        host = host_cache_budget(loader.plan.world_size) if cfg.host_cache_gb == "auto" else float(cfg.host_cache_gb) * 1e9
        m = min(n, int(budget // per))
        mh = min(n - m, int(host // per))
        if m + mh < 1:
            raise FastFTError(f"no room to cache decoded images ({budget / 1e9:.2f} GB for {per / 1e6:.2f} MB images); train without cache")
        if m + mh < n and cfg.backend != "dali":
            raise FastFTError(f"the cache holds {m + mh} of {n} images; caching part of a split needs backend dali")
        order = np.arange(n) if m == n else np.random.default_rng([loader.plan.seed, 0xCAC]).permutation(n)
        self.tier = np.full(n, self.DECODE, np.int8)
        self.slot = np.zeros(n, np.int64)
        for t, rows in ((self.DEVICE, np.sort(order[:m])), (self.HOST, np.sort(order[m:m + mh]))):
            self.tier[rows], self.slot[rows] = t, np.arange(len(rows))
        self.rows = [np.flatnonzero(self.tier == t) for t in (self.DEVICE, self.HOST)]
        self.fraction, self.host_fraction = m / n, mh / n
        self.dali = _DaliBackend(loader, threads) if m + mh < n else None
        self.L, self.threads, self.hw = loader, threads, (h, w)
        self.images: torch.Tensor | None = None
        self.host: torch.Tensor | None = None
        self._compiled = None  # the compiled crop (GPU), or False after a compile failure
        self.mean, self.std = (torch.tensor(v, device=self.dev) for v in cfg.mean_std)

    def _fill(self) -> None:
        """Decode the device and host tiers once (one pass of DALI, or PIL for the fallback)."""
        h, w = self.hw
        src, cfg = self.L.src, self.L.cfg
        dev_rows, host_rows = self.rows
        self.images = torch.empty((len(dev_rows), h, w, 3), dtype=torch.uint8, device=self.dev)
        try:
            self.host = torch.empty((len(host_rows), h, w, 3), dtype=torch.uint8, pin_memory=self.dev.type == "cuda")
        except RuntimeError as e:
            raise FastFTError(f"could not allocate {len(host_rows) * h * w * 3 / 1e9:.1f} GB of pinned host memory for the "
                              f"cache's host tier ({str(e)[:120]}); set host_cache_gb lower, or 0") from None
        dests = [(self.images, j) for j in range(len(dev_rows))] + [(self.host, j) for j in range(len(host_rows))]
        rows = np.concatenate([dev_rows, host_rows])
        if cfg.backend == "pytorch":
            for (dst, j), i in zip(dests, rows):
                dst[j] = torch.from_numpy(np.asarray(_pil_decode(src, i)).copy())
            return
        _require_dali()
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import feed_ndarray

        bs = cfg.batch_size
        order = np.resize(rows, -(-len(rows) // bs) * bs)

        threads = min(self.threads, MIXED_THREADS) if self.dev.type == "cuda" else self.threads  # as the loader's mixed pipeline

        @pipeline_def(batch_size=bs, num_threads=threads, device_id=self.dev.index if self.dev.type == "cuda" else None,
                      prefetch_queue_depth=2, exec_dynamic=EXEC_DYNAMIC)
        def decode():
            n_aug = len(SampleSource.AUG) if src.aug is not None else 0

            def feed(i):
                idx = order[i * bs:(i + 1) * bs]
                return (src.jpegs(idx),) + tuple(src.aug[k][idx] for k in SampleSource.AUG[:n_aug])
            jpegs, *aug = fn.external_source(source=feed, num_outputs=1 + n_aug, batch=True, dtype=[types.UINT8] + [types.FLOAT] * n_aug)
            return _dali_decode(jpegs, self.dev.type, cfg.hw_decoder_load, aug, (w, h), gpu_huffman=cfg.gpu_huffman)

        p = decode()
        p.build()
        buf = torch.empty((bs, h, w, 3), dtype=torch.uint8, device=self.dev)
        md = len(dev_rows)
        from tqdm import tqdm

        for b in tqdm(range(len(order) // bs), desc=f"decoding {len(rows)} images into the cache", unit="batch",
                      disable=None if len(rows) >= 50_000 else True, leave=False):
            (out,) = p.run()
            feed_ndarray(out.as_tensor(), buf, cuda_stream=torch.cuda.current_stream(self.dev) if self.dev.type == "cuda" else None)
            lo, hi = b * bs, min((b + 1) * bs, len(rows))
            if lo < md:
                self.images[lo:min(hi, md)] = buf[: min(hi, md) - lo]
            if hi > md:
                self.host[max(lo, md) - md:hi - md] = buf[max(lo, md) - lo:hi - lo]  # device → pinned host (synchronous)
        del p

    def order(self, plan: dict) -> tuple[dict, np.ndarray]:
        """The plan with each step's samples reordered by tier (device, host, decoded; stable within a tier), and the
        per-step count of each tier, [steps, 3]. A split wholly on the device keeps the plan's order."""
        tier = self.tier[plan["index"]]
        if not tier.any():  # all DEVICE (0): nothing to reorder
            return plan, np.stack([np.full(len(tier), tier.shape[1]), np.zeros(len(tier), int), np.zeros(len(tier), int)], 1)
        perm = np.argsort(tier, axis=1, kind="stable")
        counts = np.stack([(tier == t).sum(1) for t in (self.DEVICE, self.HOST, self.DECODE)], 1)
        return {k: np.take_along_axis(v, perm, 1) for k, v in plan.items()}, counts

    def _staged(self, slots: list[np.ndarray]):
        """The host-tier images of each step (``slots``: their rows of the host tier) as device uint8 tensors, in
        order. On a GPU a helper thread gathers them into one of three pinned buffers and copies them on a copy
        stream two steps ahead; events order the reuse of each buffer."""
        if self.dev.type != "cuda":
            for sl in slots:
                yield self.host[torch.from_numpy(sl)]
            return
        from concurrent.futures import ThreadPoolExecutor

        R, B = 3, max((len(s) for s in slots), default=0)
        pinned = [torch.empty((B, *self.host.shape[1:]), dtype=torch.uint8, pin_memory=True) for _ in range(R)]
        dev = [torch.empty((B, *self.host.shape[1:]), dtype=torch.uint8, device=self.dev) for _ in range(R)]
        ready = [torch.cuda.Event() for _ in range(R)]
        free = [torch.cuda.Event() for _ in range(R)]
        copy = torch.cuda.Stream(self.dev)

        def stage(j: int):
            r, k = j % R, len(slots[j])
            free[r].synchronize()  # the crop that read this buffer three steps ago has run
            torch.index_select(self.host, 0, torch.from_numpy(slots[j]), out=pinned[r][:k])
            with torch.cuda.stream(copy):
                dev[r][:k].copy_(pinned[r][:k], non_blocking=True)
                ready[r].record(copy)
            return r, k

        with ThreadPoolExecutor(1) as pool:
            futs = [pool.submit(stage, j) for j in range(min(R - 1, len(slots)))]
            for j in range(len(slots)):
                r, k = futs[j].result()
                torch.cuda.current_stream(self.dev).wait_event(ready[r])
                yield dev[r][:k]
                free[r].record(torch.cuda.current_stream(self.dev))  # after the consumer's crop was enqueued
                if j + R - 1 < len(slots):
                    futs.append(pool.submit(stage, j + R - 1))

    def _batch(self, images: torch.Tensor, slot: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, mirror: torch.Tensor,
               whole: bool = False) -> torch.Tensor:
        """Crop + mirror + normalise ``images[slot]`` on the device → [k, 3, c, c]. ``whole``: a full batch from the
        device tier (fixed shapes): on a GPU one compiled kernel (gather, convert, normalise) instead of four."""
        cfg = self.L.cfg
        if whole and self.dev.type == "cuda" and self._compiled is not False:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(_crop_normalize, dynamic=False)
                return self._compiled(images, slot, x0, y0, mirror, self.mean, self.std, cfg.crop, cfg.fp16, cfg.channels_last)
            except Exception as e:  # noqa: BLE001 - an inductor failure must not stop training: the eager ops are equivalent
                import warnings

                warnings.warn(f"compiled crop failed ({type(e).__name__}: {str(e)[:200]}); using eager ops")
                self._compiled = False
        return _normalize(_crop(images, slot, x0, y0, mirror, cfg.crop), self.mean, self.std, cfg.fp16, cfg.channels_last)

    def run(self, plan: dict, start: int):
        if self.images is None:
            self._fill()
        h, w = self.hw
        cfg = self.L.cfg
        c, B = cfg.crop, plan["index"].shape[1]
        plan, k = self.order(plan)
        labels, weights = _plan_targets(self.L.src, plan, self.dev)
        # the whole epoch's draws in one host-to-device copy each; steps then only index device tensors
        slot = torch.from_numpy(self.slot[plan["index"]]).to(self.dev)
        x0 = torch.from_numpy(np.floor(plan["crop_x"] * max(w - c, 0) + 0.5).astype(np.int64)).to(self.dev)  # half up, as DALI
        y0 = torch.from_numpy(np.floor(plan["crop_y"] * max(h - c, 0) + 0.5).astype(np.int64)).to(self.dev)
        mirror = torch.from_numpy(plan["mirror"].astype(bool)).to(self.dev)
        steps = range(start, len(plan["index"]))
        kd, kh = k[:, 0], k[:, 0] + k[:, 1]  # ends of the device and host tiers within each step
        feed = [(plan["index"][s, kh[s]:], plan["crop_x"][s, kh[s]:], plan["crop_y"][s, kh[s]:], plan["mirror"][s, kh[s]:])
                for s in steps if kh[s] < B]
        decoded = self.dali.decode(feed) if feed else iter(())
        staged = self._staged([self.slot[plan["index"][s, kd[s]:kh[s]]] for s in steps if kh[s] > kd[s]])
        for s in steps:
            a, b = int(kd[s]), int(kh[s])
            parts = []
            if a:
                parts.append(self._batch(self.images, slot[s, :a], x0[s, :a], y0[s, :a], mirror[s, :a], whole=a == B))
            if b > a:
                imgs = next(staged)
                ar = torch.arange(b - a, device=self.dev)
                parts.append(self._batch(imgs, ar, x0[s, a:b], y0[s, a:b], mirror[s, a:b]))
            if b < B:
                parts.append(next(decoded))
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield x, labels[s], weights[s]


def _pil_decode(src: SampleSource, i: int):
    """Sample ``i`` as an RGB PIL image, with its §4.6 transforms if it is an augmented copy (the fallback's decode)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(src.jpeg(i).tobytes())).convert("RGB")
    if src.aug is not None and src.aug["scale"][i] != 1.0:
        im = _pil_augment(im, {k: float(src.aug[k][i]) for k in SampleSource.AUG})
    return im


def _pil_augment(im, a: dict):
    """The §4.6 transforms of an augmented copy, as in the DALI graph (rotation, scaled crop resized back, colour)."""
    from PIL import Image, ImageEnhance

    w, h = im.size
    im = im.rotate(a["angle"], resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    cw, ch = a["scale"] * w, a["scale"] * h
    x0, y0 = a["u"] * (w - cw), a["v"] * (h - ch)
    im = im.resize((w, h), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    im = ImageEnhance.Brightness(im).enhance(a["bright"])
    im = ImageEnhance.Contrast(im).enhance(a["contrast"])
    return ImageEnhance.Color(im).enhance(a["sat"])


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)
