"""A run started by the preloaded launcher (forked from a server that imported torch, accelerate and DALI once) is the
run a fresh ``python -m fastft train`` is: the same environment (the slot's, read after the fork), working directory,
log, signals and exit code, and bit-identical results. Real runs, real SIGTERM, both launchers side by side."""
import os
import signal
import time

import pytest
from clirun import SMALL, metrics, run_dir, strip_speed

from fastft.study import launch

pytestmark = pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(),
                                reason="the preloaded launcher needs a fork server")


def _run(launcher, argv, env, log, deadline=600):
    with open(log, "a") as f:
        p = launch.start(launcher, argv, env, f)
        t = time.time()
        while p.poll() is None:
            assert time.time() - t < deadline, f"{launcher}: the run did not end in {deadline} s"
            time.sleep(0.1)
    return p.poll(), log.read_text()


def test_a_preloaded_run_is_the_run_a_fresh_process_is(source_run, store, tmp_path, monkeypatch):
    """Both launchers, in a working directory of their own with a relative ``out=``: the slot's environment reaches
    the run (``FASTFT_TEST_SIGTERM_AT_STEP``: a real SIGTERM at step 14, which checkpoints and exits 143; the thread
    count), the log holds what the run printed, and the resumed runs end bit-identical to each other."""
    _, spec, _ = source_run
    argv = ["train", f"spec={spec}", "set=far", f"store={store}", "out=runs", "name=far", "epochs=2", "lr=0.005",
            *[a for a in SMALL if not a.startswith("num_threads")], "num_threads=0"]
    ends = {}
    for launcher in ("fresh", "preloaded"):
        wd = tmp_path / launcher
        wd.mkdir()
        monkeypatch.chdir(wd)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTFT_TEST_SIGTERM_AT_STEP": "14"}
        rc, log = _run(launcher, argv, env, wd / "run.log")
        assert rc == 143, (launcher, log[-2000:])
        d = run_dir(wd / "runs", "far")  # out=runs: relative to the run's working directory
        assert not (d / "final.json").exists() and any(p.name.startswith("e0001-") for p in (d / "checkpoints").iterdir())
        env.pop("FASTFT_TEST_SIGTERM_AT_STEP")
        rc, log = _run(launcher, argv, env, wd / "run.log")
        assert rc == 0 and "resum" in log and "top-1" in log, (launcher, log[-2000:])
        ends[launcher] = strip_speed(metrics(d))
    assert ends["fresh"] == ends["preloaded"]


def test_a_preloaded_run_that_crashes_ends_alone_and_the_next_one_runs(source_run, store, tmp_path, monkeypatch):
    """SIGKILL of a forked run (the out-of-memory killer) is its exit code, as for a fresh process; the server lives
    on, and a config mistake is the usual one-line exit 2 in the log."""
    _, spec, _ = source_run
    monkeypatch.chdir(tmp_path)
    argv = ["train", f"spec={spec}", "set=far", f"store={store}", "out=runs", "name=far", "epochs=5000", *SMALL]
    with open(tmp_path / "a.log", "a") as f:
        p = launch.start("preloaded", argv, dict(os.environ), f)
        t = time.time()
        while not list(tmp_path.glob("runs/far-*/metrics.jsonl")) and time.time() - t < 600:
            assert p.poll() is None, (tmp_path / "a.log").read_text()[-2000:]
            time.sleep(0.1)  # killed while it trains
        p.kill()
        assert p.wait() == -signal.SIGKILL
    rc, log = _run("preloaded", ["train", f"spec={spec}", "set=far", f"store={store}", "epcohs=3"], dict(os.environ),
                   tmp_path / "b.log")
    assert rc == 2 and log.strip().splitlines()[-1].startswith("fastft: error: ") and "epcohs" in log, log[-2000:]


def test_a_script_that_starts_runs_is_not_run_again_in_them(tmp_path):
    """multiprocessing re-imports the parent's ``__main__`` in each child; a user's unguarded script calling the
    launcher would run again (its sweep too) in every run. Its top level runs once."""
    import subprocess
    import sys

    script = tmp_path / "study.py"
    script.write_text("import os\nfrom fastft.study import launch\nprint('top level', flush=True)\n"
                      "f = open('run.log', 'a')\nprint('rc', launch.start('preloaded', ['--version'], dict(os.environ), f).wait())\n")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.splitlines() == ["top level", "rc 0"], r.stdout + r.stderr
    assert "fastft" in (tmp_path / "run.log").read_text()


def test_a_forked_runs_exit_code_reaches_every_thread_that_asks(tmp_path, monkeypatch):
    """multiprocessing's forkserver handle reads a child's exit code on the first poll that finds it gone; a second
    thread polling at once read end-of-file instead and wrote 255 over it. Threads released together poll one ended
    run — through fastft's handle, multiprocessing's active_children(), and by starting other processes (each start
    polls every child) — with the read slowed so that any two readers overlap: each sees exit 2, every time."""
    import multiprocessing as mp
    import threading
    from multiprocessing import forkserver
    from multiprocessing.connection import wait

    real = forkserver.read_signed

    def slow_read(fd):
        time.sleep(0.05)  # the race's window, widened: two unguarded readers always overlap
        return real(fd)

    argv, seen, lock = ["train", "epcohs=3"], [], threading.Lock()
    for i in range(3):
        with open(tmp_path / f"{i}.log", "a") as f:
            child = launch.start("preloaded", argv, dict(os.environ), f)
            wait([child.process.sentinel], 600)  # it has ended: its code waits in the pipe for the first poll
        monkeypatch.setattr(forkserver, "read_signed", slow_read)
        gate = threading.Barrier(7)

        def note(rc):
            with lock:
                seen.append(rc)

        def ask():
            gate.wait()
            note(child.poll())

        def others_poll():
            gate.wait()
            mp.active_children()  # polls every child, ours included
            note(child.poll())

        def start_another():
            gate.wait()
            q = mp.get_context("fork").Process(target=os._exit, args=(0,))  # its start() polls every child too
            q.start()
            q.join()
            note(child.poll())

        threads = [threading.Thread(target=t) for t in (ask, ask, ask, others_poll, others_poll, start_another, start_another)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        monkeypatch.setattr(forkserver, "read_signed", real)
        assert child.wait(0) == 2
    assert seen == [2] * 21, sorted(map(repr, seen))
