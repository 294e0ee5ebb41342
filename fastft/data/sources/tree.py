"""What the extracted ILSVRC2012 layouts share: ``train/<wnid>/`` class folders at the root or under Kaggle's
``ILSVRC/Data/CLS-LOC/``, read the same way, and a ``val/`` beside them whose labelling tells the layouts apart
(:class:`TreeSource`; the sources :mod:`.image_folder`, :mod:`.ilsvrc2012_tree` and :mod:`.kaggle` each say how)."""
from __future__ import annotations

import abc

from pathlib import Path
from typing import ClassVar

from ...errors import FastFTError
from ..taxonomy import load
from .base import Input, Listing, Source, entries, select_classes
from .labels import val_label, val_labels

KAGGLE_ROOT = Path("ILSVRC") / "Data" / "CLS-LOC"


def tree_root(root: Path) -> Path | None:
    """Where an extracted tree's ``train/`` is: the root itself, or Kaggle's ``ILSVRC/Data/CLS-LOC/``."""
    return next((c for c in (root, root / KAGGLE_ROOT) if (c / "train").is_dir()), None)


def stray(root: Path, d: Path) -> list[Input]:
    """The files directly in ``train/`` (or a wnid-folder ``val/``), outside every class folder: rejected, counted."""
    return [Input(d.name, "", str((d / f).relative_to(root)), reason="not in a class folder")
            for f in entries(d)]


def class_files(d: Path, root: Path) -> list[str]:
    """The inputs of one class folder; a folder inside it (a class extracted twice, ``n01440764/n01440764/``) is an
    error before any work, since its images would otherwise be silently left out."""
    sub = entries(d, dirs=True)
    if sub:
        raise FastFTError(f"{(d / sub[0]).relative_to(root)}/ is a folder inside a class folder ({len(sub)} in "
                          f"{d.relative_to(root)}/); class folders hold images only: move its files up or remove it")
    return entries(d)


def first_file(*paths: Path) -> Path | None:
    """The first of ``paths`` that exists (where a label file may be: at the root, or beside ``train/``)."""
    return next((p for p in paths if p.exists()), None)


class TreeSource(Source):
    """An extracted tree: the class folders of ``train/``, then ``val/`` as the subclass labels it. ``val_layout`` is
    the ``--val-layout`` that chooses the subclass (and what the manifest records); with ``--val-layout auto``, the
    first registered tree source that finds its labels reads the tree."""
    val_layout: ClassVar[str]
    train_only: ClassVar[bool] = False  # also reads a tree without val/ (then no val split)

    def __init__(self, root: Path, cfg):
        super().__init__(root, cfg)
        self.data_root = tree_root(root)

    @classmethod
    @abc.abstractmethod
    def labelled(cls, root: Path, data_root: Path) -> bool:
        """Whether ``val/`` (which exists) is labelled as this source reads it."""

    @classmethod
    def detect(cls, root: Path, cfg) -> bool:
        data_root = tree_root(root)
        if data_root is None or cfg.val_layout not in ("auto", cls.val_layout):
            return False
        vdir = data_root / "val"
        if not vdir.is_dir():
            if cfg.val_layout != "auto":
                raise FastFTError(f"--val-layout {cfg.val_layout} given but {vdir} does not exist")
            return cls.train_only
        if cls.labelled(root, data_root):
            return True
        if cfg.val_layout != "auto":
            raise FastFTError(f"--val-layout {cfg.val_layout}: its label file / folders are not under {root}")
        return False

    def rel(self, d: Path, name: str) -> str:
        return str((d / name).relative_to(self.root))

    def read(self, progress: bool = False) -> Listing:
        tdir = self.data_root / "train"
        present, missing, unknown = select_classes(entries(tdir, dirs=True), self.cfg, "train/ folder")
        inputs = stray(self.root, tdir)
        for w in present:
            files = class_files(tdir / w, self.root)
            if not files:
                raise FastFTError(f"class folder train/{w} is empty")
            inputs += [Input("train", w, self.rel(tdir / w, f)) for f in files]
        vdir = self.data_root / "val"
        if not vdir.is_dir():
            return Listing(inputs, "none", missing, unknown)
        return Listing(inputs + self.val_inputs(vdir, set(self.cfg.classes or load().wnids)), self.val_layout, missing, unknown)

    @abc.abstractmethod
    def val_inputs(self, vdir: Path, wanted: set[str]) -> list[Input]:
        """The inputs of ``val/`` of the classes ``wanted``, with their wnids (and the unlabelled ones, rejected)."""


class FlatValSource(TreeSource):
    """A tree whose ``val/`` is flat (``ILSVRC2012_val_<8 digits>.JPEG``), labelled by a file (:meth:`label_file`)."""

    @classmethod
    @abc.abstractmethod
    def label_file(cls, root: Path, data_root: Path) -> Path | None:
        """The file that labels a flat ``val/`` (None where this source's file is absent)."""

    @classmethod
    def labelled(cls, root: Path, data_root: Path) -> bool:
        return cls.label_file(root, data_root) is not None

    def val_inputs(self, vdir: Path, wanted: set[str]) -> list[Input]:
        label_file = self.label_file(self.root, self.data_root)
        labels = val_labels(self.val_layout, label_file)
        out = []
        for f in entries(vdir):
            label = val_label(f, labels, f"val/{f}", label_file.name)
            if not label or label in wanted:
                out.append(Input("val", label, self.rel(vdir, f),
                                 reason="" if label else f"no label in {label_file.name} (not an ILSVRC2012_val_* file)"))
        return out
