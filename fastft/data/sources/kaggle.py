"""Source ``kaggle``: the Kaggle ImageNet download, ``ILSVRC/Data/CLS-LOC/{train,val}/`` (or ``train/`` and ``val/`` at
the root) with a flat ``val/`` labelled by ``LOC_val_solution.csv`` (at the root or beside ``train/``)."""
from __future__ import annotations

from pathlib import Path

from .labels import KAGGLE_CSV
from .tree import FlatValSource, first_file


class Kaggle(FlatValSource):
    name = "kaggle"
    describe = f"ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG (or train/ at the root), a flat val/ and {KAGGLE_CSV}"
    val_layout = "kaggle"

    @classmethod
    def label_file(cls, root: Path, data_root: Path) -> Path | None:
        return first_file(root / KAGGLE_CSV, data_root / KAGGLE_CSV)
