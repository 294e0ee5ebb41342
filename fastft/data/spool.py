"""The spool through which ``fastft shard``'s worker processes hand their results to the writer.

Results travel through files, not the executor's pipe (see :func:`bounded_imap`), in ``$TMPDIR/fastft-spool-<pid>-*``:
a directory only the current user can enter (0700), removed after the run, and by the next run if the process was
killed. A spool file is raw bytes behind a small JSON header — a format that cannot run code when read, unlike a
pickle: whatever else is found in the spool (a planted file, a damaged one) is refused, never executed::

    FASTFT-SPOOL-1\\n  <8-byte little-endian header length>  <header: JSON>  <the byte strings, one after another>

The header is ``{"results": [...], "sizes": [...]}``: the results as JSON values, in which each byte string is
``{"b": i}``, its place among the ``sizes``. A result may be None, a bool, int, float, str (any, also a path's
surrogate escapes), bytes, or a tuple / list of those; lists come back as tuples.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from ..errors import FastFTError
from ..util.children import alive

SPOOL = "fastft-spool-"  # + <pid>-<random>: write_store's spool directory in $TMPDIR
MAGIC = b"FASTFT-SPOOL-1\n"
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _encode(x, blobs: list[bytes]):
    if isinstance(x, (bytes, bytearray, memoryview)):
        blobs.append(bytes(x))
        return {"b": len(blobs) - 1}
    if isinstance(x, (tuple, list)):
        return [_encode(v, blobs) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"a spool file holds None, bool, int, float, str, bytes and tuples of them, not {type(x).__name__}")


def _decode(x, blobs: list[bytes]):
    if isinstance(x, dict):
        return blobs[x["b"]]
    if isinstance(x, list):
        return tuple(_decode(v, blobs) for v in x)
    return x


def write_spool(path: str | Path, results: list) -> None:
    """``results`` into a new file ``path`` (never through a file or link already there)."""
    blobs: list[bytes] = []
    header = json.dumps({"results": [_encode(r, blobs) for r in results], "sizes": [len(b) for b in blobs]}).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for b in blobs:
                f.write(b)
    except BaseException:
        os.unlink(path)  # a full $TMPDIR: leave no half file
        raise


def read_spool(path: str | Path) -> list:
    """The results in a spool file; a file that is not one, or not whole, is a :class:`FastFTError` (nothing in it
    is run: the header is JSON, the rest bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise FastFTError(f"spool file {path} cannot be read ({e.strerror}); re-run: it resumes after the last finished shard") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    bad = f"spool file {path} is not a fastft spool file (damaged, or written by something else); nothing in it was run"
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise FastFTError(bad)
    start = len(MAGIC) + 8
    (n,) = struct.unpack("<Q", data[len(MAGIC):start])
    try:
        header = json.loads(data[start:start + n])
        sizes, results = header["sizes"], header["results"]
        if not all(isinstance(s, int) and s >= 0 for s in sizes) or start + n + sum(sizes) != len(data):
            raise ValueError("sizes do not match the file")
        ends = list(itertools.accumulate(sizes, initial=start + n))
        blobs = [data[a:b] for a, b in zip(ends[:-1], ends[1:])]
        return [_decode(r, blobs) for r in results]
    except (ValueError, KeyError, TypeError, IndexError):  # (json.JSONDecodeError is a ValueError)
        raise FastFTError(bad) from None


def full_tmpdir(where: str | Path) -> FastFTError:
    """The error for a full ``$TMPDIR`` (not the store's disk: that one has its own message)."""
    try:
        free = f"{shutil.disk_usage(where).free:,} bytes free"
    except OSError:
        free = "no space"
    return FastFTError(f"the temporary directory {where} ($TMPDIR) is full ({free}): `fastft shard` hands the converted "
                       "images between its processes through files there (up to two windows of 2,048 images); point "
                       "TMPDIR at a local directory with room (TMPDIR=/path/with/room fastft shard …) and re-run: it "
                       "resumes after the last finished shard")


@contextlib.contextmanager
def spool_dir():
    """A new spool directory in ``$TMPDIR``, mode 0700 whatever the umask, removed when the block ends (after the
    pool has shut down: a chunk still running when the consumer stops writes its file later)."""
    where = tempfile.gettempdir()
    remove_dead_spools()
    try:
        tmp = tempfile.TemporaryDirectory(prefix=f"{SPOOL}{os.getpid()}-")
    except OSError as e:
        if e.errno in _FULL:
            raise full_tmpdir(where) from None
        raise
    with tmp as d:
        os.chmod(d, 0o700)
        yield d


def remove_dead_spools() -> None:
    """Spool directories that a killed ``fastft shard`` left in ``$TMPDIR`` (those of a process that no longer runs;
    at most two windows of encoded images each)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SPOOL}*-*"):
        pid = d.name[len(SPOOL):].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def bounded_imap(pool, fn, jobs, spool: str | Path, window: int = 2048, chunksize: int = 8):
    """``map(fn, jobs)`` on a ``ProcessPoolExecutor`` (results in order), with at most two windows of jobs submitted
    ahead of the consumer: submitting every job at once keeps every result the consumer has not taken yet, and with
    1.28M images and a writer slower than the workers (a network file system), finished JPEGs would pile up.

    Each chunk's results travel through a file in the local directory ``spool`` (see the module docstring); the pipe
    carries only its name. A worker killed (out of memory) while writing a large result into the pipe leaves half a
    message there, which the executor's result thread then waits on forever: the run hangs instead of failing. A
    message this small is written by one atomic ``write``, so a killed worker is always seen (``BrokenProcessPool``).
    A full ``spool`` is named as such (:func:`full_tmpdir`)."""
    it = iter(jobs)
    pending: collections.deque = collections.deque()
    n = 0
    while True:
        batch = list(itertools.islice(it, window))
        if batch:
            futures = []
            for i in range(0, len(batch), chunksize):
                futures.append(pool.submit(_spooled, fn, batch[i:i + chunksize], os.path.join(spool, str(n))))
                n += 1
            pending.append(futures)
        if len(pending) == 2 or (pending and not batch):  # the next window runs while this one is consumed
            for f in pending.popleft():
                try:
                    path = f.result()
                except OSError as e:
                    if e.errno in _FULL:
                        raise full_tmpdir(Path(spool).parent) from None
                    if e.errno == errno.EEXIST:
                        raise FastFTError(f"spool file {e.filename} was there before its worker wrote it: something else "
                                          f"writes into the spool directory {spool}; nothing in it was run") from None
                    raise
                results = read_spool(path)
                os.unlink(path)
                yield from results
        if not pending:
            return


def _spooled(fn, items: list, path: str) -> str:
    """In a worker: ``fn`` of each item, the results written to the spool file ``path`` (see :func:`bounded_imap`)."""
    write_spool(path, [fn(x) for x in items])
    return path
