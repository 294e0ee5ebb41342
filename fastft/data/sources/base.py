"""What every dataset source gives ``fastft shard``: the :class:`Source` protocol, the :class:`Input` it lists and the
:class:`Listing` it returns, and the class selection every ILSVRC2012 layout applies (:func:`select_classes`)."""
from __future__ import annotations

import abc

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ...errors import FastFTError
from ..taxonomy import load

if TYPE_CHECKING:
    from ..shard.config import ShardConfig


@dataclass(frozen=True)
class Input:
    split: str
    wnid: str
    source: str        # path relative to the ImageNet root (inside archives: ``<archive>/<class tar>/<member>``)
    key: str = ""
    archive: str = ""  # an uncompressed tar (relative to the root) holding the bytes at ``offset`` (``size`` bytes)
    offset: int = 0
    size: int = 0
    reason: str = ""   # set by the scan for an input rejected unread (outside any class folder, unlabelled in val/)


@dataclass
class Listing:
    """What a source read: every entry of the input once, in a fixed order (the store's shuffle and keys start from
    it), each with its split and wnid; an entry it cannot use is listed too, with the ``reason`` it is rejected for
    (so that ``inputs = written + rejected`` holds). ``missing`` and ``skipped`` go to the manifest."""
    inputs: list[Input]
    val_layout: str = "none"                           # how val/ was labelled: folders | devkit | kaggle | none
    missing: list[str] = field(default_factory=list)   # wanted classes with no input (allowed by --allow-missing)
    skipped: list[str] = field(default_factory=list)   # class folders / tars not named by a wnid (--skip-unknown)
    classes: list[str] | None = None                   # the store's vocabulary in label order (None: ILSVRC2012's 1000 wnids)

    @property
    def rejected(self) -> list[Input]:
        """The entries rejected unread (the workers reject the unreadable ones later, with their reasons)."""
        return [x for x in self.inputs if x.reason]


class Source(abc.ABC):
    """A layout of input images that ``fastft shard`` reads. A subclass names itself (``name``, and ``describe``:
    what it expects, listed when no source recognises a root), says whether it recognises a root (``detect``: cheap,
    by the files present; it may raise a :class:`FastFTError` for a root it recognises but cannot read as asked, e.g.
    a ``--val-layout`` whose label file is absent) and lists its inputs (``read``). ``dataset`` is the ``--dataset``
    it answers to: the ILSVRC2012 sources (by default) are told apart by what the root holds; a source of another
    dataset (``imagefolder``: classes of any name) is read only when asked for."""
    name: ClassVar[str]
    describe: ClassVar[str]
    dataset: ClassVar[str] = "ilsvrc2012"  # the ``--dataset`` that chooses among the sources of this kind


    def __init__(self, root: Path, cfg: ShardConfig):
        self.root, self.cfg = root, cfg

    @classmethod
    @abc.abstractmethod
    def detect(cls, root: Path, cfg: ShardConfig) -> bool:
        """Whether this source reads ``root``."""

    @abc.abstractmethod
    def read(self, progress: bool = False) -> Listing:
        """Every entry of the root once: its inputs, and those rejected unread with their reasons."""


def select_classes(found: list[str], cfg: ShardConfig, what: str) -> tuple[list[str], list[str], list[str]]:
    """(classes to shard, wanted classes missing, unknown names) from the class folders / tars ``found``, or the error
    that names what is wrong (``what``: how the input holds a class, e.g. "train/ folder")."""
    h = load()
    wanted = list(cfg.classes) or list(h.wnids)
    bad = [w for w in wanted if w not in h.label]
    if bad:
        raise FastFTError(f"--classes names non-ILSVRC2012 wnids: {bad[:5]}")
    unknown = [f for f in found if f not in h.label]
    if unknown and not cfg.skip_unknown:
        raise FastFTError(f"{what} not named by an ILSVRC2012 wnid: {unknown[:5]}; remove them or pass --skip-unknown "
                          "(a dataset with classes of its own names: --dataset imagefolder)")
    missing = [w for w in wanted if w not in set(found)]
    if missing and not cfg.allow_missing:
        raise FastFTError(f"{len(missing)} classes have no {what} (first: {missing[:5]}); pass --allow-missing to shard the rest, "
                          "or --classes to choose classes")
    return [w for w in wanted if w not in set(missing)], missing, unknown


def entries(d: Path, dirs: bool = False) -> list[str]:
    """Sorted names of the folders in ``d`` (``dirs``), or of everything else: regular files, and also dangling
    symlinks, FIFOs and the like, which the workers reject with the reason (never left out unseen). ``os.scandir``
    knows each entry's type from the directory listing, so 1.28M training files cost no stat calls (which on a
    network file system add minutes)."""
    with os.scandir(d) as it:
        return sorted(e.name for e in it if e.is_dir() == dirs)
