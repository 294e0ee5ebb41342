"""The shard store — WebDataset tar shards indexed by WordNet synset — its format, reading and verification.

A store (written by :func:`fastft.data.shard.write_store`, ``fastft shard``) is a directory::

    settings.json                 the settings the store was started with (a resume must match them)
    train-000000.tar …            samples ``<key>.jpg`` (RGB JPEG, pre-resized) + ``<key>.cls`` (the label as ASCII decimal,
                                  WebDataset's convention; a version-1 store holds it as int32 LE; see :func:`encode_label`)
    train-000000.idx …            DALI index (``v1.2 <n>``, then ``jpg <offset> <size> <name> cls <offset> <size> <name>`` per sample)
    train-000000.json …           per-shard record, written when the shard is complete (what a resume trusts)
    val-000000.tar/.idx/.json     the same for the validation split
    samples.csv.gz                the sample index: key, wnid, label, split, shard, byte offsets/sizes, source path, input kind
                                  (``source``: the exact path bytes, see :func:`encode_source`; keys are unique in the store,
                                  ``[A-Za-z0-9_-]`` with at most one ``~<n>``, see ``fastft.data.shard.inputs._assign_keys``)
    rejected.csv                  the ledger: every input that was not written, with its reason
    classes.txt                   the store's class vocabulary: line i = the class of label i (UTF-8); an ILSVRC2012 store's
                                  is the 1000 wnids in the standard order (a store written before the file existed reads as
                                  that, see :meth:`Store.vocabulary`); hashed in the manifest's ``files``
    manifest.json                 written last: settings, per-shard samples/bytes/sha256/class histogram, totals, hashes

Subsets of a store are *views* (:mod:`fastft.data.views`). This module owns the format (what the writer and the
readers agree on) and never imports the writer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FastFTError
from ..files import fsync_write  # (fastft.data.shard imports it from here too)
from .taxonomy import load

STORE_VERSION = 2  # 2: ``.cls`` is the ASCII decimal label (plain ``webdataset`` reads it); 1: int32 little-endian
STORE_VERSIONS = (1, 2)  # what this fastft opens, verifies and trains on (and resumes writing, in the store's own version)
CLASSES_FILE = "classes.txt"
SAMPLE_COLUMNS = ["key", "wnid", "label", "split", "shard", "jpg_offset", "jpg_size", "cls_offset", "source", "kind"]


# ---------------------------------------------------------------- the format (shared with the writer, fastft.data.shard)
def parse_resize(spec: str):
    """A ``--resize`` setting → (kind, width, height): ``WxH`` exact, ``short:N`` shorter side, ``none``."""
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if m:
        return ("exact", int(m[1]), int(m[2]))
    m = re.fullmatch(r"short:(\d+)", spec)
    if m:
        return ("short", int(m[1]), int(m[1]))
    if spec == "none":
        return ("none", 0, 0)
    raise FastFTError(f"--resize must be WxH (e.g. 256x256), short:N or none; got {spec!r}")


def encode_label(label: int, version: int = STORE_VERSION) -> bytes:
    """A sample's ``.cls`` member: the label as ASCII decimal (version 2: ``int(data)`` reads it, as WebDataset's
    default decoder does) or as int32 little-endian (version 1)."""
    return str(int(label)).encode() if version >= 2 else int(label).to_bytes(4, "little", signed=True)


def cls_size(label: int, version: int = STORE_VERSION) -> int:
    """The size of a sample's ``.cls`` member (the sample index holds its offset; its size follows from the label)."""
    return len(str(int(label))) if version >= 2 else 4


_ESCAPE = re.compile(r"[%\x00-\x1f\x7f\udc80-\udcff]")


def encode_source(path: str) -> str:
    """An input's path as the sample index and ``rejected.csv`` hold it (the ``source`` column): the path as text,
    with ``%``, control characters and every byte that is not UTF-8 (a Linux name may hold any byte but ``/`` and NUL;
    Python reads those as surrogate escapes) written ``%XX``. :func:`source_bytes` gives the exact bytes back."""
    return _ESCAPE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode("utf-8", "surrogateescape")), path)


def source_bytes(source: str) -> bytes:
    """The exact path bytes of a ``source`` column value (the inverse of :func:`encode_source`; ``os.fsdecode`` of
    it opens the file)."""
    parts = re.split(r"%([0-9A-F]{2})", source)
    return b"".join(bytes([int(p, 16)]) if i % 2 else p.encode() for i, p in enumerate(parts))


def sha256_file(path: Path, progress=None) -> str:
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


def lock_file(path: Path, what: str):
    """An exclusive lock on ``path`` (an empty file) for as long as the returned file stays open; it goes with the
    process however that ends. A second process asking for it gets a :class:`FastFTError` naming ``what``."""
    import fcntl

    try:
        f = open(path, "a")
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise FastFTError(f"{what} cannot be written: {path.parent} is read-only ({e.strerror}); use a writable "
                          "directory") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FastFTError(f"{what} is being written by another process right now (it holds {path}); wait for it to "
                          "finish, or stop it and re-run") from None
    return f


# ---------------------------------------------------------------- reading, verification
@dataclass
class Store:
    """An opened, complete store (``manifest.json`` present)."""
    path: Path
    manifest: dict
    sha256: str  # of manifest.json: views record it

    @property
    def version(self) -> int:
        """The store format version (:data:`STORE_VERSION`; how ``.cls`` holds the label, :func:`encode_label`)."""
        return int(self.manifest.get("store_version", 1))

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def classes(self) -> list[str]:
        """The classes this store holds training images of, sorted (a partial store's class universe)."""
        return sorted({w for s in self.shards if s["split"] == "train" for w in s["classes"]})

    @property
    def vocabulary(self) -> list[str]:
        """The store's classes in label order (line i of ``classes.txt`` = label i). A store written before stores
        carried ``classes.txt`` is an ILSVRC2012 store: its vocabulary is the 1000 wnids in the standard order."""
        if CLASSES_FILE not in self.manifest["files"]:
            return list(load().wnids)
        key = (str(self.path), self.sha256)
        if key not in _vocabulary_cache:
            try:
                text = (self.path / CLASSES_FILE).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise FastFTError(f"{self.path / CLASSES_FILE} (the store's class list) cannot be read ({e}); "
                                  f"run `fastft verify {self.path}`") from None
            names = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
            _vocabulary_cache[key] = names
        return list(_vocabulary_cache[key])

    @property
    def label(self) -> dict[str, int]:
        """class name -> label, from :attr:`vocabulary`."""
        return {c: i for i, c in enumerate(self.vocabulary)}

    def samples(self, columns: list[str] | None = None):
        """The sample index as a DataFrame (``columns``: only these, which reads faster). Class names are read as
        text whatever they look like (a folder store's class may be called ``NA`` or ``1``)."""
        import pandas as pd

        return pd.read_csv(self.path / "samples.csv.gz", usecols=columns, keep_default_na=False,
                           dtype={"label": "int32", "jpg_offset": "int64", "jpg_size": "int64", "cls_offset": "int64",
                                  "wnid": str, "key": str, "source": str})


_vocabulary_cache: dict = {}



def fill_store_params(params: dict, store: str | Path | None, what: str) -> dict:
    """Construction parameters given as ``store`` (e.g. ``within: store``) → the training classes ``store`` holds."""
    if not any(v == "store" for v in params.values()):
        return params
    if not store:
        raise FastFTError(f"{what} takes classes from a store (a parameter given as store): give --store")
    held = open_store(store).classes
    return {k: (held if v == "store" else v) for k, v in params.items()}


_manifest_cache: dict = {}


def open_store(path: str | Path) -> Store:
    """A finished store. Its manifest is parsed once per process while the file stays the same (ILSVRC2012's is a few
    MB, and a sweep opens its store for each of hundreds of runs)."""
    path = Path(path)
    mp = path / "manifest.json"
    if not mp.exists():
        hint = " (an unfinished `fastft shard`: re-run it to complete)" if (path / "settings.json").exists() else ""
        raise FastFTError(f"{path} is not a fastft store: no manifest.json{hint}")
    stat = mp.stat()
    key = (str(mp.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if key not in _manifest_cache:
        raw = mp.read_bytes()
        m = json.loads(raw)
        if m.get("format") != "fastft-store":
            raise FastFTError(f"{mp} is not a fastft store manifest")
        if m.get("store_version", 1) not in STORE_VERSIONS:
            raise FastFTError(f"{path} is a version-{m.get('store_version')} store; this fastft reads versions "
                              f"{', '.join(map(str, STORE_VERSIONS))}: upgrade fastft to read it")
        if len(_manifest_cache) >= 8:
            _manifest_cache.clear()
        _manifest_cache[key] = (m, hashlib.sha256(raw).hexdigest())
    m, digest = _manifest_cache[key]
    return Store(path, m, digest)


def _each_file(paths: list[Path], fn, progress: bool = False) -> list:
    """``fn(path, update)`` for each file, several at a time (hashlib releases the GIL on large reads), with a progress
    bar in bytes that ``update(n)`` advances."""
    from concurrent.futures import ThreadPoolExecutor

    from ..util.progress import bar as progress_bar

    with progress_bar(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, desc="sha256", enabled=progress) as bar, \
            ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda p: fn(p, bar.update), paths))


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
    for (_, want, msg), got in zip(to_hash, _each_file([p for p, _, _ in to_hash], sha256_file, progress)):
        if got != want:
            problems.append(msg)
    if (st.path / "samples.csv.gz").exists():
        problems += check_sample_index(st, full)
    return problems


def _members(path: Path, full: bool) -> dict[str, tuple[int, int]] | None:
    """name -> (data offset, size) of a shard's members: from the tar's own headers (``full``), else from its DALI
    index (checked against the manifest by :func:`verify`). None if unreadable (verify names that already)."""
    try:
        if full:
            with tarfile.open(path.with_suffix(".tar")) as tf:
                return {m.name: (m.offset_data, m.size) for m in tf if m.isreg()}
        out = {}
        for line in path.with_suffix(".idx").read_text().splitlines()[1:]:
            t = line.split()
            for i in range(0, len(t) - 3, 4):  # ext offset size name, per component
                out[t[i + 3]] = (int(t[i + 1]), int(t[i + 2]))
        return out
    except (OSError, tarfile.TarError, ValueError, IndexError, EOFError):
        return None


def _named(what: str, items: list[str]) -> str:
    return f"{len(items)} {what} (first: {', '.join(items[:5])})"


def check_sample_index(st: Store, full: bool = True) -> list[str]:
    """Problems with the sample index (``samples.csv.gz``) against the shards: keys unique within the store, every
    row's wnid/label/shard known, and its ``<key>.jpg`` / ``<key>.cls`` the members at the row's offsets with its
    sizes, inside the tar; every member of a shard in exactly one row, and the per-shard counts those of the manifest.
    Members are read from the tar headers (``full``) or the DALI index files; ``full`` also reads every ``.cls`` and
    checks that it holds the row's label (:func:`encode_label`, in the store's version)."""
    df = st.samples(["key", "wnid", "label", "shard", "jpg_offset", "jpg_size", "cls_offset"])
    problems = []
    dup = df["key"][df["key"].duplicated()].unique().tolist()
    if dup:
        problems.append(f"samples.csv.gz: {_named('keys appear in more than one row', dup)}")
    try:
        label = st.label
    except FastFTError as e:  # classes.txt unreadable: verify names it (missing, or its hash)
        return [str(e)]
    bad = df[df["label"] != df["wnid"].map(label).fillna(-1)]
    if len(bad):
        problems.append(f"samples.csv.gz: {_named('rows have a label other than their class in the store (classes.txt)', bad['key'].tolist())}")
    by_name = {s["name"]: s for s in st.shards}
    unknown = sorted(set(df["shard"]) - set(by_name))
    if unknown:
        problems.append(f"samples.csv.gz: rows name shards the manifest does not list: {unknown[:5]}")
    groups = dict(tuple(df.groupby("shard", sort=True)))
    for name, s in by_name.items():
        g = groups.get(name)
        n = 0 if g is None else len(g)
        if n != s["samples"]:
            problems.append(f"samples.csv.gz: {n} rows for {name}, the manifest lists {s['samples']} samples")
        members = _members(st.path / f"{name}.tar", full)
        if members is None or g is None:
            continue
        problems += _check_shard_rows(st, s, g, members, full)
    return problems


def _check_shard_rows(st: Store, shard: dict, g, members: dict, full: bool) -> list[str]:
    """:func:`check_sample_index` for one shard's rows ``g``; ``members``: the shard's name -> (offset, size)."""
    name = shard["name"]
    tar = st.path / f"{name}.tar"
    tar_size = tar.stat().st_size if tar.exists() else shard["bytes"]
    outside, wrong, labels, seen, version = [], [], [], set(), st.version
    f = open(tar, "rb") if full else contextlib.nullcontext()
    with f:
        for k, lab, jo, js, co in zip(g["key"].tolist(), g["label"].tolist(), g["jpg_offset"].tolist(),
                                      g["jpg_size"].tolist(), g["cls_offset"].tolist()):
            cs = cls_size(lab, version)
            if jo < 0 or co < 0 or jo + js > tar_size or co + cs > tar_size:
                outside.append(k)
            elif members.get(f"{k}.jpg") != (jo, js) or members.get(f"{k}.cls") != (co, cs):
                wrong.append(k)
            elif full and os.pread(f.fileno(), cs, co) != encode_label(lab, version):
                labels.append(k)
            seen.update((f"{k}.jpg", f"{k}.cls"))
    problems = []
    if outside:
        problems.append(f"{name}.tar: {_named('sample-index rows point outside the tar', outside)}")
    if wrong:
        problems.append(f"{name}.tar: {_named('sample-index rows do not match the member of their key (name, offset, size)', wrong)}")
    if labels:
        problems.append(f"{name}.tar: {_named('.cls members do not hold the label of their sample-index row', labels)}")
    orphans = sorted(set(members) - seen)
    if orphans:
        problems.append(f"{name}.tar: {_named('members no sample-index row names', orphans)}")
    return problems


def verify_shards(store: str | Path, names: list[str], st: Store | None = None) -> list[str]:
    """Full (sha256) verification of some shards, remembered per shard (a stamp: the file's sha256, size and mtime)
    so that each shard is hashed once however many runs read it; a changed file is hashed again. The sample index is
    checked against the shards' DALI indexes once per store version (:func:`check_sample_index`). Stamps live in
    ``<store>/.verified/``, or for a read-only store in ``$XDG_CACHE_HOME/fastft/verified/<manifest hash>/``. Runs
    starting together on a node share the work: each shard is hashed under a lock, by one of them."""
    st = st or open_store(store)
    by_name = {s["name"]: s for s in st.shards}
    stamps = _stamp_dir(st)
    mismatch = f"does not match the manifest (corrupted or truncated); run `fastft verify {st.path}`"
    # each shard's tar and its DALI index (what outside readers seek by), each hashed against the manifest once
    want = {f"{n}.tar": by_name[n]["sha256"] for n in names}
    want.update({f"{n}.idx": by_name[n]["idx_sha256"] for n in names if by_name[n].get("idx_sha256")})
    problems, todo = [], []
    for f, sha in want.items():
        path = st.path / f
        if not path.exists():
            problems.append(f"{f}: missing")
        elif f.endswith(".tar") and path.stat().st_size != by_name[f[:-4]]["bytes"]:
            problems.append(f"{f}: {mismatch}")
        elif not _stamped(stamps, _stamp_name(f), sha, path):
            todo.append(path)

    def check(path: Path, update) -> str | None:
        name, sha = _stamp_name(path.name), want[path.name]
        with _stamp_lock(stamps, name):  # another run on this node may be hashing it now: wait, then use its stamp
            if _stamped(stamps, name, sha, path):
                update(path.stat().st_size)
                return None
            if sha256_file(path, update) != sha:
                return f"{path.name}: {mismatch}"
            if stamps is not None:
                stat = path.stat()
                fsync_write(stamps / name, f"{sha} {stat.st_size} {stat.st_mtime_ns}")
        return None
    if todo:  # (the common case, every file stamped, needs no pool)
        problems += [p for p in _each_file(todo, check, progress=len(todo) > 16) if p]
    return problems + _checked_index(st, stamps)


def _checked_index(st: Store, stamps: Path | None) -> list[str]:
    """:func:`check_sample_index` against the DALI index files, once per store version (its stamp is named after the
    file it certifies, ``samples.csv.gz``, and holds the manifest's hash)."""
    name = "samples.csv.gz"
    with _stamp_lock(stamps, name):
        if stamps is not None and (stamps / name).is_file() and (stamps / name).read_text() == st.sha256:
            return []
        problems = [f"{p}; run `fastft verify {st.path}`" for p in check_sample_index(st, full=False)]
        if not problems and stamps is not None:
            fsync_write(stamps / name, st.sha256)
        return problems


def _stamp_dir(st: Store) -> Path | None:
    """Where shard stamps go: the store, or a per-user cache for a read-only store (None: nowhere writable)."""
    for where in (lambda: st.path / ".verified",
                  lambda: Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastft" / "verified" / st.sha256[:16]):
        try:
            d = where()
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
            return d
        except (OSError, RuntimeError):  # RuntimeError: no home directory
            continue
    return None


def _stamp_name(file: str) -> str:
    """A verified file's stamp: a shard's tar by the shard's name (as stamps always were), its index as ``<name>.idx``."""
    return file[:-4] if file.endswith(".tar") else file


def _stamped(stamps: Path | None, name: str, sha: str, tar: Path) -> bool:
    if stamps is None:
        return False
    try:
        stat = tar.stat()
        return (stamps / name).read_text() == f"{sha} {stat.st_size} {stat.st_mtime_ns}"
    except OSError:
        return False


@contextlib.contextmanager
def _stamp_lock(stamps: Path | None, name: str):
    if stamps is None:
        yield
        return
    import fcntl

    with open(stamps / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield
