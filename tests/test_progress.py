"""Progress in a log: every bar fastft shows is plain lines where its stream is a file or a pipe (a SLURM job's
output), not tqdm's carriage-return redraws; on a terminal it is tqdm's bar."""
import io
import os
import subprocess
import sys

from fastft.util import progress


def test_a_bar_in_a_log_is_lines_and_on_a_terminal_is_tqdms(monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log = io.StringIO()
    with progress.bar(total=3, desc="shard", unit="img", file=log) as b:
        for _ in range(3):
            b.update(1)
            b.set_postfix(done=b.n)  # a sweep's state change: a line of its own
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n") and "shard: 100%" in text.splitlines()[-1], repr(text)
    assert all(line.strip() and line == line.rstrip() for line in text.splitlines()), "no blank or padded lines"
    log = io.StringIO()
    list(progress.bar(range(5), file=log, enabled=None))  # a terminal-only bar: nothing in a log
    assert log.getvalue() == ""
    assert progress.bar(total=1, enabled=False).disable

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    list(progress.bar(range(3), file=tty, desc="t", mininterval=0))
    assert "\r" in tty.getvalue(), "tqdm's own redraws on a terminal"


def test_shard_logged_to_a_file_holds_no_carriage_returns(synth_tree, tmp_path):
    """The real command with its output in files, as on a cluster: its progress is readable lines (a sweep's, logged
    to a pipe, is checked by tests/test_imagefolder.py::test_the_folder_demo_runs_end_to_end)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTFT_PROGRESS_LOG_S": "0"}
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        r = subprocess.run([sys.executable, "-m", "fastft", "shard", str(synth_tree), "--out", str(tmp_path / "s"), "--resize", "80x80",
                            "--allow-missing", "--workers", "1"], stdout=out, stderr=err, env=env, timeout=900)
    text = (tmp_path / "out.log").read_text() + (tmp_path / "err.log").read_text()
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text and "shard: 100%" in text, text[-3000:]
