"""Views: subsets of a store without copying data — per-shard filtered DALI index files listing only the selected
samples, the subset's label map (0…C−1) and the selected keys — what the loaders, the trainer and the analyses read.

A view is made from one class set of a subset spec (:func:`resolve`), shared by every run that asks for the same set
(:func:`shared_view`), and opened with its store checked (:func:`open_view`: the store's manifest unchanged, and the
shards it reads verified once, see :func:`fastft.data.store.verify_shards`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FastFTError
from ..files import fsync_write
from .store import Store, cls_size, open_store, parse_resize, verify_shards


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
        kind, w, h = parse_resize(self.resize)
        return None if kind == "none" else min(w, h)

    def check_crop(self, crop: int) -> None:
        """A crop larger than the stored images would be zero-padded on every sample: name it before any work."""
        side = self.min_side
        if side is not None and crop > side:
            raise FastFTError(f"crop {crop} is larger than the store's images (--resize {self.resize}): every crop would be "
                              f"zero-padded; use crop <= {side}, or shard a store with a larger --resize")

    def check_batch(self, batch_size: int) -> None:
        """A batch larger than the training split would make one "epoch" several passes over it (the epoch plan pads)."""
        n = self.split("train")["samples"]
        if batch_size > n:
            raise FastFTError(f"batch_size {batch_size} is larger than the training split ({n} images in {self.path}): "
                              f"use batch_size <= {n}")

    def label_lut(self) -> np.ndarray:
        """A table with an entry per class of the store's vocabulary: store label -> view label (-1 = not in the view)."""
        label = open_store(self.store).label
        lut = np.full(len(label), -1, np.int32)
        for i, w in enumerate(self.classes):
            lut[label[w]] = i
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

        # class names as text whatever they look like (a folder store's class may be "NA" or "007")
        return pd.read_csv(self.path / f"{split}.csv.gz", keep_default_na=False, dtype={"wnid": str, "key": str})


def view_tag(view) -> str:
    """Names a view by its samples (not its path), so results computed on equal views on different machines match
    (analysis results carry it; the report pairs them by it)."""
    v = view if isinstance(view, View) else open_view(view, check_store=False)
    return hashlib.sha256(json.dumps([v.meta["manifest_sha256"], v.meta["splits"]["val"]["keys_sha256"], v.classes]).encode()).hexdigest()[:10]


_INDEX_COLUMNS = ["key", "wnid", "label", "split", "shard", "jpg_offset", "jpg_size", "cls_offset"]
_index_cache: dict = {}


def _index(st: Store):
    """The columns of a store's sample index that views need, read once per process and store version: a sweep
    resolves hundreds of views of one store (1.33 M rows for ILSVRC2012)."""
    key = (str(st.path.resolve()), st.sha256)
    if key not in _index_cache:
        _index_cache.clear()
        _index_cache[key] = st.samples(_INDEX_COLUMNS)
    return _index_cache[key]


def open_view(path: str | Path, check_store: bool = True) -> View:
    path = Path(path)
    vp = path / "view.json"
    if not vp.exists():
        if not path.exists():
            raise FastFTError(f"view {path} does not exist; make one with `fastft subsets resolve` (a sweep's are in <out>/views/)")
        if (path / "manifest.json").exists():
            raise FastFTError(f"{path} is a store, not a view: a view is a subset of a store, made with "
                              f"`fastft subsets resolve SPEC --set NAME --store {path} --out VIEW` (or `subsets make all`)")
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
    and reused by every run that asks for it (concurrent resolvers race safely: write to a temp dir, rename).

    Sets of different specs often select the same samples (the INSTRU far set of §4.3, §4.4 and §4.5; a §4.4 grid
    cell of two plans): their index files are written once, in ``<views_dir>/by-content/`` (see
    :func:`view_content`), and each spec's view holds its own ``view.json`` and relative links to them."""
    from .subsets import load_spec

    spec = load_spec(spec_path)
    st = open_store(store_path)
    path = Path(views_dir) / f"{spec.hash[:12]}-{set_name}-{st.sha256[:8]}"
    if existing_only or (path / "view.json").exists():
        return path
    import shutil
    import socket

    suffix = f".tmp-{socket.gethostname()}-{os.getpid()}"  # unique across the hosts of a shared runs directory
    data = view_content(spec, set_name, st, views_dir)
    if not (data / "view.json").exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        tmp = data.with_name(data.name + suffix)
        resolve(spec, set_name, store_path, tmp)
        _publish(tmp, data)
    meta = json.loads((data / "view.json").read_text())
    meta.update(spec_hash=spec.hash, construction=spec.construction, seed=spec.seed, set=set_name, content=data.name)
    tmp = path.with_name(path.name + suffix)
    tmp.mkdir(parents=True)
    for entry in sorted(data.iterdir()):
        if entry.name != "view.json":
            try:
                (tmp / entry.name).symlink_to(Path("..") / data.parent.name / data.name / entry.name)
            except OSError:  # a file system without symbolic links: a copy
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
    fsync_write(tmp / "view.json", json.dumps(meta, indent=1) + "\n")
    _publish(tmp, path)
    return path


def view_content(spec, set_name: str, st: Store, views_dir: str | Path) -> Path:
    """Where :func:`shared_view` keeps the files of a set's view: named by all they depend on — the store's manifest,
    the classes in label order, the per-class cap and, with a cap, the seed that orders each class's images."""
    cs = spec.set(set_name)
    key = json.dumps([st.sha256, list(cs.classes), cs.cap, spec.seed if cs.cap is not None else None])
    return Path(views_dir) / "by-content" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{st.sha256[:8]}"


def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temp dir into place; if another process published it first, keep theirs."""
    import shutil

    try:
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


_KEY_COLUMNS = ["key", "wnid", "label", "view_label", "shard", "jpg_offset", "jpg_size"]


def _write_split(g, out: Path, split: str, version: int) -> dict:
    """One split of a view: a DALI index per shard it reads (samples in tar order; ``version``: the store's, which
    sizes each ``.cls``, see :func:`fastft.data.store.cls_size`) and ``<split>.csv.gz`` (the
    samples sorted by key). Built from plain lists: pandas' per-cell formatting and string sorts took most of a
    sweep's preparation at ILSVRC2012 scale."""
    import pandas as pd

    codes, names = pd.factorize(g["shard"], sort=True)
    order = np.lexsort((g["jpg_offset"].to_numpy(), codes))  # by shard, then offset
    col = {c: g[c].to_numpy()[order].tolist() for c in ("key", "jpg_offset", "jpg_size", "cls_offset", "label")}
    codes = codes[order]
    lines = [f"jpg {o} {n} {k}.jpg cls {c} {cls_size(lab, version)} {k}.cls"
             for o, n, k, c, lab in zip(col["jpg_offset"], col["jpg_size"], col["key"], col["cls_offset"], col["label"])]
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
    shards = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        shards.append(str(names[codes[a]]))
        (out / split / f"{shards[-1]}.idx").write_text(f"v1.2 {b - a}\n" + "\n".join(lines[a:b]) + "\n")
    by_key = order[sorted(range(len(order)), key=col["key"].__getitem__)]
    k, w, lab, vl, sh, o, n = (g[c].to_numpy()[by_key].tolist() for c in _KEY_COLUMNS)
    quoted = {c: _csv_field(c) for c in set(w)}  # a folder store's class names may hold commas or quotes
    w = [quoted[c] for c in w]
    text = "".join([",".join(_KEY_COLUMNS) + "\n"] + [f"{a},{b},{c},{d},{e},{f},{h}\n" for a, b, c, d, e, f, h in zip(k, w, lab, vl, sh, o, n)])
    with gzip.GzipFile(out / f"{split}.csv.gz", "wb", compresslevel=1, mtime=0) as f:  # keys hold no commas or quotes
        f.write(text.encode())
    return {"samples": len(g), "shards": shards, "per_class_min": int(g.groupby("wnid").size().min()),
            "keys_sha256": hashlib.sha256("\n".join(k).encode()).hexdigest()}


def _classes_sha256(st: Store) -> str:
    return hashlib.sha256("".join(f"{c}\n" for c in st.vocabulary).encode()).hexdigest()


def _csv_field(text: str) -> str:
    """``text`` as one CSV field (quoted where it holds a comma, a quote, a line break or edge spaces), as pandas reads it."""
    if any(ch in text for ch in ',"\r\n') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def resolve(spec, set_name: str, store_path: str | Path, out: str | Path) -> View:
    """Turn one class set of a subset spec into a view of a store: filtered index files, label map, keys. No copy."""
    import pandas as pd

    st = open_store(store_path)
    cs = spec.set(set_name)
    df = _index(st)
    have = set(df["wnid"].unique())
    missing = [w for w in cs.classes if w not in have]
    if missing:
        drawn = getattr(spec, "vocabulary", None)
        other = (f" (the spec was drawn from the {drawn['classes']} classes of another store's classes.txt)"
                 if drawn and drawn.get("sha256") != _classes_sha256(st) else "")
        raise FastFTError(f"set {set_name!r} needs {len(missing)} classes the store {st.path} does not hold (first: {missing[:5]})"
                          f"{other}; shard them or choose a spec made for this store")
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
        splits[split] = _write_split(g, out, split, st.version)
    meta = {"format": "fastft-view", "store": str(st.path.resolve()), "manifest_sha256": st.sha256, "spec_hash": spec.hash,
            "construction": spec.construction, "seed": spec.seed, "set": set_name, "cap": cs.cap, "classes": list(cs.classes),
            "short_classes": short, "splits": splits}
    fsync_write(out / "view.json", json.dumps(meta, indent=1) + "\n")
    return View(out, meta)
