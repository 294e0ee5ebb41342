"""Source ``imagefolder`` (``fastft shard ROOT --dataset imagefolder``): torchvision's ``ImageFolder`` layout with
classes of any name — ``train/<class>/<image>`` and, optionally, ``val/<class>/<image>`` — whose store carries its
own class vocabulary (``classes.txt``) instead of ILSVRC2012's 1000 wnids.

Labels are given as torchvision's ``ImageFolder.find_classes`` gives them: the class folders of ``train/`` sorted by
name (Python's string order, i.e. by code point; hidden folders count, as there). A class name may hold spaces,
punctuation and any Unicode; a name that is not valid UTF-8 or holds a control character (a newline would split
a line of ``classes.txt``) is an error naming the folder. ``val/`` is optional (without it the store has no val
split); its class folders must be classes of ``train/``. A folder inside a class folder is refused before any work,
as in the ILSVRC2012 trees (its images would otherwise be left out, or taken for a class); files directly in
``train/`` or ``val/`` are rejected with the reason. Every file of a class folder is an input: the workers convert
it or reject it with its reason, as for ILSVRC2012.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from ...errors import FastFTError
from .base import Input, Listing, Source, entries
from .tree import class_files, stray


def check_class_name(name: str, where: str) -> None:
    """A class name ``classes.txt`` can hold as one line, read back the same: UTF-8, no control characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FastFTError(f"{where}: the class folder name {name.encode('utf-8', 'surrogateescape')!r} is not valid "
                          "UTF-8; rename it (class names are stored as UTF-8 text in the store's classes.txt)") from None
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        raise FastFTError(f"{where}: the class folder name {name!r} holds a control or line-break character "
                          f"({bad[0]!r}); rename it (classes.txt holds one class name per line)")


class ClassFolders(Source):
    name = "imagefolder"
    describe = "train/<class>/* and optionally val/<class>/*, classes of any name (torchvision's ImageFolder layout)"
    dataset = "imagefolder"

    @classmethod
    def detect(cls, root: Path, cfg) -> bool:
        if not (root / "train").is_dir():
            raise FastFTError(f"--dataset imagefolder reads ROOT/train/<class>/…; {root / 'train'} is not a directory")
        if cfg.val_layout not in ("auto", "folders"):
            raise FastFTError(f"--dataset imagefolder reads val/ as class folders; --val-layout {cfg.val_layout} does not apply")
        if cfg.skip_unknown:
            raise FastFTError("--skip-unknown does not apply to --dataset imagefolder: every class folder is a class "
                              "(choose classes with --classes)")
        return True

    def read(self, progress: bool = False) -> Listing:
        tdir = self.root / "train"
        found = entries(tdir, dirs=True)
        for c in found:
            check_class_name(c, f"train/{c}")
        if not found:
            raise FastFTError(f"{tdir} holds no class folders (expected train/<class>/<image>)")
        wanted = list(self.cfg.classes) or found
        missing = [c for c in wanted if c not in set(found)]
        if missing and not self.cfg.allow_missing:
            raise FastFTError(f"--classes names {len(missing)} class{'es' * (len(missing) != 1)} train/ has no folder for (first: {missing[:5]}); "
                              f"train/ has {len(found)} (first: {found[:5]}); pass --allow-missing to shard the rest")
        classes = sorted(c for c in set(wanted) if c not in set(missing))  # ImageFolder's order, whatever --classes' order
        inputs = stray(self.root, tdir)
        for c in classes:
            files = class_files(tdir / c, self.root)
            if not files:
                raise FastFTError(f"class folder train/{c} is empty")
            inputs += [Input("train", c, str(Path("train") / c / f)) for f in files]
        vdir = self.root / "val"
        if not vdir.is_dir():
            return Listing(inputs, "none", missing, [], classes)
        inputs += stray(self.root, vdir)
        for c in entries(vdir, dirs=True):
            check_class_name(c, f"val/{c}")
            if c not in set(found):
                raise FastFTError(f"val/{c}/ is a class train/ does not have: every val class needs training images "
                                  f"(train/ has {len(found)} classes, first: {found[:5]}); rename or remove it")
            if c in set(classes):
                inputs += [Input("val", c, str(Path("val") / c / f)) for f in class_files(vdir / c, self.root)]
        return Listing(inputs, "folders", missing, [], classes)
