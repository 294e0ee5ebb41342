"""The shard store: ILSVRC2012 → WebDataset tar shards indexed by WordNet synset, its verification, and subset views.

``write_store`` (``fastft shard``) reads ILSVRC2012 once — an extracted tree, or the downloaded ``.tar`` files read in
place — and writes, under the output directory::

    settings.json                 the settings the store was started with (a resume must match them)
    train-000000.tar …            samples ``<key>.jpg`` (RGB JPEG, pre-resized) + ``<key>.cls`` (int32 LE label, 1000-class order)
    train-000000.idx …            DALI index (``v1.2 <n>``, then ``jpg <offset> <size> <name> cls <offset> <size> <name>`` per sample)
    train-000000.json …           per-shard record, written when the shard is complete (what a resume trusts)
    val-000000.tar/.idx/.json     the same for the validation split
    samples.csv.gz                the sample index: key, wnid, label, split, shard, byte offsets/sizes, source path, input kind
    rejected.csv                  the ledger: every input that was not written, with its reason
    manifest.json                 written last: settings, per-shard samples/bytes/sha256/class histogram, totals, hashes

Nothing is lost or silent: every input file is either written (converted to RGB JPEG if it was CMYK, grayscale, PNG,
RGBA, …, and counted per kind) or listed in ``rejected.csv`` with a reason; ``inputs = written + rejected`` is checked.
Output is deterministic (seeded global shuffle per split, fixed tar metadata, ordered workers) and resumable (shards
are written under temporary names and renamed when complete; a re-run skips completed shards).

A *view* (``resolve``) is a subset of the store without copying data: per-shard filtered DALI index files listing only
the selected samples, plus the subset's label map (0…C−1) and the selected keys.
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
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .errors import FastFTError
from .taxonomy import load

STORE_VERSION = 1
SAMPLE_COLUMNS = ["key", "wnid", "label", "split", "shard", "jpg_offset", "jpg_size", "cls_offset", "source", "kind"]
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
        _parse_resize(self.resize)
        if not 1 <= self.quality <= 100:
            raise FastFTError(f"--quality must be 1..100, got {self.quality}")
        if self.shard_mb <= 0:
            raise FastFTError(f"--shard-mb must be positive, got {self.shard_mb}")
        if self.val_layout not in ("auto", "folders", "devkit", "kaggle"):
            raise FastFTError(f"--val-layout must be auto, folders, devkit or kaggle, got {self.val_layout!r}")


def _parse_resize(spec: str):
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if m:
        return ("exact", int(m[1]), int(m[2]))
    m = re.fullmatch(r"short:(\d+)", spec)
    if m:
        return ("short", int(m[1]), int(m[1]))
    if spec == "none":
        return ("none", 0, 0)
    raise FastFTError(f"--resize must be WxH (e.g. 256x256), short:N or none; got {spec!r}")


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
    devkit folder, or the downloaded ``ILSVRC2012_devkit_t12.tar.gz`` read in place) or Kaggle's LOC_val_solution.csv."""
    if layout == "devkit":
        if label_file.name.endswith(".tar.gz"):
            try:
                with tarfile.open(label_file, "r:gz") as t:
                    gt = t.extractfile(f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt").read().decode()
                    meta = io.BytesIO(t.extractfile(f"{DEVKIT_DIR}/data/meta.mat").read())
            except (KeyError, tarfile.TarError, OSError, EOFError) as e:
                raise FastFTError(f"{label_file} is not a readable ILSVRC2012 devkit (needs data/meta.mat and "
                                  f"data/ILSVRC2012_validation_ground_truth.txt): {e}") from None
        else:
            meta = label_file.parent / "meta.mat"
            if not meta.exists():
                raise FastFTError(f"devkit layout needs {meta} to map ILSVRC2012_IDs to wnids")
            gt, meta = label_file.read_text(), str(meta)
        ids = _devkit_ids(meta)
        return {f"ILSVRC2012_val_{i:08d}": ids[int(x)] for i, x in enumerate(gt.split(), 1)}
    labels = {}
    with open(label_file, newline="") as f:
        for row in csv.DictReader(f):
            labels[row["ImageId"]] = row["PredictionString"].split()[0]
    return labels


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
            labels = {}
            for m, _, _ in files:
                stem = Path(m).name.split(".")[0]
                if stem not in by_stem:
                    raise FastFTError(f"{VAL_TAR}: {m} has no label in {label_files[layout][0].name}")
                labels[m] = by_stem[stem]
        wanted = set(cfg.classes or h.wnids)
        inputs += [Input("val", labels[m], f"{VAL_TAR}/{m}", archive=VAL_TAR, offset=o, size=k)
                   for m, o, k in files if labels[m] in wanted]
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
    present, missing, unknown = _classes(_entries(data_root / "train", dirs=True), cfg, "train/ folder")
    wanted_set = set(cfg.classes or h.wnids)
    inputs: list[Input] = []
    for w in present:
        files = _entries(data_root / "train" / w)
        if not files:
            raise FastFTError(f"class folder train/{w} is empty")
        inputs += [Input("train", w, rel(data_root / "train" / w, f)) for f in files]
    layout, label_file = _detect_val_layout(root, data_root, cfg.val_layout)
    vdir = data_root / "val"
    if layout == "folders":
        for d in _entries(vdir, dirs=True):
            if d not in h.label:
                if cfg.skip_unknown:
                    continue
                raise FastFTError(f"val/ has a folder that is not an ILSVRC2012 wnid: {d}")
            if d in wanted_set:
                inputs += [Input("val", d, rel(vdir / d, f)) for f in _entries(vdir / d)]
    elif layout in ("devkit", "kaggle"):
        labels = _val_labels(layout, label_file)
        for f in _entries(vdir):
            stem = f.split(".")[0]
            if stem not in labels:
                raise FastFTError(f"val/{f} has no label in {label_file.name}")
            if labels[stem] in wanted_set:
                inputs.append(Input("val", labels[stem], rel(vdir, f)))
    return _assign_keys(inputs), {"val_layout": layout, "missing": missing, "skipped_folders": unknown}


def _entries(d: Path, dirs: bool = False) -> list[str]:
    """Sorted names of the regular files (or folders) in ``d``. ``os.scandir`` knows each entry's type from the
    directory listing, so 1.28M training files cost no stat calls (which on a network file system add minutes)."""
    with os.scandir(d) as it:
        return sorted(e.name for e in it if (e.is_dir() if dirs else e.is_file()))


def _assign_keys(inputs: list[Input]) -> list[Input]:
    """Keys safe for WebDataset (no dots: it splits the key at the first one) and unique across the whole store."""
    out, seen = [], Counter()
    for x in inputs:
        name = Path(x.source).name
        stem = _SAFE.sub("-", name.rsplit(".", 1)[0] if "." in name else name).strip("-") or "img"
        if not stem.startswith(x.wnid) and x.split == "train":
            stem = f"{x.wnid}_{stem}"
        key = stem
        seen[stem] += 1
        if seen[stem] > 1:  # `a.b.JPEG` vs `a-b.JPEG`, `x.JPEG` vs `x.jpg`
            key = f"{stem}-{seen[stem]}"
        out.append(replace(x, key=key))
    return out


# ---------------------------------------------------------------- per-image work (runs in worker processes)
def _process(args) -> tuple[bytes | None, str]:
    """Decode, normalise to RGB, resize and re-encode one input. Returns (jpeg, kind) or (None, reason)."""
    path, member, resize, quality = args
    from PIL import Image, UnidentifiedImageError

    try:
        raw = _read_member(path, *member) if member else Path(path).read_bytes()
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    if not raw:
        return None, "0-byte file"
    fmt = "image"
    try:
        im = Image.open(io.BytesIO(raw))
        fmt, mode = im.format, im.mode
        mode_kind, w, h = _parse_resize(resize)
        if fmt == "JPEG" and mode_kind != "none":
            im.draft("RGB" if mode == "RGB" else None, _target_size(im.size, mode_kind, w, h))  # DCT-domain downscale: fast, exact enough
        im.load()
    except UnidentifiedImageError:
        return None, f"not an image ({_sniff(raw)})"
    except (OSError, SyntaxError, ValueError) as e:
        return None, f"undecodable {fmt} ({e})"
    kind = {"RGB": "rgb", "L": "grayscale", "CMYK": "cmyk", "RGBA": "rgba", "LA": "grayscale-alpha", "P": "palette"}.get(mode, mode.lower())
    if fmt != "JPEG":
        kind = f"{fmt.lower()}-{kind}"
    if mode_kind == "none" and fmt == "JPEG" and mode == "RGB":
        return raw, kind  # keep the original bytes
    if mode != "RGB":
        im = im.convert("RGB")
    if mode_kind != "none":
        size = _target_size(im.size, mode_kind, w, h)
        if size != im.size:
            im = im.resize(size, Image.BILINEAR)
    b = io.BytesIO()
    im.save(b, "JPEG", quality=quality)
    return b.getvalue(), kind


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


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path, progress=None) -> str:
    """sha256 of a file; ``progress(n)`` is told every chunk's size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def dali_index(tar_path: Path) -> str:
    """The DALI ``v1.2`` index text of a tar (same format and content as DALI's ``wds2idx``)."""
    groups: list[list[tuple]] = []
    last = None
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if not m.isreg():
                continue
            base, ext = m.name.split(".", 1)
            if base != last:
                groups.append([])
                last = base
            groups[-1].append((ext, m.offset_data, m.size, m.name))
    lines = [f"v1.2 {len(groups)}"] + [" ".join(" ".join(map(str, c)) for c in g) for g in groups]
    return "\n".join(lines) + "\n"


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
                          "jpg_size": len(jpg), "source": x.source, "kind": kind})

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
        _fsync_write(self.out / f"{self.name}.idx", idx.encode())
        rec = {"name": self.name, "split": self.split, "samples": len(self.rows), "bytes": tar.stat().st_size,
               "sha256": _sha256(tar), "idx_sha256": hashlib.sha256(idx.encode()).hexdigest(),
               "classes": dict(sorted(Counter(r["wnid"] for r in self.rows).items())),
               "consumed": self.consumed, "rows": self.rows, "rejected": self.rejected}
        # the record is the commit marker: a shard without it is redone on resume
        _fsync_write(self.out / f"{self.name}.json", json.dumps(rec).encode())
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
    out.mkdir(parents=True, exist_ok=True)
    with lock_file(out / ".lock", f"the store {out}"):  # two `fastft shard` on one store would interleave shards
        sp = out / "settings.json"
        if sp.exists():
            old = json.loads(sp.read_text())
            if old != settings:
                diff = sorted(k for k in settings if old.get(k) != settings.get(k))
                raise FastFTError(f"{out} holds a store made with different settings ({', '.join(diff)}); use a new --out or the same settings")
            if (out / "manifest.json").exists():
                return json.loads((out / "manifest.json").read_text())
        else:
            if any(p.name != ".lock" for p in out.iterdir()):
                raise FastFTError(f"{out} is not empty and holds no fastft store; choose an empty or new directory")
            _fsync_write(sp, json.dumps(settings, indent=1).encode())
        for tmp in out.glob("*.tmp"):
            tmp.unlink()

        records: list[dict] = []
        # fork is cheapest, but forking a process that already runs DALI's thread pools can deadlock: spawn then
        import sys

        ctx = get_context("fork" if hasattr(os, "fork") and "nvidia.dali" not in sys.modules else "spawn")
        workers = workers or os.cpu_count() or 1
        t0 = time.time()
        pbar = _progress(len(inputs), progress)
        try:
            with ctx.Pool(workers, initializer=_ignore_sigint) as pool:
                _write_shards(root, out, cfg, h, inputs, pool, records, pbar, stop_after_shards)
            pbar.close()
            return _finish(out, records, settings, scan_info, time.time() - t0)
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


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the main process, which stops them (no traceback from each worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def lock_file(path: Path, what: str):
    """An exclusive lock on ``path`` (an empty file) for as long as the returned file stays open; it goes with the
    process however that ends. A second process asking for it gets a :class:`FastFTError` naming ``what``."""
    import fcntl

    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FastFTError(f"{what} is being written by another process right now (it holds {path}); wait for it to "
                          "finish, or stop it and re-run") from None
    return f


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


def bounded_imap(pool, fn, jobs, window: int = 2048, chunksize: int = 8):
    """``pool.imap(fn, jobs)`` (results in order) with at most two windows of jobs submitted ahead of the consumer.
    ``imap`` alone queues every job at once and keeps every result the consumer has not taken yet: with 1.28M images
    and a writer slower than the workers (a network file system), finished JPEGs would pile up in memory."""
    it = iter(jobs)
    pending: collections.deque = collections.deque()
    while True:
        batch = list(itertools.islice(it, window))
        if batch:
            pending.append(pool.imap(fn, batch, chunksize))
        if len(pending) == 2 or (pending and not batch):  # the next window runs while this one is consumed
            yield from pending.popleft()
        if not pending:
            return


def _write_shards(root: Path, out: Path, cfg: ShardConfig, h, inputs: list[Input], pool, records: list[dict], pbar,
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
        jobs = ((str(root / (x.archive or x.source)), (x.offset, x.size) if x.archive else None, cfg.resize, cfg.quality)
                for x in items[pos:])
        for x, (jpg, info) in zip(items[pos:], bounded_imap(pool, _process, jobs)):
            writer.consumed += 1
            if jpg is None:
                writer.rejected.append({"source": x.source, "split": x.split, "wnid": x.wnid, "reason": info})
            else:
                writer.add(x, h.label[x.wnid], jpg, info)
            pbar.update(1)
            if writer.bytes >= limit:
                records.append(writer.close())
                written_new += 1
                if stop_after_shards is not None and written_new >= stop_after_shards:
                    pool.terminate()
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
    _fsync_write(out / "samples.csv.gz", gz.getvalue())
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["source", "split", "wnid", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(sorted(rejected, key=lambda r: r["source"]))
    _fsync_write(out / "rejected.csv", buf.getvalue().encode())
    kinds = Counter(r["kind"] for r in rows)
    manifest = {
        "format": "fastft-store", "store_version": STORE_VERSION, "settings": settings, "val_layout": scan_info["val_layout"],
        "missing_classes": scan_info["missing"], "skipped_folders": scan_info["skipped_folders"],
        "totals": {"inputs": settings["inputs"], "written": written, "rejected": len(rejected),
                   "by_split": dict(Counter(r["split"] for r in rows)), "classes": len({r["wnid"] for r in rows}),
                   "bytes": sum(r["bytes"] for r in records)},
        "input_kinds": dict(sorted(kinds.items())),
        "rejected_reasons": dict(Counter(r["reason"].split(" (")[0] for r in rejected)),
        "shards": [{k: rec[k] for k in ("name", "split", "samples", "bytes", "sha256", "idx_sha256", "classes")} for rec in records],
        "files": {"samples.csv.gz": _sha256(out / "samples.csv.gz"), "rejected.csv": _sha256(out / "rejected.csv")},
    }
    _fsync_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    manifest["_secs"] = secs
    return manifest


# ---------------------------------------------------------------- reading, verification
@dataclass
class Store:
    """An opened, complete store (``manifest.json`` present)."""
    path: Path
    manifest: dict
    sha256: str  # of manifest.json: views record it

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def classes(self) -> list[str]:
        """The wnids this store holds training images of, sorted (a partial store's class universe)."""
        return sorted({w for s in self.shards if s["split"] == "train" for w in s["classes"]})

    def samples(self):
        import pandas as pd

        return pd.read_csv(self.path / "samples.csv.gz", dtype={"label": "int32", "jpg_offset": "int64", "jpg_size": "int64", "cls_offset": "int64"})


def fill_store_params(params: dict, store: str | Path | None, what: str) -> dict:
    """Construction parameters given as ``store`` (e.g. ``within: store``) → the training classes ``store`` holds."""
    if not any(v == "store" for v in params.values()):
        return params
    if not store:
        raise FastFTError(f"{what} takes classes from a store (a parameter given as store): give --store")
    held = open_store(store).classes
    return {k: (held if v == "store" else v) for k, v in params.items()}


def open_store(path: str | Path) -> Store:
    path = Path(path)
    mp = path / "manifest.json"
    if not mp.exists():
        hint = " (an unfinished `fastft shard`: re-run it to complete)" if (path / "settings.json").exists() else ""
        raise FastFTError(f"{path} is not a fastft store: no manifest.json{hint}")
    raw = mp.read_bytes()
    m = json.loads(raw)
    if m.get("format") != "fastft-store":
        raise FastFTError(f"{mp} is not a fastft store manifest")
    return Store(path, m, hashlib.sha256(raw).hexdigest())


def _sha256_many(paths: list[Path], progress: bool = False) -> list[str]:
    """sha256 of each file, several at a time (hashlib releases the GIL on large reads), with a progress bar in bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, desc="sha256", disable=not progress) as bar, \
            ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda p: _sha256(p, bar.update), paths))


def verify(path: str | Path, full: bool = True, progress: bool = False) -> list[str]:
    """Problems with a store (empty list = fine). ``full`` re-hashes every shard and file; otherwise shards are
    checked by size, the small index files by hash, and the other files by presence."""
    try:
        st = open_store(path)
    except FastFTError as e:
        return [str(e)]
    problems, to_hash = [], []  # (path, expected sha256, what a mismatch means)
    for s in st.shards:
        tar, idx = st.path / f"{s['name']}.tar", st.path / f"{s['name']}.idx"
        if not tar.exists():
            problems.append(f"{tar.name}: missing")
        elif tar.stat().st_size != s["bytes"]:
            problems.append(f"{tar.name}: size {tar.stat().st_size} != {s['bytes']} in the manifest (truncated or replaced)")
        elif full:
            to_hash.append((tar, s["sha256"], f"{tar.name}: sha256 mismatch (corrupted)"))
        if not idx.exists():
            problems.append(f"{idx.name}: missing")
        elif hashlib.sha256(idx.read_bytes()).hexdigest() != s["idx_sha256"]:
            problems.append(f"{idx.name}: does not match the manifest (truncated or edited)")
    for name, digest in st.manifest["files"].items():
        p = st.path / name
        if not p.exists():
            problems.append(f"{name}: missing")
        elif full:
            to_hash.append((p, digest, f"{name}: sha256 mismatch"))
    for (_, want, msg), got in zip(to_hash, _sha256_many([p for p, _, _ in to_hash], progress)):
        if got != want:
            problems.append(msg)
    return problems


# ---------------------------------------------------------------- views
@dataclass
class View:
    """A resolved subset of a store: what the pipelines read."""
    path: Path
    meta: dict = field(default_factory=dict)
    store_settings: dict | None = None  # the store's shard settings, kept when the view was opened with its store

    @property
    def store(self) -> Path:
        return Path(self.meta["store"])

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def resize(self) -> str:
        """The store's ``--resize`` setting: ``WxH``, ``short:N`` or ``none``."""
        return (self.store_settings or open_store(self.store).manifest["settings"])["resize"]

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of every stored image when the store was sharded at a fixed size, else None."""
        resize = self.resize
        return None if resize == "none" or resize.startswith("short:") else tuple(int(d) for d in resize.split("x"))

    @property
    def min_side(self) -> int | None:
        """The shortest side any stored image can have (None for a ``--resize none`` store: original sizes)."""
        kind, w, h = _parse_resize(self.resize)
        return None if kind == "none" else min(w, h)

    def check_crop(self, crop: int) -> None:
        """A crop larger than the stored images would be zero-padded on every sample: name it before any work."""
        side = self.min_side
        if side is not None and crop > side:
            raise FastFTError(f"crop {crop} is larger than the store's images (--resize {self.resize}): every crop would be "
                              f"zero-padded; use crop <= {side}, or shard a store with a larger --resize")

    def label_lut(self) -> np.ndarray:
        """1000-entry table: store label -> view label (-1 = not in the view)."""
        h = load()
        lut = np.full(len(h.wnids), -1, np.int32)
        for i, w in enumerate(self.classes):
            lut[h.label[w]] = i
        return lut

    def split(self, split: str) -> dict:
        if split not in self.meta["splits"]:
            raise FastFTError(f"view {self.path} has no {split!r} split; it has {list(self.meta['splits'])}")
        return self.meta["splits"][split]

    def files(self, split: str) -> tuple[list[str], list[str]]:
        """(tar paths, filtered index paths) of a split, only shards with selected samples."""
        s = self.split(split)
        return ([str(self.store / f"{n}.tar") for n in s["shards"]], [str(self.path / split / f"{n}.idx") for n in s["shards"]])

    def keys(self, split: str):
        import pandas as pd

        return pd.read_csv(self.path / f"{split}.csv.gz")


def verify_shards(store: str | Path, names: list[str], st: Store | None = None) -> list[str]:
    """Full (sha256) verification of some shards, remembered per shard in ``<store>/.verified/`` with the file's size
    and mtime, so each shard is hashed once however many runs read it; a changed file is hashed again."""
    st = st or open_store(store)
    by_name = {s["name"]: s for s in st.shards}
    stamp_dir = st.path / ".verified"
    mismatch = f"does not match the manifest (corrupted or truncated); run `fastft verify {st.path}`"
    problems, todo = [], []
    for n in names:
        tar = st.path / f"{n}.tar"
        if not tar.exists():
            problems.append(f"{tar.name}: missing")
            continue
        stat = tar.stat()
        stamp = f"{by_name[n]['sha256']} {stat.st_size} {stat.st_mtime_ns}"
        sp = stamp_dir / n
        if sp.exists() and sp.read_text() == stamp:
            continue
        if stat.st_size != by_name[n]["bytes"]:
            problems.append(f"{tar.name}: {mismatch}")
            continue
        todo.append((n, tar, stamp, sp))
    for (n, tar, stamp, sp), digest in zip(todo, _sha256_many([t[1] for t in todo], progress=len(todo) > 8)):
        if digest != by_name[n]["sha256"]:
            problems.append(f"{tar.name}: {mismatch}")
            continue
        try:
            stamp_dir.mkdir(exist_ok=True)
            tmp = sp.with_name(f"{n}.{os.getpid()}.tmp")
            tmp.write_text(stamp)
            os.replace(tmp, sp)
        except OSError:  # a read-only store is still usable; it is just hashed again next time
            pass
    return problems


def open_view(path: str | Path, check_store: bool = True) -> View:
    path = Path(path)
    vp = path / "view.json"
    if not vp.exists():
        raise FastFTError(f"{path} is not a fastft view (no view.json); make one with `fastft subsets resolve`")
    v = View(path, json.loads(vp.read_text()))
    if check_store:
        try:
            st = open_store(v.store)
        except FastFTError as e:  # e.g. a store copied to node-local disk: the view still names the old path
            raise FastFTError(f"view {path} reads the store at {v.store}, which failed to open ({e}). If the store moved, "
                              f"resolve the view again with `fastft subsets resolve SPEC --store NEW_PATH`, or train with "
                              f"spec=… set=… store=NEW_PATH") from None
        if st.sha256 != v.meta["manifest_sha256"]:
            raise FastFTError(f"view {path} was made from another version of the store {v.store} (manifest changed); resolve it again")
        for split in v.meta["splits"]:
            for idx in v.files(split)[1]:
                if not Path(idx).exists():
                    raise FastFTError(f"view index file {idx} is missing; resolve the view again")
        # only the shards this view reads: hashed once, then checked by size and mtime (see verify_shards)
        bad = verify_shards(v.store, sorted({n for s in v.meta["splits"].values() for n in s["shards"]}), st)
        if bad:
            raise FastFTError(f"store {v.store} is damaged: {'; '.join(bad[:5])}")
        v.store_settings = st.manifest["settings"]
    return v


def shared_view(spec_path: str | Path, set_name: str, store_path: str | Path, views_dir: str | Path,
                existing_only: bool = False) -> Path:
    """The view of one set of a spec file on a store, resolved once into ``<views_dir>/<spec hash>-<set>-<manifest>``
    and reused by every run that asks for it (concurrent resolvers race safely: write to a temp dir, rename)."""
    import shutil

    from .subsets import load_spec

    spec = load_spec(spec_path)
    st = open_store(store_path)
    path = Path(views_dir) / f"{spec.hash[:12]}-{set_name}-{st.sha256[:8]}"
    if existing_only or (path / "view.json").exists():
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    resolve(spec, set_name, store_path, tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process resolved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve(spec, set_name: str, store_path: str | Path, out: str | Path) -> View:
    """Turn one class set of a subset spec into a view of a store: filtered index files, label map, keys. No copy."""
    import pandas as pd

    st = open_store(store_path)
    cs = spec.set(set_name)
    df = st.samples()
    have = set(df["wnid"].unique())
    missing = [w for w in cs.classes if w not in have]
    if missing:
        raise FastFTError(f"set {set_name!r} needs {len(missing)} classes the store {st.path} does not hold (first: {missing[:5]}); "
                          "shard them or choose a spec made for this store")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lut = {w: i for i, w in enumerate(cs.classes)}
    sub = df[df["wnid"].isin(lut)].copy()
    sub["view_label"] = sub["wnid"].map(lut).astype("int32")
    short = {}
    if cs.cap is not None:
        # a class's images in one seeded order per (seed, class), whatever the set: a cap keeps its first ``cap``, so
        # smaller caps are subsets of larger ones and every set holding the class agrees (k10_n30 ⊂ k10_n60 ⊂ k100_n60):
        # across a §4.4 grid the training images differ only in number, not in draw
        parts = []
        for w, g in sub[sub["split"] == "train"].groupby("wnid", sort=True):
            keys = sorted(g["key"])
            if len(keys) < cs.cap:
                short[w] = len(keys)
            random.Random(f"fastft-cap/{spec.seed}/{w}").shuffle(keys)
            parts.append(g[g["key"].isin(set(keys[:cs.cap]))])
        sub = pd.concat(parts + [sub[sub["split"] != "train"]])
    splits = {}
    for split, g in sub.groupby("split", sort=True):
        (out / split).mkdir(exist_ok=True)
        shards = []
        for shard, gs in g.groupby("shard", sort=True):
            gs = gs.sort_values("jpg_offset")  # DALI reads in index order; keep tar order
            lines = [f"v1.2 {len(gs)}"] + [f"jpg {r.jpg_offset} {r.jpg_size} {r.key}.jpg cls {r.cls_offset} 4 {r.key}.cls" for r in gs.itertuples()]
            (out / split / f"{shard}.idx").write_text("\n".join(lines) + "\n")
            shards.append(shard)
        keys = g[["key", "wnid", "label", "view_label", "shard", "jpg_offset", "jpg_size"]].sort_values("key")
        keys.to_csv(out / f"{split}.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})
        splits[split] = {"samples": len(g), "shards": shards, "per_class_min": int(g.groupby("wnid").size().min()),
                         "keys_sha256": hashlib.sha256("\n".join(keys["key"]).encode()).hexdigest()}
    meta = {"format": "fastft-view", "store": str(st.path.resolve()), "manifest_sha256": st.sha256, "spec_hash": spec.hash,
            "construction": spec.construction, "seed": spec.seed, "set": set_name, "cap": cs.cap, "classes": list(cs.classes),
            "short_classes": short, "splits": splits}
    (out / "view.json").write_text(json.dumps(meta, indent=1) + "\n")
    return View(out, meta)
