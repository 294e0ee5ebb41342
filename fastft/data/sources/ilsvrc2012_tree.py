"""Source ``ilsvrc2012-tree``: the extracted ILSVRC2012 tree, ``train/<wnid>/*.JPEG`` and a flat ``val/`` labelled by
the devkit (``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``, beside ``train/``
or at the root)."""
from __future__ import annotations

from pathlib import Path

from .labels import GROUND_TRUTH
from .tree import FlatValSource, first_file


class Ilsvrc2012Tree(FlatValSource):
    name = "ilsvrc2012-tree"
    describe = f"train/<wnid>/*.JPEG, a flat val/ and the devkit's {GROUND_TRUTH} (+ meta.mat)"
    val_layout = "devkit"

    @classmethod
    def label_file(cls, root: Path, data_root: Path) -> Path | None:
        return first_file(root / GROUND_TRUTH, data_root / GROUND_TRUTH)
