"""Finding the inputs of ``fastft shard``: every file of an ILSVRC2012 tree (three val layouts, or Kaggle's
``ILSVRC/Data/CLS-LOC/``) or of the downloaded archives read in place, with its split and wnid, and its key in the store.

What the scan cannot use is still listed (an :class:`Input` with a ``reason``: a file outside every class folder, an
unlabelled file in a flat ``val/``), so that the writer's ledger balances; what would silently lose images (a
missing or empty class, a folder inside a class folder, an unlabelled val image) is an error before any work.
"""
from __future__ import annotations

import collections
import csv
import io
import os
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...errors import FastFTError
from ..taxonomy import load
from .config import ShardConfig

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


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


def _tree_root(root: Path) -> Path | None:
    """Where an extracted tree's ``train/`` is: the root itself, or Kaggle's ``ILSVRC/Data/CLS-LOC/``."""
    return next((c for c in (root, root / "ILSVRC" / "Data" / "CLS-LOC") if (c / "train").is_dir()), None)


def _find_root(root: Path) -> Path:
    if cand := _tree_root(root):
        return cand
    raise FastFTError(f"{root} has no train/ folder and no {TRAIN_TAR} (expected the ILSVRC2012 layout: train/<wnid>/*.JPEG, "
                      f"val/…, or the downloaded archives {TRAIN_TAR}, {VAL_TAR}, {DEVKIT_TGZ})")


def _detect_val_layout(root: Path, data_root: Path, layout: str) -> tuple[str, Path | None]:
    vdir = data_root / "val"
    gt = [p for p in (root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                      data_root / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt") if p.exists()]
    kag = [p for p in (root / "LOC_val_solution.csv", data_root / "LOC_val_solution.csv") if p.exists()]
    has_folders = vdir.is_dir() and any(p.is_dir() for p in vdir.iterdir())
    found = {"folders": has_folders or None, "devkit": gt[0] if gt else None, "kaggle": kag[0] if kag else None}
    if not vdir.is_dir():
        if layout != "auto":
            raise FastFTError(f"--val-layout {layout} given but {vdir} does not exist")
        return "none", None
    if layout == "auto":
        avail = [k for k, v in found.items() if v]
        if not avail:
            raise FastFTError(f"cannot tell how {vdir} is labelled: no wnid folders, no devkit ground truth "
                              "(ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt), no LOC_val_solution.csv")
        layout = avail[0]
    if not found[layout]:
        raise FastFTError(f"--val-layout {layout}: its label file / folders are not under {root}")
    return layout, (found[layout] if layout != "folders" else None)


def _devkit_ids(meta) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's meta.mat (a path or a file object; IDs are NOT sorted wnid order)."""
    from scipy.io import loadmat

    syn = loadmat(meta, squeeze_me=True)["synsets"]
    out = {}
    for s in np.atleast_1d(syn):
        if int(s["num_children"]) == 0:
            out[int(s["ILSVRC2012_ID"])] = str(s["WNID"])
    return out


def _val_labels(layout: str, label_file: Path) -> dict[str, str]:
    """Validation image stem (``ILSVRC2012_val_00000001``) -> wnid, from the devkit's ground truth + meta.mat (a
    devkit folder, or the downloaded ``ILSVRC2012_devkit_t12.tar.gz`` read in place) or Kaggle's LOC_val_solution.csv.
    Every label is checked before any work: a line that is not an ID / wnid, or an image given two labels, is an
    error naming the file and line."""
    if layout == "devkit":
        if label_file.name.endswith(".tar.gz"):
            try:
                with tarfile.open(label_file, "r:gz") as t:
                    gt = t.extractfile(f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt").read()
                    meta = io.BytesIO(t.extractfile(f"{DEVKIT_DIR}/data/meta.mat").read())
            except (KeyError, tarfile.TarError, OSError, EOFError) as e:
                raise FastFTError(f"{label_file} is not a readable ILSVRC2012 devkit (needs data/meta.mat and "
                                  f"data/ILSVRC2012_validation_ground_truth.txt): {e}") from None
            where = f"{label_file.name}: ILSVRC2012_validation_ground_truth.txt"
        else:
            meta = label_file.parent / "meta.mat"
            if not meta.exists():
                raise FastFTError(f"devkit layout needs {meta} to map ILSVRC2012_IDs to wnids")
            gt, meta, where = label_file.read_bytes(), str(meta), label_file.name
        return _devkit_labels(_text(gt, where), _devkit_ids(meta), where)
    return _kaggle_labels(_text(label_file.read_bytes(), label_file.name), label_file.name)


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (saved by Excel, Notepad) is not part of the first line
    except UnicodeDecodeError as e:
        raise FastFTError(f"{where} is not UTF-8 text (byte {e.start}): is it the right file?") from None


def _devkit_labels(gt: str, ids: dict[int, str], where: str) -> dict[str, str]:
    """Line i of the ground truth = the ILSVRC2012_ID of ``ILSVRC2012_val_{i:08d}``; blank lines only at the end."""
    h = load()
    lines = gt.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = {}
    for i, line in enumerate(lines, 1):
        x = line.strip()
        if not x.isdigit() or int(x) not in ids:
            raise FastFTError(f"{where} line {i}: {x!r} is not an ILSVRC2012_ID of a class in meta.mat")
        if ids[int(x)] not in h.label:
            raise FastFTError(f"{where} line {i}: ID {x} is {ids[int(x)]!r} in meta.mat, not an ILSVRC2012 wnid")
        out[f"ILSVRC2012_val_{i:08d}"] = ids[int(x)]
    return out


def _kaggle_labels(text: str, where: str) -> dict[str, str]:
    """``ImageId,PredictionString`` rows; the wnid is every 5th token of the prediction (one per box, all the same)."""
    h = load()
    rows = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)  # "a, b" as well as "a,b"; CRLF or LF
    header = [c.strip() for c in next(rows, [])]
    if "ImageId" not in header or "PredictionString" not in header:
        raise FastFTError(f"{where} line 1: expected the header ImageId,PredictionString, got {','.join(header)!r}")
    col_id, col_pred = header.index("ImageId"), header.index("PredictionString")
    out, line_of = {}, {}
    for row in rows:
        n = rows.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(col_id, col_pred):
            raise FastFTError(f"{where} line {n}: {len(row)} fields, expected ImageId,PredictionString")
        image, tokens = row[col_id].strip(), row[col_pred].split()
        if not tokens:
            raise FastFTError(f"{where} line {n}: {image} has an empty PredictionString (no label)")
        wnids = set(tokens[::5])
        if len(wnids) > 1:
            raise FastFTError(f"{where} line {n}: {image} has boxes of several classes ({', '.join(sorted(wnids))})")
        wnid = tokens[0]
        if wnid not in h.label:
            raise FastFTError(f"{where} line {n}: {image} is labelled {wnid!r}, not an ILSVRC2012 wnid")
        if out.get(image, wnid) != wnid:
            raise FastFTError(f"{where} line {n}: {image} is labelled {wnid}, but {out[image]} on line {line_of[image]}")
        out[image], line_of[image] = wnid, n
    return out


# the files image-net.org serves (also what torchvision.datasets.ImageNet reads)
TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
DEVKIT_TGZ, DEVKIT_DIR = "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12"


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


def _scan_archives(root: Path, cfg: ShardConfig, progress: bool = False) -> tuple[list[Input], dict]:
    """The ILSVRC2012 archives as downloaded, read in place (no extraction): ``ILSVRC2012_img_train.tar`` (one
    ``<wnid>.tar`` per class), ``ILSVRC2012_img_val.tar`` (flat ``ILSVRC2012_val_*.JPEG``, or ``<wnid>/`` folders) labelled
    by ``ILSVRC2012_devkit_t12.tar.gz`` (or an extracted devkit, or ``LOC_val_solution.csv``). Each image is then
    read with one positioned read from the archive, by every shard worker in parallel."""
    from tqdm import tqdm

    h = load()
    train = root / TRAIN_TAR
    with open(train, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        tars = {Path(name).name[:-4]: (name, off, n) for name, off, n in _tar_files(f, 0, size, str(train))
                if name.endswith(".tar")}
        present, missing, unknown = _classes(sorted(tars), cfg, f"class tar in {TRAIN_TAR}")
        inputs: list[Input] = []
        for w in tqdm(present, unit="class", desc=f"list {TRAIN_TAR}", disable=not progress):
            name, off, n = tars[w]
            files = _tar_files(f, off, n, f"{TRAIN_TAR}/{name}")
            if not files:
                raise FastFTError(f"class archive {TRAIN_TAR}/{name} is empty")
            inputs += [Input("train", w, f"{TRAIN_TAR}/{name}/{m}", archive=TRAIN_TAR, offset=o, size=k) for m, o, k in files]
    layout = "none"
    val = root / VAL_TAR
    if val.is_file():
        with open(val, "rb") as f:
            files = _tar_files(f, 0, os.fstat(f.fileno()).st_size, str(val))
        nested = [m for m, _, _ in files if "/" in m.strip("./")]
        if nested and len(nested) == len(files):
            layout, labels = "folders", {m: Path(m).parent.name for m, _, _ in files}
            odd = sorted({w for w in labels.values() if w not in h.label})
            if odd and not cfg.skip_unknown:
                raise FastFTError(f"{VAL_TAR} has folders that are not ILSVRC2012 wnids: {odd[:5]}")
        else:
            label_files = {"devkit": [p for p in (root / DEVKIT_TGZ, root / DEVKIT_DIR / "data/ILSVRC2012_validation_ground_truth.txt")
                                      if p.exists()], "kaggle": [p for p in (root / "LOC_val_solution.csv",) if p.exists()]}
            layout = cfg.val_layout if cfg.val_layout != "auto" else next((k for k, v in label_files.items() if v), None)
            if layout is None or layout == "folders" or not label_files.get(layout):
                raise FastFTError(f"cannot label {VAL_TAR} ({'--val-layout ' + cfg.val_layout if cfg.val_layout != 'auto' else 'auto'}): "
                                  f"it holds flat files; put {DEVKIT_TGZ} or LOC_val_solution.csv next to it")
            by_stem = _val_labels(layout, label_files[layout][0])
            name = label_files[layout][0].name
            labels = {m: _val_label(m, by_stem, f"{VAL_TAR}: {m}", name) for m, _, _ in files}
        wanted = set(cfg.classes or h.wnids)
        inputs += [Input("val", labels[m], f"{VAL_TAR}/{m}", archive=VAL_TAR, offset=o, size=k,
                         reason="" if labels[m] else f"no label in {name} (not an ILSVRC2012_val_* file)")
                   for m, o, k in files if not labels[m] or labels[m] in wanted]
    elif cfg.val_layout != "auto":
        raise FastFTError(f"--val-layout {cfg.val_layout} given but {val} does not exist")
    return _assign_keys(inputs), {"val_layout": layout, "missing": missing, "skipped_folders": unknown}


def _classes(found: list[str], cfg: ShardConfig, what: str) -> tuple[list[str], list[str], list[str]]:
    """(classes to shard, wanted classes missing, unknown names) from the class folders / tars ``found``, or the error
    that names what is wrong (``what``: how the input holds a class, e.g. "train/ folder")."""
    h = load()
    wanted = list(cfg.classes) or list(h.wnids)
    bad = [w for w in wanted if w not in h.label]
    if bad:
        raise FastFTError(f"--classes names non-ILSVRC2012 wnids: {bad[:5]}")
    unknown = [f for f in found if f not in h.label]
    if unknown and not cfg.skip_unknown:
        raise FastFTError(f"{what} not named by an ILSVRC2012 wnid: {unknown[:5]}; remove them or pass --skip-unknown")
    missing = [w for w in wanted if w not in set(found)]
    if missing and not cfg.allow_missing:
        raise FastFTError(f"{len(missing)} classes have no {what} (first: {missing[:5]}); pass --allow-missing to shard the rest, "
                          "or --classes to choose classes")
    return [w for w in wanted if w not in set(missing)], missing, unknown


def scan(root: str | Path, cfg: ShardConfig, progress: bool = False) -> tuple[list[Input], dict]:
    """Every input file of the tree (or of the downloaded archives, see :func:`_scan_archives`) with its split and
    wnid; raises on unknown / missing / empty classes."""
    root = Path(root)
    if not root.is_dir():
        raise FastFTError(f"ImageNet root {root} is not a directory")
    h = load()
    if (root / TRAIN_TAR).is_file() and _tree_root(root) is None:
        return _scan_archives(root, cfg, progress)
    data_root = _find_root(root)
    rel = lambda d, name: str((d / name).relative_to(root))  # noqa: E731
    tdir, vdir = data_root / "train", data_root / "val"
    present, missing, unknown = _classes(_entries(tdir, dirs=True), cfg, "train/ folder")
    wanted_set = set(cfg.classes or h.wnids)
    inputs = _stray(root, tdir)
    for w in present:
        files = _class_files(tdir / w, root)
        if not files:
            raise FastFTError(f"class folder train/{w} is empty")
        inputs += [Input("train", w, rel(tdir / w, f)) for f in files]
    layout, label_file = _detect_val_layout(root, data_root, cfg.val_layout)
    if layout == "folders":
        inputs += _stray(root, vdir)
        for d in _entries(vdir, dirs=True):
            if d not in h.label:
                if cfg.skip_unknown:
                    continue
                raise FastFTError(f"val/ has a folder that is not an ILSVRC2012 wnid: {d}")
            if d in wanted_set:
                inputs += [Input("val", d, rel(vdir / d, f)) for f in _class_files(vdir / d, root)]
    elif layout in ("devkit", "kaggle"):
        labels = _val_labels(layout, label_file)
        for f in _entries(vdir):
            label = _val_label(f, labels, f"val/{f}", label_file.name)
            if not label or label in wanted_set:
                inputs.append(Input("val", label, rel(vdir, f),
                                    reason="" if label else f"no label in {label_file.name} (not an ILSVRC2012_val_* file)"))
    return _assign_keys(inputs), {"val_layout": layout, "missing": missing, "skipped_folders": unknown}


_VAL_NAME = re.compile(r"ILSVRC2012_val_\d{8}$")


def _val_label(name: str, labels: dict[str, str], where: str, label_file: str) -> str:
    """The wnid of the flat val file ``name``; "" for a file that is not a val image by its name (``.DS_Store``, a
    ``Thumbs.db``: rejected with that reason, as non-images in train/ are); an error for a val image with no label."""
    stem = Path(name).name.split(".")[0]
    if stem in labels:
        return labels[stem]
    if _VAL_NAME.match(stem):
        raise FastFTError(f"{where} has no label in {label_file}")
    return ""


def _stray(root: Path, d: Path) -> list[Input]:
    """The files directly in ``train/`` (or a wnid-folder ``val/``), outside every class folder: rejected, counted."""
    return [Input(d.name, "", str((d / f).relative_to(root)), reason="not in a class folder")
            for f in _entries(d)]


def _class_files(d: Path, root: Path) -> list[str]:
    """The inputs of one class folder; a folder inside it (a class extracted twice, ``n01440764/n01440764/``) is an
    error before any work, since its images would otherwise be silently left out."""
    sub = _entries(d, dirs=True)
    if sub:
        raise FastFTError(f"{(d / sub[0]).relative_to(root)}/ is a folder inside a class folder ({len(sub)} in "
                          f"{d.relative_to(root)}/); class folders hold images only: move its files up or remove it")
    return _entries(d)


def _entries(d: Path, dirs: bool = False) -> list[str]:
    """Sorted names of the folders in ``d`` (``dirs``), or of everything else: regular files, and also dangling
    symlinks, FIFOs and the like, which the workers reject with the reason (never left out unseen). ``os.scandir``
    knows each entry's type from the directory listing, so 1.28M training files cost no stat calls (which on a
    network file system add minutes)."""
    with os.scandir(d) as it:
        return sorted(e.name for e in it if e.is_dir() == dirs)


KEY_STEM_MAX = 64  # characters of the readable part of a key: ``<wnid>_`` + 64 + ``~<ordinal>`` + ``.jpg`` fit ustar's 100


def _key_base(x: Input) -> str:
    """The readable part of a key: the file name's stem (up to its last dot) with every run of characters other than
    ``A-Z a-z 0-9 _ -`` replaced by one ``-`` (dots, spaces, non-ASCII and undecodable bytes; ``~`` too, which only
    a collision suffix holds), cut to :data:`KEY_STEM_MAX`; training keys start with their wnid."""
    name = Path(x.source).name
    stem = _SAFE.sub("-", name.rsplit(".", 1)[0] if "." in name else name).strip("-")[:KEY_STEM_MAX].strip("-") or "img"
    if x.split == "train" and not stem.startswith(x.wnid):
        stem = f"{x.wnid}_{stem}"
    return stem


def _assign_keys(inputs: list[Input]) -> list[Input]:
    """Keys unique across the whole store by construction, and safe for WebDataset, DALI and ustar tar names (no dots:
    WebDataset splits a name at the first one; ASCII, at most 86 characters).

    An input whose readable base (:func:`_key_base`) no other input shares keeps it as its key (``n01440764_10026``).
    Inputs sharing a base — ``x.JPEG`` and ``x.jpg``, ``a.b.JPEG`` and ``a-b.JPEG``, long names alike in their first
    64 characters, names with no ASCII letter — are keyed ``<base>~<n>``, ``n`` = 1, 2, … in the order of (split,
    wnid, file name bytes). ``~`` appears in no base, so a suffixed key never equals a plain one (``x-2.JPEG`` stays
    ``x-2``) and two suffixed keys differ in base or ordinal. Deterministic: the same input list gives the same keys,
    whether read from the extracted tree or the downloaded archives."""
    bases = [_key_base(x) for x in inputs]
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, b in enumerate(bases):
        groups[b].append(i)
    keys = list(bases)
    split_order = {"train": 0, "val": 1}
    for b, members in groups.items():
        if len(members) > 1:
            members.sort(key=lambda i: (split_order.get(inputs[i].split, 2), inputs[i].wnid, os.fsencode(Path(inputs[i].source).name)))
            for n, i in enumerate(members, 1):
                keys[i] = f"{b}~{n}"
    return [replace(x, key=k) for x, k in zip(inputs, keys)]
