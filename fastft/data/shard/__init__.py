"""``fastft shard``: ILSVRC2012 → a store (see :mod:`fastft.data.store` for what a store holds and how it is read).

``write_store`` reads ILSVRC2012 once — an extracted tree (three val layouts), or the downloaded ``.tar`` files read in
place — converts every image to an RGB JPEG at the store's size in worker processes, and writes the shards, their
DALI indexes, the sample index, the ledger of rejected inputs and, last, the manifest.

Nothing is lost or silent: every input file is either written (converted to RGB JPEG if it was CMYK, grayscale, PNG,
RGBA, …, and counted per kind) or listed in ``rejected.csv`` with a reason; ``inputs = written + rejected`` is checked.
Output is deterministic (seeded global shuffle per split, fixed tar metadata, ordered workers) and resumable (shards
are written under temporary names and renamed when complete; a re-run skips completed shards). One writer per store
(a lock), and a disk too small for the rest is named after each shard.
"""

from __future__ import annotations

import collections
import csv
import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import re
import shutil
import stat
import sys
import tarfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from ...errors import FastFTError
from ..spool import bounded_imap, spool_dir  # noqa: F401 (bounded_imap: also imported from here)
from ..store import SAMPLE_COLUMNS, STORE_VERSION, dali_index, encode_source, fsync_write, lock_file, parse_resize, sha256_file
from ..taxonomy import load

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class ShardConfig:
    """Settings of ``fastft shard`` (recorded in ``settings.json`` and the manifest)."""
    resize: str = "256x256"        # "WxH" (exact, the paper's 256x256), "short:N" (shorter side N), or "none"
    quality: int = 90              # JPEG quality of re-encoded images
    shard_mb: float = 256.0        # close a shard once it reaches this size
    seed: int = 0                  # global shuffle across shards
    val_layout: str = "auto"       # auto | folders | devkit | kaggle
    classes: tuple[str, ...] = ()  # only these wnids (empty = all 1000)
    allow_missing: bool = False    # classes absent from the tree are skipped instead of an error
    skip_unknown: bool = False     # folders that are not ILSVRC2012 wnids are skipped instead of an error

    def __post_init__(self):
        parse_resize(self.resize)
        if not 1 <= self.quality <= 100:
            raise FastFTError(f"--quality must be 1..100, got {self.quality}")
        if self.shard_mb <= 0:
            raise FastFTError(f"--shard-mb must be positive, got {self.shard_mb}")
        if self.val_layout not in ("auto", "folders", "devkit", "kaggle"):
            raise FastFTError(f"--val-layout must be auto, folders, devkit or kaggle, got {self.val_layout!r}")


# ---------------------------------------------------------------- input scan
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


def _emptied_classes(rows: list[dict], rejected: list[dict], allow_missing: bool, out: Path) -> list[str]:
    """Classes that had training inputs but of which every one was rejected (known only once all are read): an error,
    or with ``allow_missing`` listed as missing in the manifest, never a class silently at 0 samples."""
    written = {r["wnid"] for r in rows if r["split"] == "train"}
    lost = Counter(r["wnid"] for r in rejected if r["split"] == "train" and r["wnid"] and r["wnid"] not in written)
    if lost and not allow_missing:
        w, n = sorted(lost.items())[0]
        raise FastFTError(f"{len(lost)} classes have no usable training image: every one of their inputs was rejected "
                          f"(first: {w}, {n} files; reasons in {out / 'rejected.csv'}); fix those files, or pass "
                          "--allow-missing (with a new --out) to shard the rest")
    return sorted(lost)


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


# ---------------------------------------------------------------- per-image work (runs in worker processes)
MAX_PIXELS = 200_000_000
"""The most pixels fastft decodes for one image (e.g. 20000×10000, at most 800 MB at 4 bytes a pixel). A JPEG is
decoded at 1/2, 1/4 or 1/8 scale (in the DCT, by ``Image.draft``) when that is enough for the store's size or needed to
stay within the limit, so it may declare up to 64× more (every JPEG: 65535×65535 at 1/8 is 67 Mpx). PIL's own check
(``Image.MAX_IMAGE_PIXELS``, made at open and for some formats' frames and tiles) is set to this limit; an image beyond
it is rejected as too large before anything is allocated."""
_JPEG_MAGIC = b"\xff\xd8\xff"
_WHITE = (255, 255, 255)
# inputs by kind in the manifest: PIL mode -> name (a non-JPEG adds its format: "png-rgba")
_KINDS = {"RGB": "rgb", "L": "grayscale", "CMYK": "cmyk", "RGBA": "rgba", "LA": "grayscale-alpha", "P": "palette",
          "PA": "palette-alpha", "1": "bilevel", "I;16": "grayscale-16bit", "I;16L": "grayscale-16bit",
          "I;16B": "grayscale-16bit", "I;16N": "grayscale-16bit", "I": "grayscale-32bit", "F": "grayscale-float",
          "YCbCr": "ycbcr", "RGBX": "rgb"}


class _Rejected(Exception):
    """An input that cannot be written; the message is its reason in ``rejected.csv``."""


def _process(args) -> tuple[bytes | None, str]:
    """Decode, normalise to RGB, resize and re-encode one input. Returns (jpeg, kind) or (None, reason).

    Never raises: whatever one input does to a decoder (a lying header, a decompression bomb, a bug in a PIL plugin)
    rejects that input, with the exception as its reason, and the run goes on. ``args`` may carry a reason found by
    the scan (a file outside any class folder, an unlabelled file in a flat val/): that input is rejected unread."""
    path, member, resize, quality, *pre = args
    if pre and pre[0]:
        return None, pre[0]
    import warnings

    from PIL import Image

    fmt = "image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "corrupt EXIF" & co. from thousands of inputs would bury the progress bar
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit is a rejection, not a warning
        try:
            raw = _read_input(path, member)
            im = _open(raw)
            fmt = im.format or fmt
            return _convert(im, raw, resize, quality)
        except _Rejected as e:
            return None, str(e)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # raised by a plugin, e.g. a GIF frame
            return None, f"too large ({_bomb_pixels(e)}; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)"
        except MemoryError:
            return None, f"undecodable {fmt} (out of memory)"
        except Exception as e:  # noqa: BLE001 -- any fault of one input is that input's rejection, never the run's end
            return None, f"undecodable {fmt} ({type(e).__name__}: {e})"


def _read_input(path: str, member) -> bytes:
    """The bytes of one input, or :class:`_Rejected` (a dangling symlink, a FIFO or device, an unreadable file)."""
    if member:
        try:
            raw = _read_member(path, *member)
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
    else:
        try:  # O_NONBLOCK: opening a FIFO that nobody writes would otherwise block the worker forever
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            if os.path.islink(path):
                raise _Rejected(f"dangling symlink (to {os.readlink(path)})") from None
            raise _Rejected("unreadable (No such file: removed after the scan?)") from None
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
                raise _Rejected(f"not a regular file ({what})")
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
        except OSError as e:
            raise _Rejected(f"unreadable ({e.strerror or e})") from None
        finally:
            os.close(fd)
    if not raw:
        raise _Rejected("0-byte file")
    return raw


def _open(raw: bytes):
    """PIL's view of ``raw`` (only the header is read), with fastft's pixel limit as PIL's."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS * (64 if raw[:3] == _JPEG_MAGIC else 1)  # a JPEG is decoded at >= 1/8 scale
    try:
        return Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise _Rejected(f"not an image ({_sniff(raw)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _Rejected(f"too large ({_bomb_pixels(e)}; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)") from None


def _bomb_pixels(e: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1)) / 1e6:,.0f} Mpx" if m else str(e)


def _convert(im, raw: bytes, resize: str, quality: int) -> tuple[bytes, str]:
    """The store's JPEG of the opened image ``im`` (see :func:`_to_rgb` for what each mode becomes) and its kind."""
    from PIL import Image

    fmt, mode = im.format, im.mode
    kind = "palette-alpha" if mode == "P" and "transparency" in im.info else _KINDS.get(mode, mode.lower())
    if fmt != "JPEG":
        kind = f"{fmt.lower()}-{kind}"
    if not im.width or not im.height:
        raise _Rejected(f"empty image ({im.width}×{im.height} px)")
    how, w, h = parse_resize(resize)
    declared = im.size
    if fmt in ("JPEG", "MPO"):
        target = _target_size(im.size, how, w, h) if how != "none" else im.size
        fit = _jpeg_fit(im.size)  # draft picks the greatest reduction that still covers the size asked for
        im.draft("RGB" if mode == "RGB" else None, (min(target[0], fit[0]), min(target[1], fit[1])))
    if im.width * im.height > MAX_PIXELS:
        raise _Rejected(f"too large ({declared[0]}×{declared[1]} px; fastft decodes at most {MAX_PIXELS / 1e6:.0f} Mpx)")
    _check_plausible(im, declared, len(raw))
    im.load()
    if how == "none" and fmt == "JPEG" and mode == "RGB" and im.size == declared:
        return raw, kind  # keep the original bytes
    if _has_alpha(im) and im.mode not in ("RGBA", "LA"):
        im = im.convert("RGBA")  # before resampling, so that the alpha is resampled with the colours
    elif im.mode in ("1", "P", "PA"):
        im = im.convert("L" if im.mode == "1" else "RGB")  # PIL resamples these only by nearest neighbour
    if how != "none":
        size = _target_size(im.size, how, w, h)
        if size[0] * size[1] > MAX_PIXELS or max(size) > 65500:  # 65535: JPEG's largest side
            raise _Rejected(f"too large after --resize {resize} ({size[0]}×{size[1]} px from {declared[0]}×{declared[1]})")
        if size != im.size:  # resampled in the input's own mode (16-bit, float, CMYK …): cheaper, and no early rounding
            im = im.resize(size, Image.BILINEAR)
    b = io.BytesIO()
    _to_rgb(im).save(b, "JPEG", quality=quality)
    return b.getvalue(), kind


def _jpeg_fit(size: tuple[int, int]) -> tuple[int, int]:
    """A JPEG's size at the least DCT reduction (1, 1/2, 1/4, 1/8) that keeps it within :data:`MAX_PIXELS`."""
    for k in (1, 2, 4, 8):
        w, h = -(-size[0] // k), -(-size[1] // k)
        if w * h <= MAX_PIXELS:
            break
    return w, h


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def _to_rgb(im):
    """``im`` as 8-bit RGB, by pixel value:

    * RGB as is; L, 1 (0/255), P (its palette), YCbCr, RGBX by PIL; CMYK by PIL's conversion (as ILSVRC's 22 CMYK
      JPEGs need, see reliability.md), ICC profiles not applied;
    * 16-bit (I;16, I;16B, I;16L — PNG, TIFF) scaled 0..65535 → 0..255 (round(v / 257): mid-gray 32768 → 128; PIL's own
      conversion clips every value above 255 to white); I (32-bit integer, which is how PIL reads 16-bit PGM) is taken
      as 16-bit, clipped to 0..65535; F (32-bit float) as 0.0..1.0, the convention of float images, clipped (NaN → 0);
    * alpha (RGBA, LA, PA, a palette or L/RGB with a transparent colour) is composited on white: ILSVRC's images come
      from web pages, which show transparent parts on white, and the colour stored under alpha 0 is arbitrary (often
      black), so dropping alpha would show what the author hid.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I"):
        a = np.asarray(im).astype(np.int32)
        return Image.fromarray(((np.clip(a, 0, 65535) + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        return Image.fromarray((np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "L").convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, _WHITE)
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return out
    if mode in ("LAB", "HSV"):  # PIL's convert copies the bands as if they were RGB
        raise _Rejected(f"unsupported colour mode ({mode})")
    return im.convert("RGB")


def _check_plausible(im, declared: tuple[int, int], nbytes: int) -> None:
    """Reject a header that claims more pixels than the file can hold (a 2 KB BMP "of" 20000×15000 would otherwise
    be allocated first and found truncated after): raw pixel data needs at least a bit a pixel, and zlib (PNG)
    compresses at most 1032:1."""
    need = 0
    for t in im.tile:
        codec, (x0, y0, x1, y1), offset = t[0], t[1], t[2]  # (codec, extents, offset, args): a tuple in Pillow 10
        bits = max(0, x1 - x0) * max(0, y1 - y0)
        if codec == "raw":
            need = max(need, offset + bits // 8)
        elif codec == "zip":
            need = max(need, offset + bits // 8 // 1032)
    if need > nbytes:
        raise _Rejected(f"header claims more pixels than the file holds ({declared[0]}×{declared[1]} px in {nbytes:,} bytes)")


_ARCHIVES: dict[str, int] = {}  # per worker process: archive path -> open descriptor (positioned reads need no seek)


def _read_member(path: str, offset: int, size: int) -> bytes:
    if path not in _ARCHIVES:
        _ARCHIVES[path] = os.open(path, os.O_RDONLY)
    raw = os.pread(_ARCHIVES[path], size, offset)
    if len(raw) != size:
        raise OSError(f"archive ends after {len(raw)} of {size} bytes (truncated)")
    return raw


def _target_size(size, kind, w, h):
    if kind == "exact":
        return (w, h)
    if kind == "short":
        s = w / min(size)
        return (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
    return size


def _sniff(raw: bytes) -> str:
    if raw[:2] == b"\x1f\x8b":
        return "gzip data"
    if raw.lstrip()[:1] == b"<":
        return "HTML/XML text"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in raw[:256]):
        return "text"
    return "unrecognised bytes"




# ---------------------------------------------------------------- writing
def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti



class _ShardWriter:
    def __init__(self, out: Path, split: str, index: int):
        self.name = f"{split}-{index:06d}"
        self.out, self.split = out, split
        self.tmp = out / f"{self.name}.tar.tmp"
        self.tf = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.rows: list[dict] = []
        self.rejected: list[dict] = []
        self.consumed = 0

    @property
    def bytes(self) -> int:
        return self.tf.fileobj.tell()

    def add(self, x: Input, label: int, jpg: bytes, kind: str) -> None:
        cls = np.int32(label).tobytes()
        self.tf.addfile(_tarinfo(f"{x.key}.jpg", len(jpg)), io.BytesIO(jpg))
        self.tf.addfile(_tarinfo(f"{x.key}.cls", len(cls)), io.BytesIO(cls))
        self.rows.append({"key": x.key, "wnid": x.wnid, "label": label, "split": x.split, "shard": self.name,
                          "jpg_size": len(jpg), "source": encode_source(x.source), "kind": kind})

    def close(self) -> dict:
        self.tf.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        idx = dali_index(self.tmp)
        offsets = {}
        for line in idx.splitlines()[1:]:
            t = line.split()
            offsets[t[3].split(".")[0]] = (int(t[1]), int(t[5]))
        for r in self.rows:
            r["jpg_offset"], r["cls_offset"] = offsets[r["key"]]
        tar = self.out / f"{self.name}.tar"
        os.replace(self.tmp, tar)
        fsync_write(self.out / f"{self.name}.idx", idx.encode())
        rec = {"name": self.name, "split": self.split, "samples": len(self.rows), "bytes": tar.stat().st_size,
               "sha256": sha256_file(tar), "idx_sha256": hashlib.sha256(idx.encode()).hexdigest(),
               "classes": dict(sorted(Counter(r["wnid"] for r in self.rows).items())),
               "consumed": self.consumed, "rows": self.rows, "rejected": self.rejected}
        # the record is the commit marker: a shard without it is redone on resume
        fsync_write(self.out / f"{self.name}.json", json.dumps(rec).encode())
        return rec


def write_store(root: str | Path, out: str | Path, cfg: ShardConfig, workers: int | None = None, progress: bool = True,
                stop_after_shards: int | None = None) -> dict:
    """``fastft shard``: build (or resume, or confirm) a store. Returns the manifest.

    ``stop_after_shards`` stops after writing that many new shards (used to test resume after an interruption).
    """
    root, out = Path(root), Path(out)
    h = load()
    inputs, scan_info = scan(root, cfg, progress)
    if not inputs:
        raise FastFTError(f"no input images found under {root}")
    settings = {"store_version": STORE_VERSION, **asdict(cfg), "classes": list(cfg.classes), "val_layout_found": scan_info["val_layout"],
                "class_list_sha256": hashlib.sha256("\n".join(h.wnids).encode()).hexdigest(), "inputs": len(inputs)}
    fingerprint = input_fingerprint(root, inputs)
    out.mkdir(parents=True, exist_ok=True)
    sp = out / "settings.json"
    if (out / "manifest.json").exists() and sp.exists():  # finished: confirmed, nothing written (read-only stores too)
        _same_settings(out, settings)
        _same_input(out, fingerprint, finished=True)
        return json.loads((out / "manifest.json").read_text())
    with lock_file(out / ".lock", f"the store {out}"):  # two `fastft shard` on one store would interleave shards
        if sp.exists():
            _same_settings(out, settings)
            if (out / "manifest.json").exists():  # finished by the writer that held the lock before us
                _same_input(out, fingerprint, finished=True)
                return json.loads((out / "manifest.json").read_text())
            if not _same_input(out, fingerprint, finished=False):
                _start_over(out)
        elif any(p.name != ".lock" for p in out.iterdir()):
            raise FastFTError(f"{out} is not empty and holds no fastft store; choose an empty or new directory")
        if not sp.exists():
            # the input's fingerprint is kept here, not in the manifest: the same images copied elsewhere (other
            # mtimes) must still give the same manifest, which views and reports name stores by
            fsync_write(sp, json.dumps({**settings, "input_fingerprint": fingerprint}, indent=1).encode())
        for tmp in out.glob("*.tmp"):
            tmp.unlink()

        records: list[dict] = []
        # fork is cheapest, but forking a process that already runs DALI's thread pools can deadlock: spawn then
        ctx = get_context("fork" if hasattr(os, "fork") and "nvidia.dali" not in sys.modules else "spawn")
        workers = workers or os.cpu_count() or 1
        t0 = time.time()
        pbar = _progress(len(inputs), progress)
        try:
            # an executor, not multiprocessing.Pool: on an error or Ctrl-C, Pool.terminate() kills workers that may be
            # writing a result to the result pipe, and its result thread then waits forever for the rest of that
            # message (seen as a hang after "disk full"), and a worker killed by the OOM killer loses its task and
            # hangs imap. shutdown() cancels the queued chunks and lets the running ones finish (a chunk each); a
            # dead worker raises BrokenProcessPool (results come through files: see bounded_imap).
            with spool_dir() as spool:  # removed once no worker writes
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_sigint)
                try:
                    _write_shards(root, out, cfg, h, inputs, pool, spool, records, pbar, stop_after_shards)
                finally:
                    pool.shutdown(wait=True, cancel_futures=True)
            pbar.close()
            return _finish(out, records, settings, scan_info, time.time() - t0)
        except BrokenProcessPool:  # a worker was killed (the out-of-memory killer, an admin): nothing hangs, nothing is lost
            pbar.close()
            for tmp in out.glob("*.tmp"):
                tmp.unlink(missing_ok=True)
            done = sum(r["consumed"] for r in records)
            raise FastFTError(f"a worker process died while writing the store {out} (killed, e.g. for memory: fewer "
                              f"--workers need less) after {done:,} of {len(inputs):,} inputs; re-run the same command: "
                              "it resumes after the last finished shard") from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            pbar.close()
            for tmp in out.glob("*.tmp"):  # the shard cut short: give its space back now (a re-run redoes it)
                tmp.unlink(missing_ok=True)
            done = sum(r["consumed"] for r in records)
            raise FastFTError(f"no space left on the device writing the store {out} ({_free(out)} free) after "
                              f"{done:,} of {len(inputs):,} inputs; free space (or use another --out) and re-run the same "
                              "command: it resumes after the last finished shard") from None


def _same_settings(out: Path, settings: dict) -> None:
    old = json.loads((out / "settings.json").read_text())
    old.pop("input_fingerprint", None)  # checked by _same_input
    if old != settings:
        diff = sorted(k for k in settings if old.get(k) != settings.get(k))
        raise FastFTError(f"{out} holds a store made with different settings ({', '.join(diff)}); use a new --out or the same settings")


def input_fingerprint(root: Path, inputs: list[Input]) -> str:
    """sha256 of the input list as the writer will use it: each input's split, wnid, exact path bytes, size and mtime
    (inside an archive: its offset and size, and the archive's size and mtime). A resume compares it with the one
    recorded when the store was started (``settings.json``): a renamed, added, removed or rewritten file changes it.
    The files are stat'ed by threads (on a network file system each stat is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    def stat(path: Path) -> str:
        try:
            st = path.stat()
            return f"{st.st_size} {st.st_mtime_ns}"
        except OSError:  # gone since the scan: the reader rejects it; the fingerprint still differs from a present file
            return "missing"
    archives = {a: stat(root / a) for a in sorted({x.archive for x in inputs if x.archive})}
    paths = [root / x.source for x in inputs if not x.archive]
    blocks = [paths[i:i + 1024] for i in range(0, len(paths), 1024)]  # a task per block: 1.28M futures cost seconds
    with ThreadPoolExecutor(16) as pool:
        it = itertools.chain.from_iterable(pool.map(lambda b: [stat(p) for p in b], blocks))
    d = hashlib.sha256()
    for a, st in archives.items():
        d.update(b"archive\0" + os.fsencode(a) + f"\0{st}\n".encode())
    for x in inputs:
        where = f"{x.offset} {x.size}" if x.archive else next(it)
        d.update(f"{x.split}\0{x.wnid}\0".encode() + os.fsencode(x.source) + f"\0{where}\n".encode())
    return d.hexdigest()


def _same_input(out: Path, fingerprint: str, finished: bool) -> bool:
    """Whether the store in ``out`` was started on the same input (see :func:`input_fingerprint`). A finished store
    of another input is an error (it may be in use: never removed); an unfinished one is started over (False)."""
    old = json.loads((out / "settings.json").read_text()).get("input_fingerprint")
    if old == fingerprint or (finished and old is None):  # (a store finished before fingerprints: its settings match)
        return True
    if finished:
        raise FastFTError(f"{out} is a finished store of a different input (files were renamed, added, removed or changed "
                          "since it was written); use a new --out, or remove it to shard again")
    why = "was started before inputs were fingerprinted" if old is None else "was started on a different input (files were renamed, added, removed or changed)"
    print(f"fastft shard: the unfinished store {out} {why}: starting over", file=sys.stderr, flush=True)
    return False


def _start_over(out: Path) -> None:
    """Remove what a writer leaves in an unfinished store (its shards, records and settings), and nothing else."""
    pattern = re.compile(r"(train|val)-\d{6}\.(tar|idx|json)(\.tmp)?|settings\.json")
    for p in out.iterdir():
        if pattern.fullmatch(p.name) or p.name.endswith(".tmp"):
            p.unlink()


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the main process, which stops them (no traceback from each worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"


def _free(path: Path) -> str:
    return _size(shutil.disk_usage(path).free)


def _check_space(out: Path, records: list[dict], total: int) -> None:
    """After each shard: project the bytes the inputs not yet sharded will need (at the mean so far, over a seeded
    shuffle of every class) and stop now, rather than hours later, if the disk cannot hold them."""
    done = sum(r["consumed"] for r in records)
    need = (total - done) * sum(r["bytes"] for r in records) / max(done, 1)
    free = shutil.disk_usage(out).free
    if need > free:
        raise FastFTError(f"the store {out} needs about {_size(need)} more for its {total - done:,} remaining inputs "
                          f"(at {_size(sum(r['bytes'] for r in records) / max(done, 1))} each so far) and only "
                          f"{_size(free)} are free; free space (or use another --out) and re-run the same command: it "
                          "resumes after the last finished shard")


def _write_shards(root: Path, out: Path, cfg: ShardConfig, h, inputs: list[Input], pool, spool: str, records: list[dict], pbar,
                  stop_after_shards: int | None) -> None:
    """The shard loop of :func:`write_store`: per split, skip finished shards, then fill shards in the seeded order."""
    limit = cfg.shard_mb * 1e6
    written_new = 0
    for split in ("train", "val"):
        items = [x for x in inputs if x.split == split]
        random.Random(f"fastft-shard/{cfg.seed}/{split}").shuffle(items)
        pos, index = 0, 0
        while (rp := out / f"{split}-{index:06d}.json").exists():  # resume: trust completed shards
            rec = json.loads(rp.read_text())
            records.append(rec)
            pos += rec["consumed"]
            index += 1
            pbar.update(rec["consumed"])
        if pos >= len(items):
            continue
        writer = _ShardWriter(out, split, index)
        jobs = ((str(root / (x.archive or x.source)), (x.offset, x.size) if x.archive else None, cfg.resize, cfg.quality,
                 x.reason)
                for x in items[pos:])
        for x, (jpg, info) in zip(items[pos:], bounded_imap(pool, _process, jobs, spool)):
            writer.consumed += 1
            if jpg is None:
                writer.rejected.append({"source": encode_source(x.source), "split": x.split, "wnid": x.wnid, "reason": info})
            else:
                writer.add(x, h.label[x.wnid], jpg, info)
            pbar.update(1)
            if writer.bytes >= limit:
                records.append(writer.close())
                written_new += 1
                if stop_after_shards is not None and written_new >= stop_after_shards:
                    pbar.close()
                    raise KeyboardInterrupt(f"stopped after {written_new} shards (test hook)")
                _check_space(out, records, len(inputs))
                index += 1
                writer = _ShardWriter(out, split, index)
        if writer.consumed:
            records.append(writer.close())
        else:
            writer.tf.close()
            writer.tmp.unlink()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="shard", disable=not enabled, smoothing=0.1)


def _finish(out: Path, records: list[dict], settings: dict, scan_info: dict, secs: float) -> dict:
    rows = [r for rec in records for r in rec["rows"]]
    rejected = [r for rec in records for r in rec["rejected"]]
    written = len(rows)
    if written + len(rejected) != settings["inputs"]:
        raise FastFTError(f"ledger does not balance: {settings['inputs']} inputs != {written} written + {len(rejected)} rejected")
    buf = io.StringIO()
    w = csv.DictWriter(buf, SAMPLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as f:
        f.write(buf.getvalue().encode())
    fsync_write(out / "samples.csv.gz", gz.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["source", "split", "wnid", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(sorted(rejected, key=lambda r: r["source"]))
    fsync_write(out / "rejected.csv", buf.getvalue().encode())
    empty = _emptied_classes(rows, rejected, settings["allow_missing"], out)  # after rejected.csv: it says why
    kinds = Counter(r["kind"] for r in rows)
    manifest = {
        "format": "fastft-store", "store_version": STORE_VERSION, "settings": settings, "val_layout": scan_info["val_layout"],
        "missing_classes": scan_info["missing"] + empty, "skipped_folders": scan_info["skipped_folders"],
        "totals": {"inputs": settings["inputs"], "written": written, "rejected": len(rejected),
                   "by_split": dict(Counter(r["split"] for r in rows)), "classes": len({r["wnid"] for r in rows}),
                   "bytes": sum(r["bytes"] for r in records)},
        "input_kinds": dict(sorted(kinds.items())),
        "rejected_reasons": dict(Counter(r["reason"].split(" (")[0] for r in rejected)),
        "shards": [{k: rec[k] for k in ("name", "split", "samples", "bytes", "sha256", "idx_sha256", "classes")} for rec in records],
        "files": {"samples.csv.gz": sha256_file(out / "samples.csv.gz"), "rejected.csv": sha256_file(out / "rejected.csv")},
    }
    fsync_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    manifest["_secs"] = secs
    return manifest

