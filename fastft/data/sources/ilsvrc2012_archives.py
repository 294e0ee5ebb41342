"""Source ``ilsvrc2012-archives``: the ILSVRC2012 files as image-net.org serves them (also what
``torchvision.datasets.ImageNet`` reads), read in place with no extraction: ``ILSVRC2012_img_train.tar`` (one
uncompressed ``<wnid>.tar`` per class), ``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_*.JPEG``, or ``<wnid>/``
folders) labelled by ``ILSVRC2012_devkit_t12.tar.gz`` (or an extracted devkit, or ``LOC_val_solution.csv``).

Only the tar headers are read here; each image is later read with one positioned read from its archive, by every
shard worker in parallel (an :class:`~.base.Input` with ``archive``, ``offset`` and ``size``)."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from ...errors import FastFTError
from ..taxonomy import load
from .base import Input, Listing, Source, select_classes
from .labels import DEVKIT_TGZ, GROUND_TRUTH, KAGGLE_CSV, val_label, val_labels
from .tree import tree_root

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"


class _Window(io.RawIOBase):
    """A read-only window ``[start, start + size)`` of a file: an inner tar of the train archive, read in place."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, off, whence=0):
        self.pos = max(0, min(self.size, {0: off, 1: self.pos + off, 2: self.size + off}[whence]))
        return self.pos

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.f.fileno(), n, self.start + self.pos)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _tar_files(f, start: int, size: int, where: str) -> list[tuple[str, int, int]]:
    """(member name, absolute offset, size) of the regular files of the uncompressed tar at ``[start, start+size)``
    of the open file ``f``, in name order; reads only the headers (positioned reads of what tarfile asks for)."""
    try:
        with tarfile.open(fileobj=_Window(f, start, size), mode="r:") as t:
            out = sorted((m.name, start + m.offset_data, m.size) for m in t if m.isfile())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FastFTError(f"{where} is not a readable tar archive (truncated or damaged?): {e}") from None
    for name, off, n in out:
        if off + n > start + size:
            raise FastFTError(f"{where}: member {name} runs past the end of the archive (truncated?)")
    return out


class Ilsvrc2012Archives(Source):
    name = "ilsvrc2012-archives"
    describe = (f"the downloaded {TRAIN_TAR} (+ {VAL_TAR}, labelled by {DEVKIT_TGZ} or {KAGGLE_CSV}), read in place; "
                "taken only where no extracted train/ is found")

    @classmethod
    def detect(cls, root: Path, cfg) -> bool:
        return (root / TRAIN_TAR).is_file() and tree_root(root) is None

    def read(self, progress: bool = False) -> Listing:
        inputs, missing, unknown = self._train(progress)
        val = self.root / VAL_TAR
        if not val.is_file():
            if self.cfg.val_layout != "auto":
                raise FastFTError(f"--val-layout {self.cfg.val_layout} given but {val} does not exist")
            return Listing(inputs, "none", missing, unknown)
        layout, val_inputs = self._val(val)
        return Listing(inputs + val_inputs, layout, missing, unknown)

    def _train(self, progress: bool) -> tuple[list[Input], list[str], list[str]]:
        """The images of every wanted class tar inside the train archive (and the classes missing / unknown)."""
        from ...util.progress import bar

        train = self.root / TRAIN_TAR
        with open(train, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            tars = {Path(name).name[:-4]: (name, off, n) for name, off, n in _tar_files(f, 0, size, str(train))
                    if name.endswith(".tar")}
            present, missing, unknown = select_classes(sorted(tars), self.cfg, f"class tar in {TRAIN_TAR}")
            inputs: list[Input] = []
            for w in bar(present, unit="class", desc=f"list {TRAIN_TAR}", enabled=progress):
                name, off, n = tars[w]
                files = _tar_files(f, off, n, f"{TRAIN_TAR}/{name}")
                if not files:
                    raise FastFTError(f"class archive {TRAIN_TAR}/{name} is empty")
                inputs += [Input("train", w, f"{TRAIN_TAR}/{name}/{m}", archive=TRAIN_TAR, offset=o, size=k) for m, o, k in files]
        return inputs, missing, unknown

    def _val(self, val: Path) -> tuple[str, list[Input]]:
        """(how it is labelled, the inputs of the wanted classes) of the val archive: by its folders when every member
        is in one, else by the devkit or Kaggle's CSV next to it (``--val-layout`` chooses which)."""
        h, cfg, root = load(), self.cfg, self.root
        with open(val, "rb") as f:
            files = _tar_files(f, 0, os.fstat(f.fileno()).st_size, str(val))
        nested = [m for m, _, _ in files if "/" in m.strip("./")]
        if nested and len(nested) == len(files):
            layout, name, labels = "folders", VAL_TAR, {m: Path(m).parent.name for m, _, _ in files}
            odd = sorted({w for w in labels.values() if w not in h.label})
            if odd and not cfg.skip_unknown:
                raise FastFTError(f"{VAL_TAR} has folders that are not ILSVRC2012 wnids: {odd[:5]}")
        else:
            label_files = {"devkit": [p for p in (root / DEVKIT_TGZ, root / GROUND_TRUTH) if p.exists()],
                           "kaggle": [p for p in (root / KAGGLE_CSV,) if p.exists()]}
            layout = cfg.val_layout if cfg.val_layout != "auto" else next((k for k, v in label_files.items() if v), None)
            if layout is None or layout == "folders" or not label_files.get(layout):
                raise FastFTError(f"cannot label {VAL_TAR} ({'--val-layout ' + cfg.val_layout if cfg.val_layout != 'auto' else 'auto'}): "
                                  f"it holds flat files; put {DEVKIT_TGZ} or {KAGGLE_CSV} next to it")
            by_stem = val_labels(layout, label_files[layout][0])
            name = label_files[layout][0].name
            labels = {m: val_label(m, by_stem, f"{VAL_TAR}: {m}", name) for m, _, _ in files}
        wanted = set(cfg.classes or h.wnids)
        return layout, [Input("val", labels[m], f"{VAL_TAR}/{m}", archive=VAL_TAR, offset=o, size=k,
                              reason="" if labels[m] else f"no label in {name} (not an ILSVRC2012_val_* file)")
                        for m, o, k in files if not labels[m] or labels[m] in wanted]
