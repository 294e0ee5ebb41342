"""Traversal order: which samples, and which crop/flip draws, each rank sees at each step of each epoch (cf. ffcv's
``traversal_order``).

Order and augmentation draws are decided here, in Python, by :class:`EpochPlan`; the backends only decode and
transform. That one decision gives the properties the trainer relies on, identically on every backend:

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

A plan is a dict of arrays of shape [steps, batch_size]: ``index`` (rows of the split's
:class:`~fastft.loading.samples.SampleSource`), ``weight``, ``crop_x``, ``crop_y`` (0–1, the crop's position in the
free range) and ``mirror``. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FastFTError


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
