"""The decoded-image cache: a split decoded once into uint8 images kept on the device and in pinned host memory,
cropped, mirrored and normalised on the device each step; what neither tier holds is decoded by DALI every epoch."""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import FastFTError
from .augment import _crop, _crop_normalize, _normalize, _pil_decode
from .dali import _DaliBackend, _DaliPipe, _require_dali
from .resources import device_cache_budget, host_cache_bytes

if TYPE_CHECKING:
    from .loader import Loader

DEVICE, HOST, DECODE = 0, 1, 2  # a sample's tier (Loader.tiers): kept on the device, in pinned host memory, decoded
HOST_GATHERS = ("staged", "gpu")  # LoaderConfig.host_gather: how the host tier's images reach the device


def _tiers(n: int, m: int, mh: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's tier and its row in that tier's images: ``m`` samples on the device and ``mh`` in the host tier,
    drawn once per run from ``seed`` (a split that fits wholly stays in order)."""
    order = np.arange(n) if m == n else np.random.default_rng([seed, 0xCAC]).permutation(n)
    tier = np.full(n, DECODE, np.int8)
    slot = np.zeros(n, np.int64)
    for t, rows in ((DEVICE, np.sort(order[:m])), (HOST, np.sort(order[m:m + mh]))):
        tier[rows], slot[rows] = t, np.arange(len(rows))
    return tier, slot


class _CacheBackend:
    """Decoded-image cache: decode once, keep uint8 images [M, H, W, 3], crop/flip/normalise on the device.

    Three tiers, decided once per run by a seeded draw over the split:

    * **device** (``cache_gb``; default 80 % of the GPU's free memory, or of its share when a sweep packs k runs per
      GPU; on CPU the whole split): a 100-class fine-tuning target (~130k images at 256×256, ~25 GB) fits whole;
    * **pinned host memory** (``host_cache_gb``) for what the GPU cannot hold: each step's host-tier images are
      gathered into a pinned staging buffer and copied to the GPU by a helper thread on a copy stream, a step ahead
      (a few GB/s of PCIe at the loader's rates: the copy engine, not the SMs, does the work; the host tier end to end:
      ``benchmarks/results/train-h200-2026-11-26c.json``); or, with ``host_gather: gpu``, the GPU reads each step's
      crops from the mapped pinned memory itself, a step ahead on a side stream (:mod:`fastft.kernels.host_gather`:
      no CPU gather, and only the crop crosses the link);
    * **decoded by DALI every epoch**: the rest, and only the rest.

    Each step's batch is served device-tier first, then host-tier, then decoded: the same samples, crops and flags as
    the decoding backends, in that order within the step. The hardware decoder then needs only the decoded fraction
    of the step rate. With ``augment_to`` the cache holds the transformed copies (their transforms are fixed per
    copy), so §4.6 runs are cached too. Needs a fixed-size store."""

    def __init__(self, loader: Loader, threads: int):
        cfg = loader.cfg
        if not loader.fixed_size:
            raise FastFTError("cache needs a store with a fixed image size (fastft shard --resize WxH)")
        w, h = loader.image_size
        n, per = len(loader.src), h * w * 3
        self.dev = loader.device
        budget = device_cache_budget(cfg.cache_gb, self.dev, n * per)
        host = host_cache_bytes(cfg.host_cache_gb, loader.plan.world_size)
        m = min(n, int(budget // per))
        mh = min(n - m, int(host // per))
        if m + mh < 1:
            raise FastFTError(f"no room to cache decoded images ({budget / 1e9:.2f} GB for {per / 1e6:.2f} MB images); train without cache")
        if m + mh < n and cfg.backend != "dali":
            raise FastFTError(f"the cache holds {m + mh} of {n} images; caching part of a split needs backend dali")
        if cfg.host_gather not in HOST_GATHERS:
            raise FastFTError(f"host_gather must be one of {', '.join(HOST_GATHERS)}, got {cfg.host_gather!r}")
        if cfg.host_gather == "gpu" and mh and importlib.util.find_spec("triton") is None:
            raise FastFTError("host_gather gpu needs Triton (pip install triton), or host_gather staged")
        self.tier, self.slot = _tiers(n, m, mh, loader.plan.seed)
        self.rows = [np.flatnonzero(self.tier == t) for t in (DEVICE, HOST)]
        self.fraction, self.host_fraction = m / n, mh / n
        self.dali = _DaliBackend(loader, threads) if m + mh < n else None
        self.L, self.threads, self.hw = loader, threads, (h, w)
        self.images: torch.Tensor | None = None
        self.host: torch.Tensor | None = None
        self._compiled = None  # the compiled crop (GPU), or False after a compile failure
        self.mean, self.std = (torch.tensor(v, device=self.dev) for v in cfg.mean_std)

    def stats(self) -> dict:
        """What the cache holds (see :meth:`Loader.stats`); the decoding of the rest as the DALI backend's."""
        filled = self.images is not None
        return {**(self.dali.stats() if self.dali else {"decode_batch": None, "decode_threads": None}),
                "cache_fraction": self.fraction, "host_cache_fraction": self.host_fraction, "cache_filled": filled,
                "cached_images": {"device": len(self.images) if filled else 0, "host": len(self.host) if filled else 0},
                "cached_image_shape": tuple(self.images.shape[1:]) if filled else None,
                "host_gather": self.L.cfg.host_gather,
                "compiled_crop": None if self._compiled is None else self._compiled is not False}

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
        from nvidia.dali.plugin.pytorch import feed_ndarray
        from ..util.progress import bar

        bs = cfg.batch_size
        order = np.resize(rows, -(-len(rows) // bs) * bs)
        pipe = _DaliPipe(self.L, bs, self.threads, decode_only=True)  # as the loader's pipelines, up to the crop
        buf = torch.empty((bs, h, w, 3), dtype=torch.uint8, device=self.dev)
        md = len(dev_rows)
        batches = pipe.outputs([(order[lo:lo + bs],) for lo in range(0, len(order), bs)])
        for b, out in enumerate(bar(batches, total=len(order) // bs, desc=f"decoding {len(rows)} images into the cache",
                                    unit="batch", enabled=None if len(rows) >= 50_000 else False, leave=False)):
            feed_ndarray(out, buf, cuda_stream=torch.cuda.current_stream(self.dev) if self.dev.type == "cuda" else None)
            lo, hi = b * bs, min((b + 1) * bs, len(rows))
            if lo < md:
                self.images[lo:min(hi, md)] = buf[: min(hi, md) - lo]
            if hi > md:
                self.host[max(lo, md) - md:hi - md] = buf[max(lo, md) - lo:hi - lo]  # device → pinned host (synchronous)
        del pipe

    def order(self, plan: dict) -> tuple[dict, np.ndarray]:
        """The plan with each step's samples reordered by tier (device, host, decoded; stable within a tier), and the
        per-step count of each tier, [steps, 3]. A split wholly on the device keeps the plan's order."""
        tier = self.tier[plan["index"]]
        if not tier.any():  # all DEVICE (0): nothing to reorder
            return plan, np.stack([np.full(len(tier), tier.shape[1]), np.zeros(len(tier), int), np.zeros(len(tier), int)], 1)
        perm = np.argsort(tier, axis=1, kind="stable")
        counts = np.stack([(tier == t).sum(1) for t in (DEVICE, HOST, DECODE)], 1)
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

    def _gathered(self, slot: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, mirror: torch.Tensor, spans):
        """``host_gather: gpu``: the host-tier crops of each step (``spans``: (step, first, end) of its host-tier
        samples in the epoch's device tensors) as uint8 [k, c, c, 3], read by the GPU from the pinned host tier
        (:func:`~fastft.kernels.host_gather.gather_crops`) on a side stream two steps ahead into three buffers;
        events order the reuse of each buffer. The same crops as ``_crop`` of the staged images, byte for byte."""
        from ..kernels.host_gather import gather_crops

        c = self.L.cfg.crop
        if self.dev.type != "cuda":
            for s, a, b in spans:
                yield gather_crops(self.host, slot[s, a:b], x0[s, a:b], y0[s, a:b], mirror[s, a:b], c)
            return
        R, B = 3, max((b - a for _, a, b in spans), default=0)
        bufs = [torch.empty((B, c, c, 3), dtype=torch.uint8, device=self.dev) for _ in range(R)]
        ready = [torch.cuda.Event() for _ in range(R)]
        free = [torch.cuda.Event() for _ in range(R)]
        side, main = torch.cuda.Stream(self.dev), torch.cuda.current_stream(self.dev)
        side.wait_stream(main)  # the epoch's draws were copied to the device on the main stream

        def enqueue(j: int) -> None:
            s, a, b = spans[j]
            r = j % R
            with torch.cuda.stream(side):
                side.wait_event(free[r])  # the batch that read this buffer three steps ago was enqueued
                gather_crops(self.host, slot[s, a:b], x0[s, a:b], y0[s, a:b], mirror[s, a:b], c, out=bufs[r])
                ready[r].record(side)

        for j in range(min(R - 1, len(spans))):
            enqueue(j)
        for j, (_, a, b) in enumerate(spans):
            r = j % R
            main.wait_event(ready[r])
            yield bufs[r][: b - a]
            free[r].record(main)  # after the consumer's normalise was enqueued
            if j + R - 1 < len(spans):
                enqueue(j + R - 1)

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
        labels, weights = self.L.src.targets(plan, self.dev)
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
        if cfg.host_gather == "gpu":
            staged = self._gathered(slot, x0, y0, mirror.to(torch.uint8), [(s, int(kd[s]), int(kh[s])) for s in steps if kh[s] > kd[s]])
        else:
            staged = self._staged([self.slot[plan["index"][s, kd[s]:kh[s]]] for s in steps if kh[s] > kd[s]])
        for s in steps:
            a, b = int(kd[s]), int(kh[s])
            parts = []
            if a:
                parts.append(self._batch(self.images, slot[s, :a], x0[s, :a], y0[s, :a], mirror[s, :a], whole=a == B))
            if b > a and cfg.host_gather == "gpu":
                parts.append(_normalize(next(staged), self.mean, self.std, cfg.fp16, cfg.channels_last))
            elif b > a:
                imgs = next(staged)
                ar = torch.arange(b - a, device=self.dev)
                parts.append(self._batch(imgs, ar, x0[s, a:b], y0[s, a:b], mirror[s, a:b]))
            if b < B:
                parts.append(next(decoded))
            x = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield x, labels[s], weights[s]
