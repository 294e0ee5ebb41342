"""Dataset sources: the layouts of input images ``fastft shard`` reads, one module each, in one registry.

A source (:class:`~.base.Source`) says whether it recognises a root (``detect``) and lists its inputs (``read``: every
entry once, with its split and wnid, and the entries it rejects unread with their reasons, see
:class:`~.base.Listing`); the writer does the rest (conversion, keys, shards, ledger, manifest). The first source in
:data:`SOURCES` that recognises a root reads it, so the order is the precedence, as before there was a registry: the
archives only where no extracted ``train/`` is found; of the trees, val folders before the devkit's ground truth
before Kaggle's CSV (``--val-layout`` picks one instead).

* :mod:`.ilsvrc2012_archives` — the downloaded ``.tar`` files, read in place;
* :mod:`.image_folder` — ``train/<wnid>/`` and ``val/<wnid>/`` folders;
* :mod:`.ilsvrc2012_tree` — the extracted tree with a flat ``val/`` and the devkit;
* :mod:`.kaggle` — Kaggle's ``ILSVRC/Data/CLS-LOC/`` with ``LOC_val_solution.csv``;
* :mod:`.class_folders` — ``--dataset imagefolder``: ``train/<class>/`` (and ``val/<class>/``) folders of any names,
  the store's own class vocabulary (torchvision's ``ImageFolder`` layout);
* :mod:`.tree` (what the extracted trees share), :mod:`.labels` (ILSVRC2012's val label files), :mod:`.base`.

Adding a source is one module with a :class:`~.base.Source` subclass, and its class in :data:`SOURCES`.

Where timm's ``create_reader`` is told its reader by name (``tfds/…``, ``wds/…``), a source here is found by what the
root holds, since ``fastft shard`` is pointed at a download as it came (the manifest records how its val/ was labelled).
"""
from __future__ import annotations

from pathlib import Path

from ...errors import FastFTError
from .base import Input, Listing, Source
from .ilsvrc2012_archives import Ilsvrc2012Archives
from .ilsvrc2012_tree import Ilsvrc2012Tree
from .image_folder import ImageFolder
from .kaggle import Kaggle
from .class_folders import ClassFolders

SOURCES: dict[str, type[Source]] = {s.name: s for s in (Ilsvrc2012Archives, ImageFolder, Ilsvrc2012Tree, Kaggle, ClassFolders)}
DATASETS = tuple(dict.fromkeys(s.dataset for s in SOURCES.values()))  # the values of --dataset

__all__ = ["Input", "Listing", "SOURCES", "Source", "find"]


def find(root: Path, cfg) -> Source:
    """The source that reads ``root`` (the first of ``--dataset``'s sources in :data:`SOURCES` that recognises it), or
    an error listing them."""
    dataset = getattr(cfg, "dataset", "ilsvrc2012")
    if dataset not in DATASETS:
        raise FastFTError(f"--dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    mine = {name: cls for name, cls in SOURCES.items() if cls.dataset == dataset}
    for cls in mine.values():
        if cls.detect(root, cfg):
            return cls(root, cfg)
    how = "" if cfg.val_layout == "auto" else f" with --val-layout {cfg.val_layout}"
    listed = "; ".join(f"{name}: {cls.describe}" for name, cls in mine.items())
    others = "".join(f"; with --dataset {cls.dataset}, {name}: {cls.describe}" for name, cls in SOURCES.items() if name not in mine)
    where = " (a tree may sit at the root or under ILSVRC/Data/CLS-LOC/)" if dataset == "ilsvrc2012" else ""
    raise FastFTError(f"{root} is in no layout fastft shard reads as --dataset {dataset}{how}{where}. The registered "
                      f"sources: {listed}{others}")
