"""ILSVRC2012's validation labels as they ship: the devkit's ground truth + ``meta.mat`` (a folder, or the downloaded
``ILSVRC2012_devkit_t12.tar.gz`` read in place) and Kaggle's ``LOC_val_solution.csv``. Shared by the sources that read
a flat ``val/`` (a tree's, or the val archive's). Every label is checked before any work."""
from __future__ import annotations

import csv
import io
import re
import tarfile
from pathlib import Path

import numpy as np

from ...errors import FastFTError
from ..taxonomy import load

DEVKIT_TGZ, DEVKIT_DIR = "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12"
GROUND_TRUTH = f"{DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_CSV = "LOC_val_solution.csv"
_VAL_NAME = re.compile(r"ILSVRC2012_val_\d{8}$")


def _devkit_ids(meta) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid from the devkit's meta.mat (a path or a file object; IDs are NOT sorted wnid order)."""
    from scipy.io import loadmat

    syn = loadmat(meta, squeeze_me=True)["synsets"]
    out = {}
    for s in np.atleast_1d(syn):
        if int(s["num_children"]) == 0:
            out[int(s["ILSVRC2012_ID"])] = str(s["WNID"])
    return out


def val_labels(layout: str, label_file: Path) -> dict[str, str]:
    """Validation image stem (``ILSVRC2012_val_00000001``) -> wnid, from the devkit's ground truth + meta.mat (a
    devkit folder, or the downloaded ``ILSVRC2012_devkit_t12.tar.gz`` read in place) or Kaggle's LOC_val_solution.csv.
    Every label is checked before any work: a line that is not an ID / wnid, or an image given two labels, is an
    error naming the file and line."""
    if layout == "devkit":
        if label_file.name.endswith(".tar.gz"):
            try:
                with tarfile.open(label_file, "r:gz") as t:
                    gt = t.extractfile(GROUND_TRUTH).read()
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


def val_label(name: str, labels: dict[str, str], where: str, label_file: str) -> str:
    """The wnid of the flat val file ``name``; "" for a file that is not a val image by its name (``.DS_Store``, a
    ``Thumbs.db``: rejected with that reason, as non-images in train/ are); an error for a val image with no label."""
    stem = Path(name).name.split(".")[0]
    if stem in labels:
        return labels[stem]
    if _VAL_NAME.match(stem):
        raise FastFTError(f"{where} has no label in {label_file}")
    return ""
