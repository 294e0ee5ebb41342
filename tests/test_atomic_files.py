"""Every file a later step or another process reads is written whole or not at all. Two sweeps started at once on one
runs directory read each other's subset specs while they are written (CI caught a reader seeing an empty spec); the
fault is a class — any ``write_text`` of a file someone else reads — so the test is of the class: no module of fastft
writes a file in place except where the file is not read back (listed here with the reason), and concurrent writers
and readers of a spec never see part of one."""
import ast
import multiprocessing as mp
from pathlib import Path

import fastft
from fastft.data.subsets import load_spec, make

PKG = Path(fastft.__file__).parent

# (module, the call's first argument as written) → why writing in place is right there
IN_PLACE = {
    ("data/synth.py", "*"): "fake ILSVRC2012 inputs for tests and the demo (the inputs fastft reads, not its own state)",
    ("data/views.py", "out / split / f'{shards[-1]}.idx'"): "inside a view's temp directory, published whole by rename",
    ("data/shard/writer.py", "self.tmp"): "a shard's temp tar, renamed into place when complete",
    ("data/export.py", "tmp"): "an exported shard's temp tar, renamed into place when complete",
    ("data/store.py", "path"): "lock_file: an empty file opened to hold a lock",
    ("data/store.py", "stamps / f'{name}.lock'"): "a stamp's lock: an empty file opened to hold a lock",
    ("study/local.py", "r.run_dir / 'sweep.log'"): "an append-only log for people",
    ("train/tracking.py", "self.path"): "train.log, an append-only log for people",
    ("train/loop.py", "r.run_dir / 'metrics.jsonl'"): "append one line per epoch; runs.read_metrics drops a cut last line "
                                                      "and runs.trim_metrics rewrites it atomically on resume",
}
WRITERS = {"write_text", "write_bytes"}


def _in_place_writes():
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        if rel == "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in WRITERS:
                yield rel, ast.unparse(f.value), node.lineno
            elif (isinstance(f, ast.Attribute) and f.attr == "open" or isinstance(f, ast.Name) and f.id == "open") and \
                    any(isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value[:1] in "wax"
                        for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]):
                target = node.args[0] if node.args else next(k.value for k in node.keywords if k.arg in ("name", "fileobj", "file"))
                yield rel, ast.unparse(target), node.lineno


def test_no_module_writes_a_file_in_place_that_something_reads_back():
    found = [(m, what, line) for m, what, line in _in_place_writes()
             if (m, "*") not in IN_PLACE and (m, what) not in IN_PLACE]
    assert not found, ("written in place (use fastft.files.fsync_write / atomic_file / write_json, or list it in "
                       f"IN_PLACE with the reason): {found}")


def test_the_scan_sees_in_place_writes():
    """The scan is not vacuous: the listed exceptions are found where they are."""
    seen = {(m, w) for m, w, _ in _in_place_writes()}
    for m, w in IN_PLACE:
        assert w == "*" and any(s[0] == m for s in seen) or (m, w) in seen, (m, w)


def _writer(path, n):
    spec = make("instru", 0)
    for _ in range(n):
        spec.save(path)


def test_a_spec_read_while_another_process_writes_it_is_always_whole(tmp_path):
    p = tmp_path / "specs" / "s.json"
    spec = make("instru", 0)
    spec.save(p)
    w = mp.get_context("spawn").Process(target=_writer, args=(p, 300))
    w.start()
    reads = 0
    while w.is_alive() or reads == 0:
        assert load_spec(p).hash == spec.hash
        reads += 1
    w.join()
    assert w.exitcode == 0
