"""Exporting a view for tools other than fastft (``fastft export``): new WebDataset shards holding only the view's
samples (:func:`export_shards`), or the list of the store's own shards the view reads (:func:`shard_urls`).

Exported shards are plain WebDataset: ``<key>.jpg`` (the stored JPEG, byte for byte) + ``<key>.cls`` (the view's
label 0…C−1 as ASCII decimal, so ``wds.WebDataset(urls).decode("pil").to_tuple("jpg", "cls")`` reads them with its
defaults), in the store's order (its seeded shuffle) and with fixed tar metadata: the same view gives the same bytes.
Next to them: a DALI index per shard, ``classes.txt`` (line ``i`` names label ``i``) and, written last,
``export.json`` (what was exported from which store version, per shard its samples, bytes and sha256).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from ..errors import FastFTError
from ..files import fsync_write
from .shard.writer import _tarinfo
from .store import dali_index, encode_label, open_store, sha256_file
from .views import View, open_view


def _splits(v: View, splits: list[str] | None) -> list[str]:
    have = list(v.meta["splits"])
    if not splits:
        return have
    unknown = [s for s in splits if s not in have]
    if unknown:
        raise FastFTError(f"view {v.path} has no split {', '.join(map(repr, unknown))}; it has {', '.join(have)}")
    return list(splits)


def shard_urls(view: str | Path | View, splits: list[str] | None = None) -> dict:
    """The store's shards a view reads, per split: ``{"urls": [absolute tar paths], "samples": n in the view,
    "shard_samples": n in those shards}`` (the shards hold other samples too: other classes, and with a per-class
    cap other images of the view's classes; their ``.cls`` is the store's label, not the view's)."""
    v = view if isinstance(view, View) else open_view(view)
    by_name = {s["name"]: s for s in open_store(v.store).shards}
    out = {}
    for split in _splits(v, splits):
        s = v.split(split)
        out[split] = {"urls": [str((v.store / f"{n}.tar").resolve()) for n in s["shards"]], "samples": s["samples"],
                      "shard_samples": sum(by_name[n]["samples"] for n in s["shards"])}
    return out


def export_shards(view: str | Path | View, out: str | Path, splits: list[str] | None = None, shard_mb: float = 256.0) -> dict:
    """Write the view's samples as new WebDataset shards ``<out>/<split>-NNNNNN.tar`` of at most about ``shard_mb``
    MB each (see the module docstring). ``out`` must be new or empty. Returns the record written to ``export.json``."""
    if shard_mb <= 0:
        raise FastFTError(f"--shard-mb must be positive, got {shard_mb}")
    v = view if isinstance(view, View) else open_view(view)  # the store checked, as training checks it
    out, chosen = Path(out), _splits(v, splits)  # a split the view lacks is named before anything is written
    if out.exists() and not out.is_dir():
        raise FastFTError(f"{out} is a file, not a directory: export into a new or empty directory")
    if out.exists() and any(out.iterdir()):
        what = ("a finished export" if (out / "export.json").exists() else
                "other files (fastft writes nothing into a directory it did not make empty: check the path)")
        raise FastFTError(f"{out} already holds {what}; export into a new or empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FastFTError(f"cannot make the export directory {out}: {e.strerror}") from None
    record = {"format": "fastft-export", "view": str(v.path.resolve()), "store": str(v.store),
              "manifest_sha256": v.meta["manifest_sha256"], "labels": "view", "classes": list(v.classes), "splits": {}}
    for split in chosen:
        record["splits"][split] = _export_split(v, split, out, shard_mb * 1e6)
    fsync_write(out / "classes.txt", "".join(f"{c}\n" for c in v.classes).encode())
    fsync_write(out / "export.json", (json.dumps(record, indent=1) + "\n").encode())
    return record


def _export_split(v: View, split: str, out: Path, limit: float) -> dict:
    """One split: the view's samples in the store's order (shard, then offset), copied into shards of ~``limit`` bytes."""
    df = v.keys(split).sort_values(["shard", "jpg_offset"])
    shards: list[dict] = []
    tf = tmp = None

    def close():
        tf.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tar = tmp.with_suffix("")
        os.replace(tmp, tar)
        idx = dali_index(tar)
        fsync_write(tar.with_suffix(".idx"), idx.encode())
        shards.append({"name": tar.stem, "samples": n, "bytes": tar.stat().st_size, "sha256": sha256_file(tar),
                       "idx_sha256": hashlib.sha256(idx.encode()).hexdigest()})

    fds: dict[str, int] = {}
    try:
        for key, label, shard, off, size in zip(df["key"].tolist(), df["view_label"].tolist(), df["shard"].tolist(),
                                                df["jpg_offset"].tolist(), df["jpg_size"].tolist()):
            if tf is None:
                tmp = out / f"{split}-{len(shards):06d}.tar.tmp"
                tf, n = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0
            if shard not in fds:
                fds[shard] = os.open(v.store / f"{shard}.tar", os.O_RDONLY)
            jpg = os.pread(fds[shard], size, off)
            if len(jpg) != size:
                raise FastFTError(f"{v.store / shard}.tar is shorter than the view says (sample {key}): the store "
                                  f"changed; run `fastft verify {v.store}`")
            cls = encode_label(label)
            tf.addfile(_tarinfo(f"{key}.jpg", len(jpg)), io.BytesIO(jpg))
            tf.addfile(_tarinfo(f"{key}.cls", len(cls)), io.BytesIO(cls))
            n += 1
            if tf.fileobj.tell() >= limit:
                close()
                tf = None
        if tf is not None:
            close()
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"samples": len(df), "shards": shards}
