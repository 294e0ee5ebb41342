"""Nothing on disk is trusted without a check: weights files load without running code, checkpoints verify against
their recorded checksums (with fallback), damaged summaries are redone, metrics after a kill match an uninterrupted
run, and every numeric config key is range-checked before any work. Real run directories, real corruption, real kills."""
import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import typing
import zipfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from clirun import SMALL, fastft, metrics, run_dir, strip_speed

from fastft import runs, weights
from fastft.cli import main as cli_main
from fastft.errors import FastFTError
from fastft.trainer import TrainConfig, _get_rng, _set_rng


class Evil:
    """A pickle that runs a shell command when loaded with full pickle: it would create ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def source_args(source_run, out, *extra):
    """The command line that trained ``source_run`` (its run id), writing into ``out``."""
    _, spec, _ = source_run
    store = json.loads((source_run[2] / "config.json").read_text())["config"]["store"]
    return ["train", f"spec={spec}", "set=near", f"store={store}", f"out={out}", "name=near", "epochs=4", "lr=0.005", *SMALL, *extra]


def copy_run(source_run, out: Path) -> Path:
    d = out / source_run[2].name
    shutil.copytree(source_run[2], d)
    return d


def overwrite_tensor_bytes(f: Path, n: int = 4096, seed: int = 0) -> str:
    """Overwrite ``n`` bytes in the middle of the largest tensor stored in a torch zip file; returns its entry name."""
    with zipfile.ZipFile(f) as z:
        e = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert e.file_size > 2 * n and e.compress_type == zipfile.ZIP_STORED
    with open(f, "r+b") as fh:
        fh.seek(e.header_offset + 26)
        name_len, extra_len = np.frombuffer(fh.read(4), "<u2")
        start = e.header_offset + 30 + int(name_len) + int(extra_len)
        fh.seek(start + e.file_size // 2 - n // 2)
        fh.write(random.Random(seed).randbytes(n))
    return e.filename


def truncate(f: Path, keep: float = 0.5) -> None:
    os.truncate(f, int(f.stat().st_size * keep))


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("fastft: error: "), (r.returncode, r.stderr[-3000:])
    return lines[0]


# ---------------------------------------------------------------- weights files: no code runs, clear refusals
def test_malicious_model_files_run_nothing(source_run, tmp_path):
    """A pickle whose loading would run a command, given as a fine-tune source (fastft-shaped, a bare outside state
    dict, a plain pickle) and to fastft analyze (a model file, a shared run directory): nothing runs, exit 2, one line
    naming the file and the refused global."""
    src = torch.load(source_run[2] / "model.pt", weights_only=True)
    sentinel = {k: tmp_path / f"PWNED-{k}" for k in ("fastft", "bare", "pickle", "classviz", "rundir")}
    files = {k: tmp_path / f"{k}.pt" for k in sentinel}
    torch.save({**src, "model_config": {**src["model_config"], "width": Evil(sentinel["fastft"])}}, files["fastft"])
    torch.save(OrderedDict(src["model"], extra=Evil(sentinel["bare"])), files["bare"])
    with open(files["pickle"], "wb") as f:
        pickle.dump({"model": Evil(sentinel["pickle"]), "model_config": {}}, f, protocol=2)
    torch.save({**src, "run_id": Evil(sentinel["classviz"])}, files["classviz"])
    shared = copy_run(source_run, tmp_path / "shared")  # a run directory from someone else, its model.pt replaced
    final = json.loads((shared / "final.json").read_text())
    del final["model_sha256"]  # as a run of an earlier fastft version records none: the loader itself must refuse
    (shared / "final.json").write_text(json.dumps(final))
    torch.save(OrderedDict(src["model"], extra=Evil(sentinel["rundir"])), shared / "model.pt")
    view = json.loads((shared / "config.json").read_text())["config"]["view"]
    cmds = {k: source_args(source_run, tmp_path / f"out-{k}", "mode=finetune", f"source={files[k]}", "epochs=1")
            for k in ("fastft", "bare", "pickle")}
    cmds["classviz"] = ["analyze", "classviz", files["classviz"], "--device", "cpu"]
    cmds["rundir"] = ["analyze", "svm", shared, "--view", view, "--device", "cpu"]
    with ThreadPoolExecutor(2) as ex:
        res = dict(zip(cmds, ex.map(lambda c: fastft(*c, check=False), cmds.values())))
    for k, r in res.items():
        line = one_line_error(r)
        assert not sentinel[k].exists(), f"{k}: the file's code ran"
        assert "refers to posix.system" in line and (str(files[k]) if k != "rundir" else str(shared / "model.pt")) in line, (k, line)
    assert not [d for k in ("fastft", "bare", "pickle") for d in (tmp_path / f"out-{k}").glob("near-*")], "refused before any run directory"


def test_foreign_truncated_and_malformed_model_files_get_clear_errors(source_run, tmp_path):
    """Every kind of file that is not a valid model file is a FastFTError naming it, never another exception: other
    formats, truncations at many points, wrong or missing metadata (the KeyError: 'width' of the issue), and a seeded
    fuzz of byte mutations of a real model.pt (which either loads, when only tensor bytes changed, or is refused)."""
    real = source_run[2] / "model.pt"
    blob = torch.load(real, weights_only=True)
    data = real.read_bytes()
    rng = random.Random(0)
    cases = {"random.pt": rng.randbytes(4000), "empty.pt": b"", "notes.json": b'{"model": 1}\n', "text.pt": b"hello\n" * 50}
    cases.update({f"cut-{k}.pt": data[:k] for k in (1, 40, 500, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1)})
    for name, b in cases.items():
        (tmp_path / name).write_bytes(b)
    mc = blob["model_config"]
    meta = {"plain-dict": {"weights": 1}, "a-list": [1, 2], "bare-state-dict": blob["model"],
            "no-width": {**blob, "model_config": {k: v for k, v in mc.items() if k != "width"}},
            "width-text": {**blob, "model_config": {**mc, "width": "wide"}}, "width-zero": {**blob, "model_config": {**mc, "width": 0.0}},
            "unknown-key": {**blob, "model_config": {**mc, "depth": 5}}, "config-list": {**blob, "model_config": [1]},
            "classes-short": {**blob, "classes": blob["classes"][:-1]}, "run-id-int": {**blob, "run_id": 7},
            "state-not-tensors": {**blob, "model": {"conv1.0.weight": [1.0]}}, "preprocess-text": {**blob, "preprocess": "caffe"}, "no-model": {k: v for k, v in blob.items() if k != "model"}}
    for name, b in meta.items():
        torch.save(b, tmp_path / f"{name}.pt")
    expect = {"plain-dict": "has no model or model_config", "bare-state-dict": "bare state dict", "no-width": "model_config lacks width",
              "width-text": "width: expected float", "width-zero": "width 0.0 is out of range", "unknown-key": "unknown key 'depth'",
              "classes-short": "classes must be a list", "run-id-int": "run_id must be a string", "preprocess-text": "preprocess must be a mapping", "no-model": "has no model"}
    for name in [*cases, *(f"{m}.pt" for m in meta)]:
        with pytest.raises(FastFTError) as e:
            weights.read_model(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
        assert expect.get(name[:-3], "") in str(e.value), (name, str(e.value))
    # weights that do not fit the model their config describes
    torch.save({**blob, "model_config": {**mc, "num_classes": mc["num_classes"] + 1}, "classes": None}, tmp_path / "misfit.pt")
    with pytest.raises(FastFTError, match="do not fit its model_config"):
        weights.read_model(tmp_path / "misfit.pt").model()
    with zipfile.ZipFile(real) as z:  # mutations aimed at the metadata (pickle, zip directory) as well as anywhere
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    regions = [(0, len(data)), (pkl.header_offset, pkl.header_offset + 64 + pkl.file_size), (len(data) - 2048, len(data))]
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(90):
        b = bytearray(data)
        lo, hi = regions[i % 3]
        for _ in range(rng.randint(1, 3)):
            at, n = rng.randrange(lo, hi), rng.randint(1, 16)
            b[at:at + n] = rng.randbytes(len(b[at:at + n]))
        (tmp_path / "fuzz.pt").write_bytes(b)
        try:
            weights.read_model(tmp_path / "fuzz.pt").model()
            outcomes["loaded"] += 1
        except FastFTError:
            outcomes["refused"] += 1
    assert outcomes["loaded"] and outcomes["refused"], outcomes


def test_fastft_model_files_load_safely_and_unchanged(source_run):
    """fastft's model.pt (the format of earlier versions too) needs nothing beyond torch's safe types, and the safe
    loader returns exactly the tensors full pickle would."""
    f = source_run[2] / "model.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(f) == []
    mf = weights.read_model(source_run[2])
    full = torch.load(f, weights_only=False)
    assert set(mf.state) == set(full["model"]) and all(torch.equal(mf.state[k], full["model"][k]) for k in full["model"])
    assert mf.model_config == full["model_config"] and mf.model_name == "alexnet" and mf.classes == full["classes"] and mf.run_id == full["run_id"]
    assert json.loads((source_run[2] / "final.json").read_text())["model_sha256"] == runs.sha256_file(f)


def test_rng_states_round_trip_through_safe_files_including_earlier_versions(tmp_path):
    """The RNG states a checkpoint keeps (python, numpy, torch) restore the same draws, from the current format (plain
    data, no allow-list needed) and from the format of earlier fastft versions (numpy's state as an ndarray)."""
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws()
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    runs.save_file({"rng": _get_rng(), "partial": None}, tmp_path / "rng-0.pt")
    torch.save({"rng": legacy, "partial": None}, tmp_path / "legacy.pt")
    want = draws()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng-0.pt") == []
    for f in ("rng-0.pt", "legacy.pt"):
        draws()
        _set_rng(weights.load(tmp_path / f, "checkpoint file", allow=weights.LEGACY_RNG_GLOBALS)["rng"])
        assert draws() == want, f
    with pytest.raises(FastFTError, match="refers to numpy"):  # the allow-list is for RNG files only
        weights.load(tmp_path / "legacy.pt", "checkpoint file")


# ---------------------------------------------------------------- checkpoints: checksums, fallback, refusal
def test_checkpoint_checksums_name_each_kind_of_damage(source_run, tmp_path):
    d = copy_run(source_run, tmp_path)
    ck = runs.complete_checkpoints(d)
    assert [c.name for c in ck] == ["e0002-s000000", "e0003-s000000"]
    assert all(runs.checkpoint_problem(c) is None for c in ck)
    marker = json.loads((ck[-1] / "COMPLETE").read_text())
    assert set(marker["sha256"]) == {"state.pt", "rng-0.pt"}
    damage = {"truncated state.pt": (lambda c: truncate(c / "state.pt"), "state.pt does not match"),
              "4 KB overwritten in a tensor": (lambda c: overwrite_tensor_bytes(c / "state.pt"), "state.pt does not match"),
              "one byte of rng-0.pt": (lambda c: _flip_byte(c / "rng-0.pt"), "rng-0.pt does not match"),
              "rng-0.pt deleted": (lambda c: (c / "rng-0.pt").unlink(), "rng-0.pt is missing"),
              "empty marker": (lambda c: (c / "COMPLETE").write_text(""), "marker is damaged"),
              "marker without sums": (lambda c: (c / "COMPLETE").write_text('{"name": "x"}'), "marker is damaged")}
    for i, (what, (hurt, msg)) in enumerate(damage.items()):
        c = tmp_path / f"c{i}" / ck[-1].name
        shutil.copytree(ck[-1], c)
        hurt(c)
        assert msg in (runs.checkpoint_problem(c) or ""), what
    legacy = tmp_path / "legacy" / ck[-1].name  # the marker of earlier versions (the name, no checksums): nothing to check
    shutil.copytree(ck[-1], legacy)
    (legacy / "COMPLETE").write_text(ck[-1].name)
    assert runs.checkpoint_problem(legacy) is None and weights.load_checkpoint(legacy, 0)[1] is not None
    said = []
    truncate(ck[-1] / "state.pt")
    assert runs.resume_checkpoint(d, say=said.append) == ck[0]
    assert "e0003-s000000 does not verify: state.pt does not match" in said[0] and "resuming from the previous one, e0002-s000000" in said[0]
    assert (d / "checkpoints" / "e0003-s000000.damaged").is_dir() and runs.complete_checkpoints(d) == [ck[0]]
    overwrite_tensor_bytes(ck[0] / "state.pt")
    with pytest.raises(FastFTError, match="no checkpoint of .* verifies .*e0002-s000000 does not verify"):
        runs.resume_checkpoint(d, say=said.append)


def _flip_byte(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(b)


def test_resume_skips_a_damaged_checkpoint_and_finishes_bit_identical(source_run, tmp_path):
    """A run killed after its last epoch's record (no final.json, no model.pt) whose newest checkpoint then had 4 KB of
    a tensor overwritten: the resume names it, goes on from the one before, and ends with the very model.pt and
    metrics of the uninterrupted run."""
    d = copy_run(source_run, tmp_path)
    want = json.loads((d / "final.json").read_text())["model_sha256"]
    (d / "final.json").unlink()
    (d / "model.pt").unlink()
    overwrite_tensor_bytes(d / "checkpoints" / "e0003-s000000" / "state.pt")
    r = fastft(*source_args(source_run, tmp_path))
    assert "e0003-s000000 does not verify: state.pt does not match its recorded sha256" in r.stdout + r.stderr
    assert "resuming near-" in r.stdout and "from e0002-s000000" in r.stdout
    assert runs.sha256_file(d / "model.pt") == want == json.loads((d / "final.json").read_text())["model_sha256"]
    assert strip_speed(metrics(d)) == strip_speed(metrics(source_run[2]))


def test_resume_refuses_when_no_checkpoint_verifies(source_run, tmp_path):
    d = copy_run(source_run, tmp_path)
    (d / "final.json").unlink()
    before = (d / "metrics.jsonl").read_bytes()
    truncate(d / "checkpoints" / "e0003-s000000" / "state.pt")
    overwrite_tensor_bytes(d / "checkpoints" / "e0002-s000000" / "state.pt")
    line = one_line_error(fastft(*source_args(source_run, tmp_path), check=False))
    assert f"no checkpoint of {d} verifies" in line and "remove" in line, line
    assert not (d / "final.json").exists() and (d / "metrics.jsonl").read_bytes() == before


# ---------------------------------------------------------------- summaries and metrics
def test_a_summary_its_records_contradict_is_not_trusted_named_in_the_report_and_redone(source_run, tmp_path):
    """final.json whose numbers are not its last epoch's record (edited by hand, or a metrics.jsonl deleted): the run
    is not finished — the report names it and keeps it out of every table, instead of reporting the edited number —
    and re-running it redoes its end from its last checkpoint: the summary, records and model of the uninterrupted run."""
    from fastft.report import write_report

    d = copy_run(source_run, tmp_path / "runs")
    final = json.loads((d / "final.json").read_text())
    for k, v in (("top1", 0.0), ("top5", 1.5), ("train_loss", 0.01)):
        (d / "final.json").write_text(json.dumps({**final, k: v}))
        said = []
        assert runs.read_final(d, say=said.append) is None and not runs.is_finished(d), k
        assert f"{k} {v!r} in final.json" in said[0] and "metrics.jsonl" in said[0], said
    (d / "final.json").write_text(json.dumps({**final, "top1": 0.0}))
    report = (Path(write_report(tmp_path / "runs", tmp_path / "rep")["tables"][0])).read_text()
    assert "have a summary their records contradict" in report and "top1 0.0 in final.json" in report, report[:3000]
    r = fastft(*source_args(source_run, tmp_path / "runs"))
    assert "does not agree with the run's metrics.jsonl" in r.stdout + r.stderr and "from e0003-s000000" in r.stdout, r.stdout[-2000:]
    assert runs.read_final(d)["top1"] == final["top1"] and runs.sha256_file(d / "model.pt") == final["model_sha256"]
    assert strip_speed(metrics(d)) == strip_speed(metrics(source_run[2]))
    (d / "metrics.jsonl").unlink()  # the records gone: the summary cannot be checked, so it is not trusted either
    said = []
    assert runs.read_final(d, say=said.append) is None and "metrics.jsonl is missing" in said[0]


def test_damaged_final_and_config_json_are_detected_and_the_run_is_redone(source_run, tmp_path):
    """A half-written final.json is not trusted (the run's end is redone from its last checkpoint, giving the same
    model.pt); a damaged config.json is rewritten; analyze and run listings name damage instead of a JSONDecodeError."""
    d = copy_run(source_run, tmp_path)
    want = json.loads((d / "final.json").read_text())["model_sha256"]
    for text in ("", '{"run_id": "ab', "[]", '{"top1": 1}', "\x00\xff"):
        (d / "final.json").write_text(text)
        assert runs.read_final(d) is None and not runs.is_finished(d), text
    (d / "config.json").write_text('{"run_id": "')
    with pytest.raises(FastFTError, match="config.json is damaged"):
        runs.read_config(d)
    assert runs.run_dirs(tmp_path) == []  # listed as a warning, not a crash
    from fastft.analysis import analysis_targets

    with pytest.raises(FastFTError, match="config.json is damaged"):
        analysis_targets([d])
    (d / "final.json").write_text('{"run_id": "ab')
    r = fastft(*source_args(source_run, tmp_path))
    out = r.stdout + r.stderr
    assert "final.json is damaged" in out and "config.json is damaged" in out and "from e0003-s000000" in r.stdout, out[-2000:]
    assert runs.is_finished(d) and runs.read_config(d)["run_id"] in d.name
    assert runs.sha256_file(d / "model.pt") == want
    assert strip_speed(metrics(d)) == strip_speed(metrics(source_run[2]))
    # a finished run's model.pt changed afterwards: named before it is read (as a fine-tune source, or analysed)
    overwrite_tensor_bytes(d / "model.pt")
    with pytest.raises(FastFTError, match="does not match the sha256 that .*final.json recorded"):
        weights.read_model(d)


# Loaded by the `fastft train` process below (as ``sitecustomize``, through PYTHONPATH): after its second epoch's
# record is written, the run says so in a file and waits to be killed. The kill always lands between epoch 2 and any
# later one, whatever the machine's load: no wall-clock window to hit.
_PAUSE_AFTER_TWO_EPOCHS = """
import os, time
from pathlib import Path

import fastft.train.loop as _loop

_real, _dir = _loop._record, Path(os.environ["FASTFT_TEST_PAUSE_DIR"])


def _record(r, rec, *a, **kw):
    _real(r, rec, *a, **kw)
    if rec.get("epoch", 0) >= 2:
        (_dir / "paused").touch()
        time.sleep(3600)


_loop._record = _record
"""


def test_metrics_after_a_kill_before_the_first_checkpoint_match_an_uninterrupted_run(source_run, tmp_path):
    """SIGKILL after two epochs' records and before any checkpoint: the re-run starts from scratch, and its metrics
    (and model) are exactly those of the uninterrupted run, not [1, 2, 1, 2, 3, 4]."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_PAUSE_AFTER_TWO_EPOCHS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTFT_TEST_PAUSE_DIR": str(hook),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))}
    out = tmp_path / "runs"
    args = source_args(source_run, out, "checkpoint_every=10")
    p = subprocess.Popen([sys.executable, "-m", "fastft", *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (hook / "paused").exists():
            assert p.poll() is None, f"the run ended before its second epoch: {p.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "the run did not reach its second epoch within 10 minutes"
            time.sleep(0.05)
    finally:
        p.kill()
        p.communicate(timeout=600)
    d = run_dir(out, "near")
    assert p.returncode == -signal.SIGKILL and not (d / "final.json").exists()
    assert not runs.complete_checkpoints(d) and len(metrics(d)) >= 2
    fastft(*source_args(source_run, out))
    assert [m["epoch"] for m in metrics(d)] == [1, 2, 3, 4]
    assert strip_speed(metrics(d)) == strip_speed(metrics(source_run[2]))
    assert runs.sha256_file(d / "model.pt") == runs.sha256_file(source_run[2] / "model.pt")


# ---------------------------------------------------------------- config ranges
BAD = {"freeze": [-1, 8], "epochs": [0, -1], "lr": [0, -0.01, ".nan", ".inf"], "lr_step": [0], "lr_gamma": [0, -0.1, 1.5, ".nan"],
       "momentum": [-0.9, 1, ".nan"], "weight_decay": [-0.0005, ".inf"], "batch_size": [0, -32], "seed": [-1, 5000000],
       "width": [0, -0.5, ".nan"], "crop": [0, 66], "augment_to": [-1], "num_threads": [-1], "hw_decoder_load": [-0.1, 1.5],
       "cpu_decode": [2, ".nan"], "conv1_pad": [5, -4], "cache_gb": [-1, ".inf"], "host_cache_gb": [-1, ".inf"], "eval_every": [0],
       "checkpoint_every": [0], "keep_checkpoints": [0], "bias_lr_mult": [-1, ".nan"], "bias_decay_mult": [-0.5],
       "head_lr_mult": [-10, ".inf"], "plateau_epochs": [-1], "plateau_tol": [-0.1, 1, ".nan"],
       "log_every": [-1], "copy": [0, 8, -1]}


def _numeric_keys() -> set[str]:
    hints = typing.get_type_hints(TrainConfig)
    num = lambda t: t in (int, float) or any(a in (int, float) for a in typing.get_args(t))  # noqa: E731
    return {f.name for f in dataclasses.fields(TrainConfig) if num(hints[f.name])}


def test_every_numeric_key_has_bad_values_under_test():
    assert _numeric_keys() == set(BAD)


# keys with a closed set of values (words, switches, lists of words): a value outside it for each
BAD_CHOICE = {"mode": ["pretrain"], "model": ["resnet19", "ResNet18"], "init": ["Kaiming", "xavier"], "preprocess": ["torch"],
              "backend": ["torch"], "device": ["gpu"], "precision": ["fp16"], "compile": ["always"], "cache": ["maybe"],
              "host_gather": ["cpu"], "trackers": ["[mlflow]", "tensorboard"], "groups": ["maybe"],
              "cuda_graph": ["replay"], "fused_sgd": ["2"], "channels_last": ["no way"], "progress": ["sometimes"],
              "allow_overlap": ["perhaps"]}
FREE_TEXT = {"view", "spec", "set", "store", "source", "out", "name", "tracker_project", "tracker_group", "tracker_tags"}


def test_every_key_with_closed_values_has_bad_values_under_test():
    """The class, not the example: every key is numeric (BAD), free text (a path or a name, checked where it is
    read), or takes a closed set of values (BAD_CHOICE) — a key added later lands in one or this test fails."""
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert keys - _numeric_keys() - FREE_TEXT == set(BAD_CHOICE)


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in {**BAD, **BAD_CHOICE}.items() for v in vs])
def test_out_of_range_values_are_one_line_errors_before_work(key, value, tmp_path, capsys):
    """``fastft train … key=value`` through the CLI's entry point: exit 2, one line naming the key, no run directory."""
    rc = cli_main(["train", "view=/nonexistent/view", f"out={tmp_path}", "mode=finetune", f"source={tmp_path}", f"{key}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and re.match(rf"fastft: error: (config: )?{key}[ :]", err[0]), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in {**BAD, **BAD_CHOICE}.items() for v in vs if k not in ("mode", "source")])
def test_a_bad_value_leaves_no_run_directory_where_the_data_exists(key, value, view_near, tmp_path, capsys):
    """The same with a real view, so that every check that needs the data has run: still one line and nothing
    written (init=Kaiming was once checked only when the model was built, after the run directory was made)."""
    fit = [f"{k}={v}" for k, v in (("crop", 71), ("width", 0.25)) if k != key]  # the view's images are 80x80
    rc = cli_main(["train", f"view={view_near.path}", f"out={tmp_path}", *fit, f"{key}={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and re.match(rf"fastft: error: (config: )?{key}[ :]", err[-1]), err
    assert list(tmp_path.iterdir()) == []


def test_legal_edge_values_pass():
    for kw in ({"lr_gamma": 1.0}, {"momentum": 0.0}, {"seed": 0}, {"weight_decay": 0.0}, {"crop": 67}, {"width": 0.01},
               {"mode": "finetune", "source": "s", "freeze": 7}, {"seed": 4294966},
               {"bias_lr_mult": 0.0, "bias_decay_mult": 0.0, "head_lr_mult": 1.0}, {"plateau_epochs": 0, "plateau_tol": 0.0}):
        TrainConfig(view="v", **kw).validate()
