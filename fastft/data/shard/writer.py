"""Writing a store's files: the shard tars (fixed tar metadata, so the same input gives the same bytes), their DALI
indexes and per-shard records (the commit marker a resume trusts), the disk-space check after each shard, and, last,
the sample index, the ledger of rejected inputs (``rejected.csv``) and the manifest."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from ...errors import FastFTError
from ..store import CLASSES_FILE, SAMPLE_COLUMNS, dali_index, encode_label, encode_source, fsync_write, sha256_file
from ..sources import Input


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


class _ShardWriter:
    def __init__(self, out: Path, split: str, index: int, version: int):
        self.version = version  # the store's format version: how .cls holds the label (encode_label)
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
        cls = encode_label(label, self.version)
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
    fsync_write(out / CLASSES_FILE, "".join(f"{c}\n" for c in scan_info["classes"]).encode())  # line i = label i
    empty = _emptied_classes(rows, rejected, settings["allow_missing"], out)  # after rejected.csv: it says why
    kinds = Counter(r["kind"] for r in rows)
    manifest = {
        "format": "fastft-store", "store_version": settings["store_version"], "settings": settings, "val_layout": scan_info["val_layout"],
        "missing_classes": scan_info["missing"] + empty, "skipped_folders": scan_info["skipped_folders"],
        "totals": {"inputs": settings["inputs"], "written": written, "rejected": len(rejected),
                   "by_split": dict(Counter(r["split"] for r in rows)), "classes": len({r["wnid"] for r in rows}),
                   "bytes": sum(r["bytes"] for r in records)},
        "input_kinds": dict(sorted(kinds.items())),
        "rejected_reasons": dict(Counter(r["reason"].split(" (")[0] for r in rejected)),
        "shards": [{k: rec[k] for k in ("name", "split", "samples", "bytes", "sha256", "idx_sha256", "classes")} for rec in records],
        "files": {"samples.csv.gz": sha256_file(out / "samples.csv.gz"), "rejected.csv": sha256_file(out / "rejected.csv"),
                  CLASSES_FILE: sha256_file(out / CLASSES_FILE)},
        "vocabulary": {"file": CLASSES_FILE, "classes": len(scan_info["classes"]),
                       "kind": "ilsvrc2012" if settings.get("dataset", "ilsvrc2012") == "ilsvrc2012" else "names"},
    }
    fsync_write(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    manifest["_secs"] = secs
    return manifest
