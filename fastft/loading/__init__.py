"""Input loading: a view's samples → ``(images, labels, weights)`` batches as PyTorch tensors, on DALI or PyTorch.

One module per step of the flow:

* :mod:`~fastft.loading.order` — the epoch plan: which samples, crops and flips each rank sees at each step (exact
  epochs across ranks, resumable mid-epoch, independent of the number of ranks);
* :mod:`~fastft.loading.samples` — the JPEG bytes and labels of a split, memory-mapped from the store's tars, and the
  §4.6 augmented copies;
* :mod:`~fastft.loading.dali` — the DALI graph (GPU or CPU backend) and its pipelines;
* :mod:`~fastft.loading.augment` — the same crop/mirror/normalise on torch and PIL, for the fallback and the cache;
* :mod:`~fastft.loading.fallback` — the PyTorch DataLoader fallback;
* :mod:`~fastft.loading.cache` — the decoded-image cache (device and pinned host tiers, the rest decoded);
* :mod:`~fastft.loading.resources` — how many cores and how much memory a loader may take on a shared node;
* :mod:`~fastft.loading.loader` — the public :class:`Loader`, :class:`LoaderConfig` and :func:`batch_format`;
* :mod:`~fastft.loading.dataset` — :class:`ViewDataset` (``fastft.ViewDataset``): a view as a plain PyTorch dataset,
  for code outside fastft (not used by the loaders).
"""
from .loader import Loader, LoaderConfig, batch_format
from .order import EpochPlan
from .resources import host_cache_budget
from .samples import SampleSource

__all__ = ["EpochPlan", "Loader", "LoaderConfig", "SampleSource", "batch_format", "host_cache_budget"]
