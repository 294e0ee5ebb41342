"""The trainer through the real CLI: paper init, fine-tuning, freeze-n, schedule, 2-process gloo runs, kill and resume."""
import json
import os
import subprocess
import sys

import pytest
import torch
from clirun import SMALL, fastft, metrics, run_dir, strip_speed

from fastft.model import AlexNet, ModelConfig
from fastft.trainer import TrainConfig, lr_at


def test_paper_initialisation():
    torch.manual_seed(0)
    m = AlexNet(ModelConfig(1000))
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = [x for x in getattr(m, name).modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))][0]
        want = 0.005 if name in ("fc6", "fc7") else 0.01
        assert abs(layer.weight.std().item() - want) / want < 0.02, name
        assert abs(layer.weight.mean().item()) < 1e-3
        assert torch.all(layer.bias == (0.0 if name in ("conv1", "conv3") else 1.0)), name
    assert m(torch.zeros(2, 3, 227, 227)).shape == (2, 1000)
    assert m.fc6[1].in_features == 256 * 6 * 6
    taps = m(torch.zeros(1, 3, 227, 227), taps=("conv1", "conv5", "fc7"))
    assert taps["conv1"].shape == (1, 96, 27, 27) and taps["conv5"].shape == (1, 256, 6, 6) and taps["fc7"].shape == (1, 4096)


def test_lr_schedule_is_in_epochs():
    c = TrainConfig(view="v", epochs=100)
    assert [lr_at(c, e) for e in (0, 19, 20, 40, 99)] == pytest.approx([0.01, 0.01, 0.001, 0.0001, 1e-6])
    assert TrainConfig(view="v", mode="finetune", source="s").base_lr == 0.001


def test_scratch_run_learns_and_describes_itself(source_run):
    out, _, d = source_run
    for f in ("config.json", "env.json", "metrics.jsonl", "final.json", "model.pt"):
        assert (d / f).exists(), f
    m = metrics(d)
    assert [r["epoch"] for r in m] == [1, 2, 3, 4] and all("top1" in r and "img_per_s" in r for r in m)
    final = json.loads((d / "final.json").read_text())
    assert final["top1"] > 50, "8 classes: chance is 12.5%"
    assert json.loads((d / "config.json").read_text())["identity"]["seed"] == 0
    r = fastft("train", f"spec={out / 'spec.json'}", "set=near", f"store={source_run[0].parent}", f"out={out}", check=False)
    assert r.returncode == 2  # store path wrong: named


def test_finetune_replaces_head_and_freezes(source_run, store):
    out, spec, src = source_run
    fastft("train", f"spec={spec}", "set=target", f"store={store}", f"out={out}", "name=ft", "mode=finetune", f"source={src}",
           "freeze=3", "epochs=2", "cache=true", *SMALL)
    ft = run_dir(out, "ft")
    a = torch.load(src / "model.pt", weights_only=True)["model"]
    b = torch.load(ft / "model.pt", weights_only=True)["model"]
    for k in a:
        if k.startswith(("conv1", "conv2", "conv3")):
            assert torch.equal(a[k], b[k]), f"{k} is frozen"
        elif k.startswith(("conv4", "conv5", "fc6", "fc7")):
            assert not torch.equal(a[k], b[k]), f"{k} should train"
    assert a["fc8.1.weight"].shape[0] == 8 and b["fc8.1.weight"].shape[0] == 4
    assert json.loads((ft / "final.json").read_text())["frozen"] == ["conv1", "conv2", "conv3"]


def test_two_process_run_stays_in_sync_and_matches(source_run, store):
    out, spec, src = source_run
    fastft("train", f"spec={spec}", "set=near", f"store={store}", f"out={out / 'dp'}", "name=dp", "epochs=4", "lr=0.005",
           *SMALL, "--procs", "2", "--port", "29561")
    d = run_dir(out / "dp", "dp")
    m = metrics(d)
    assert json.loads((d / "config.json").read_text())["world_size"] == 2
    assert all(r["ranks_in_sync"] for r in m)
    single = metrics(src)
    assert m[-1]["test_n"] == single[-1]["test_n"], "evaluation counts every val sample exactly once"
    assert m[-1]["top1"] > 50 and abs(m[-1]["top1"] - single[-1]["top1"]) < 25


def test_two_process_run_stops_on_sigterm_in_short_epochs_and_resumes_like_uninterrupted(source_run, store):
    """Epochs of fewer steps than the ranks' agreement interval (small sets, large batches) still stop: at the epoch's
    end, checkpointed, exit 143; the resumed run then matches an uninterrupted one."""
    out, spec, _ = source_run
    args = ["train", f"spec={spec}", "set=near", f"store={store}", "name=ps", "epochs=3", "lr=0.005", *SMALL, "batch_size=64"]
    procs = ["--procs", "2", "--port", "29563"]
    fastft(*args, f"out={out / 'pa'}", *procs)
    r = fastft(*args, f"out={out / 'pb'}", *procs, env={"FASTFT_TEST_SIGTERM_AT_STEP": "2"}, check=False)  # both ranks, as SLURM does
    b = run_dir(out / "pb", "ps")
    assert r.returncode != 0 and "preempted: checkpointed at epoch 1 step 0" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    assert not (b / "final.json").exists() and len(metrics(b)) == 1
    fastft(*args, f"out={out / 'pb'}", *procs)
    assert strip_speed(metrics(run_dir(out / "pa", "ps"))) == strip_speed(metrics(b))


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(source_run, store, hold_lock):
    out, spec, _ = source_run
    args = ["train", f"spec={spec}", "set=far", f"store={store}", "name=far", "epochs=3", "lr=0.005", *SMALL]
    fastft(*args, f"out={out / 'a'}")
    r = fastft(*args, f"out={out / 'b'}", env={"FASTFT_TEST_SIGTERM_AT_STEP": "14"}, check=False)
    assert r.returncode == 143, r.stderr[-2000:]
    b = run_dir(out / "b", "far")
    assert not (b / "final.json").exists()
    ckpts = sorted(p.name for p in (b / "checkpoints").iterdir())
    assert ckpts[-1] == "e0001-s000004" and not any(c.endswith(".tmp") for c in ckpts)  # 10 steps/epoch: step 14 = epoch 1, 4 done
    with open(b / "metrics.jsonl", "a") as f:  # as if killed after writing epoch 2's record, then mid-way through epoch 3's
        f.write(json.dumps({"epoch": 2, "lr": 0.005, "train_loss": 9.0, "img_per_s": 1.0}) + '\n{"epoch": 3, "lr"')
    with hold_lock(b / ".lock"):  # the same run started twice: the second is refused
        r = fastft(*args, f"out={out / 'b'}", check=False)
        assert r.returncode == 2 and "being written by another process" in r.stderr, r.stderr[-2000:]
    fastft(*args, f"out={out / 'b'}")
    assert strip_speed(metrics(run_dir(out / "a", "far"))) == strip_speed(metrics(b))
    assert "already finished" in fastft(*args, f"out={out / 'b'}").stdout


def test_config_mistakes_are_named_before_work(source_run, store, tmp_path, capsys):
    """Each mistake: exit 2 and one line naming it, before any work. The first through the real command (a
    subprocess), the rest through the same entry point in this process (a torch import each is 2 s on 2 cores)."""
    from fastft.cli import main as cli_main

    out, spec, src = source_run
    base = [f"spec={spec}", "set=target", f"store={store}", f"out={tmp_path}", *SMALL]
    notes = tmp_path / "notes.json"  # a source that is a file but not a checkpoint
    notes.write_text('{"model": "mine"}\n')
    cases = [(["epcohs=3"], "unknown key 'epcohs'"), (["epochs=three"], "epochs: expected an integer"),
             (["mode=finetune", f"source={tmp_path / 'nope'}"], "does not exist"),
             (["mode=finetune"], "needs source"), (["set=nonexistent"], "no set 'nonexistent'"),
             (["host_cache_gb=lots"], "host_cache_gb must be auto or a number"), (["host_gather=fast"], "host_gather must be staged or gpu"),
             (["conv1_pad=5"], "conv1_pad must be 0, 4 or 8"),
             (["cpu_decode=2"], "cpu_decode is a share"), (["crop=81"], "crop 81 is larger than the store's images (--resize 80x80)"),
             (["momentum=-0.9"], "momentum must be in [0, 1)"), (["batch_size=4096"], "is larger than the training split ("),
             (["mode=finetune", f"source={notes}"], f"finetune source {notes} is not a PyTorch weights file")]
    r = fastft("train", *base, *cases[0][0], check=False)
    assert r.returncode == 2 and cases[0][1] in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-500:]
    for extra, msg in cases:
        rc = cli_main(["train", *map(str, base), *map(str, extra)])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (extra, err[-500:])
    assert not list(tmp_path.glob("scratch-*")), "a refused run leaves no run directory"
    # a source trained on some (not all) of the target classes is refused unless allowed
    from fastft.data.subsets import ClassSet, SubsetSpec

    tgt = json.loads(spec.read_text())["sets"]["target"]["classes"]
    near = json.loads(spec.read_text())["sets"]["near"]["classes"]
    mixed = SubsetSpec("custom", 0, {}, {"t": ClassSet(tuple(near[:2] + tgt[:2]))}, {}).save(tmp_path / "mixed.json")
    rc = cli_main(["train", f"spec={mixed}", "set=t", f"store={store}", f"out={tmp_path}", "mode=finetune", f"source={src}", *SMALL])
    assert rc == 2 and "2 of the 4 target classes" in capsys.readouterr().err
    assert not list(tmp_path.glob("finetune-*"))


def test_evaluation_across_ranks_equals_single_process(source_run, tmp_path):
    """trainer.evaluate on 1 and on 3 gloo processes (val split not divisible by 3 x batch) gives the same numbers."""
    import textwrap

    out, _, src = source_run
    view = json.loads((src / "config.json").read_text())["config"]["view"]
    script = tmp_path / "ev.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        from accelerate import Accelerator
        from fastft.analysis import load_model
        from fastft.loading import Loader, LoaderConfig
        from fastft.trainer import evaluate
        acc = Accelerator(cpu=True)
        model, _ = load_model({str(src)!r})
        L = Loader({view!r}, "val", LoaderConfig(batch_size=7, crop=71, num_threads=1), train=False,
                   rank=acc.process_index, world_size=acc.num_processes)
        r = evaluate(acc, model, L, "cpu", False)
        if acc.is_main_process:
            json.dump(r, open(sys.argv[1], "w"))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_port", "29577", str(script),
                    str(tmp_path / "three.json")], check=True, env=env, timeout=300, capture_output=True)
    one, three = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "three.json"))
    assert one["test_n"] == three["test_n"] == metrics(src)[-1]["test_n"]
    assert one["top1"] == pytest.approx(three["top1"]) and one["test_loss"] == pytest.approx(three["test_loss"], rel=1e-5)
    assert one["test_n"] % 21 != 0
