"""Source ``image-folder``: an extracted tree whose ``val/`` is split into class folders like ``train/``
(``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``), or that has no ``val/`` at all (then the store has no val split)."""
from __future__ import annotations

from pathlib import Path

from ...errors import FastFTError
from ..taxonomy import load
from .base import Input, entries
from .tree import TreeSource, class_files, stray


class ImageFolder(TreeSource):
    name = "image-folder"
    describe = "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or no val/)"
    val_layout = "folders"
    train_only = True

    @classmethod
    def labelled(cls, root: Path, data_root: Path) -> bool:
        return any(p.is_dir() for p in (data_root / "val").iterdir())

    def val_inputs(self, vdir: Path, wanted: set[str]) -> list[Input]:
        h = load()
        out = stray(self.root, vdir)
        for d in entries(vdir, dirs=True):
            if d not in h.label:
                if self.cfg.skip_unknown:
                    continue
                raise FastFTError(f"val/ has a folder that is not an ILSVRC2012 wnid: {d}")
            if d in wanted:
                out += [Input("val", d, self.rel(vdir / d, f)) for f in class_files(vdir / d, self.root)]
        return out
