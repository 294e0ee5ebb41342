"""Samples: the JPEG bytes and labels of a view split, read straight from the store's tars (memory-mapped) at the
offsets of the view, and the §4.6 augmented copies (:meth:`SampleSource.augment_to`), whose transforms are fixed per
copy. Every backend and cache tier reads its bytes here."""
from __future__ import annotations

import mmap

import numpy as np
import torch

from ..data.views import View


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

    def targets(self, plan: dict, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's labels and weights, [steps, batch], moved to the device in one copy (no per-step host transfer,
        which from pageable memory would wait for the GPU to drain)."""
        return (torch.from_numpy(self.labels[plan["index"]]).to(dev, non_blocking=True),
                torch.from_numpy(np.ascontiguousarray(plan["weight"])).to(dev, non_blocking=True))
