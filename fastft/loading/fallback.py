"""The PyTorch fallback (and the benchmark baseline): a DataLoader whose worker processes decode with PIL
(libjpeg-turbo) and crop/mirror as DALI does, then normalise on the device — what users run without DALI."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .augment import _normalize, _pil_decode, _torch_augment
from .samples import SampleSource

if TYPE_CHECKING:
    from .loader import Loader


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

    def stats(self) -> dict:
        """The DataLoader's worker processes (0: decoding in this process)."""
        return {"workers": self.dl.num_workers}

    def __iter__(self):  # the DataLoader's batch sampler: the jobs of the running epoch
        return iter(self.jobs)

    def __len__(self):
        return len(self.jobs)

    def run(self, plan: dict, start: int):
        steps = range(start, len(plan["index"]))
        self.jobs = [[(int(i), float(x), float(y), int(m)) for i, x, y, m in zip(plan["index"][s], plan["crop_x"][s], plan["crop_y"][s], plan["mirror"][s])]
                     for s in steps]
        dev = self.L.device
        cfg = self.L.cfg
        mean, std = (torch.tensor(v, device=dev) for v in cfg.mean_std)
        _, weights = self.L.src.targets(plan, dev)
        for s, (x, y) in zip(steps, self.dl):  # batches come pinned on CUDA machines: the copies do not block
            x = _normalize(x.to(dev, non_blocking=True), mean, std, cfg.fp16, cfg.channels_last)
            yield x, y.to(dev, non_blocking=True), weights[s]


def _collate(batch):
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.int64)
