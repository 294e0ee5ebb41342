"""A view as a plain ``torch.utils.data.Dataset`` (:class:`ViewDataset`, public as ``fastft.ViewDataset``): each
sample's JPEG read straight from the store's tar shards at the view's offsets (no DALI, no copy of the data), decoded
with PIL, optionally transformed, with its label.

What fastft's own loaders do (DALI, the decoded-image cache, the epoch plan) is not needed to read a view; this is
the way into a view from any PyTorch code (torchvision transforms, a DataLoader with worker processes, timm).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.views import View, open_view
from ..errors import FastFTError


class ViewDataset(torch.utils.data.Dataset):
    """The samples of one split of a view (``fastft subsets resolve``, or a run's ``views/``), sorted by key.

    ``dataset[i]`` is ``(image, label)``: an RGB ``PIL.Image`` (or ``transform(image)``) and the label, by default
    the view's (0…C−1, ``dataset.classes[label]`` names the class; what fastft trains on), with ``labels="store"``
    the store's own label (what ``.cls`` in the store's shards holds). ``target_transform`` is applied to the label.

    The store is checked as training checks it (``check_store``: its manifest unchanged, the shards the view reads
    verified once). File handles are opened on first use in each process, so the dataset works under a
    ``DataLoader`` with ``num_workers > 0`` (fork, forkserver or spawn): each worker reads with its own handles.
    """

    def __init__(self, view: str | Path | View, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, labels: str = "view", check_store: bool = True):
        if labels not in ("view", "store"):
            raise FastFTError(f"labels must be 'view' (0..C-1, the view's classes) or 'store' (the store's labels), got {labels!r}")
        v = view if isinstance(view, View) else open_view(view, check_store=check_store)
        v.split(split)  # a split the view lacks is named here
        df = v.keys(split).sort_values("key").reset_index(drop=True)
        self.view, self.split = v, split
        self.classes: list[str] = list(v.classes)
        self.keys: list[str] = df["key"].tolist()
        self.labels = df["view_label" if labels == "view" else "label"].to_numpy(np.int64)
        self.offsets = df["jpg_offset"].to_numpy(np.int64)
        self.sizes = df["jpg_size"].to_numpy(np.int64)
        self.shard_names = sorted(set(df["shard"]))
        self.shard_of = np.searchsorted(self.shard_names, df["shard"].to_numpy())
        self.transform, self.target_transform = transform, target_transform
        self._fds: dict[int, int] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def jpeg(self, i: int) -> bytes:
        """The stored JPEG bytes of sample ``i``, as they are in the store's tar."""
        s = int(self.shard_of[i])
        if self._pid != os.getpid():  # a forked worker: its own handles (the parent's are left to the parent)
            self._fds, self._pid = {}, os.getpid()
        if s not in self._fds:
            self._fds[s] = os.open(self.view.store / f"{self.shard_names[s]}.tar", os.O_RDONLY)
        data = os.pread(self._fds[s], int(self.sizes[i]), int(self.offsets[i]))
        if len(data) != self.sizes[i]:
            raise FastFTError(f"{self.view.store / self.shard_names[s]}.tar is shorter than the view says (sample "
                              f"{self.keys[i]}): the store changed; run `fastft verify {self.view.store}`")
        return data

    def __getitem__(self, i: int):
        from PIL import Image

        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} of a {len(self)}-sample split")
        i %= len(self)
        img = Image.open(io.BytesIO(self.jpeg(i))).convert("RGB")  # (stored RGB: convert only loads it)
        label = int(self.labels[i])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return img, label

    def __getstate__(self):  # pickled into spawned workers: handles are opened there
        return {**self.__dict__, "_fds": {}, "_pid": None}

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
