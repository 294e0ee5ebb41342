"""What a run tells the outside: TensorBoard event files and W&B offline runs in the run directory (read back with
TensorBoard's own event reader), train.log, config.yaml that replays the run, `fastft --version`, and the launcher
that cannot give N CPU processes refusing with the one that can."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from clirun import SMALL, fastft, metrics, run_dir

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(d, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(d / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


@pytest.fixture(scope="module")
def tracked(demo_spec, store, tmp_path_factory):
    """A 2-epoch run with TensorBoard and W&B (offline), the loss every 2 steps, a group and tags as a sweep sets them."""
    out = tmp_path_factory.mktemp("tracked")
    spec = out / "spec.json"
    demo_spec.save(spec)
    args = ["train", f"spec={spec}", "set=near", f"store={store}", f"out={out}", "name=near", "epochs=2", "lr=0.005", *SMALL,
            "trackers=[tensorboard,wandb]", "log_every=2", "tracker_group=plan-xyz", "tracker_tags=[tmpl-abc,seed-0]"]
    fastft(*args, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    return out, spec, run_dir(out, "near"), args


def test_tensorboard_scalars_are_namespaced_per_step_and_match_the_metrics(tracked):
    _, _, d, _ = tracked
    ms = metrics(d)
    loss = scalars(d, "train/loss")
    assert [round(v, 4) for _, v in loss] == [round(m["train_loss"], 4) for m in ms]
    per_epoch = loss[0][0]  # the first epoch's record sits at its last global step
    assert [s for s, _ in loss] == [per_epoch, 2 * per_epoch]
    assert [round(v, 3) for _, v in scalars(d, "val/top1")] == [round(m["top1"], 3) for m in ms]
    assert [v for _, v in scalars(d, "train/lr")] == pytest.approx([m["lr"] for m in ms])
    assert scalars(d, "val/loss") and scalars(d, "val/top5") and scalars(d, "train/img_per_s")
    step_losses = scalars(d, "train/loss_step")
    assert [s for s, _ in step_losses] == list(range(2, 2 * per_epoch + 1, 2))  # every log_every=2 steps
    assert list((d / "tensorboard").rglob("hparams.yml")), "the config is logged as hyper-parameters"


def test_wandb_offline_run_lives_in_the_run_directory_with_group_and_tags(tracked):
    _, _, d, _ = tracked
    (f,) = list((d / "wandb").glob("offline-run-*/run-*.wandb"))
    data = f.read_bytes()  # the run record (protobuf) holds group, tags and the scalar names as UTF-8
    for s in (b"plan-xyz", b"tmpl-abc", b"seed-0", b"train/loss_step", b"val/top1", d.name.encode()):
        assert s in data, s


def test_train_log_holds_what_the_terminal_showed(tracked):
    _, _, d, _ = tracked
    log = (d / "train.log").read_text().splitlines()
    assert log[0].startswith("---- ") and "fastft train" in log[0]
    assert [x.split(":")[0] for x in log if x.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert any(x.startswith("finished: top-1") for x in log)


def test_config_yaml_replays_the_run_from_any_directory(tracked, tmp_path):
    out, _, d, _ = tracked
    before = sorted(p.name for p in out.iterdir())
    for f in ("config.yaml", "config.json"):
        r = subprocess.run([sys.executable, "-m", "fastft", "train", str(d / f)], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "WANDB_MODE": "offline"}, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "already finished" in r.stdout, r.stdout
    assert sorted(p.name for p in out.iterdir()) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kill_at", [4, 12])
def test_a_killed_run_resumes_without_doubled_tensorboard_steps(demo_spec, store, tmp_path, kill_at):
    """SIGKILL at a global step (through the trainer's injected on_step callback) before the first checkpoint (step 4)
    and after it (step 12, epochs of 9 steps): the re-run's event files hold each step once, with the same losses as
    an uninterrupted run's."""
    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    keys = [f"spec={spec}", "set=near", f"store={store}", "name=near", "epochs=3", "lr=0.005", *SMALL,
            "trackers=[tensorboard]", "log_every=1"]
    script = textwrap.dedent(f"""
        import os, signal
        from fastft import config
        from fastft.cli.train import loader_factory
        from fastft.train import TrainConfig, train
        cfg = config.load(TrainConfig, None, {keys + [f"out={tmp_path / 'killed'}"]!r})
        train(cfg, loader_factory(cfg), on_step=lambda s: s == {kill_at} and os.kill(os.getpid(), signal.SIGKILL))
    """)
    p = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    resumed = fastft("train", *keys, f"out={tmp_path / 'killed'}").stdout
    assert ("resuming" in resumed) == (kill_at == 12), resumed  # from epoch 1's checkpoint, or from scratch
    fastft("train", *keys, f"out={tmp_path / 'whole'}")
    killed, whole = run_dir(tmp_path / "killed", "near"), run_dir(tmp_path / "whole", "near")
    steps = [s for s, _ in scalars(killed, "train/loss_step")]
    assert steps == sorted(set(steps)) and len(steps) > kill_at, steps
    assert scalars(killed, "train/loss_step") == scalars(whole, "train/loss_step")
    assert [s for s, _ in scalars(killed, "train/loss")] == [s for s, _ in scalars(whole, "train/loss")]


def test_final_json_counts_the_fixed_costs(tracked):
    """Every part of a run besides its training steps, in seconds; the training loop holds the steps."""
    _, _, d, _ = tracked
    import json

    c = json.loads((d / "final.json").read_text())["costs"]
    parts = ("startup", "accelerator", "open_view", "build", "loaders", "first_batch", "first_step", "train", "eval",
             "checkpoint", "finish")
    assert set(parts) <= set(c) and all(c[k] >= 0 for k in parts), c
    assert c["sum_step_s"] == pytest.approx(sum(m["train_secs"] for m in metrics(d)), abs=0.01)
    assert c["train"] + c["first_step"] + c["first_batch"] >= 0.9 * c["sum_step_s"]


def test_version():
    r = fastft("--version")
    from fastft import __version__

    assert r.stdout.strip() == f"fastft {__version__}"


def test_accelerate_cpu_launch_refuses_and_names_procs(tracked, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process (Accelerate's CPU launcher): fastft says so and
    names --procs instead of training one rank without a word."""
    _, _, d, _ = tracked
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fastft", "train", str(d / "config.yaml")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode != 0
    assert "--procs" in r.stderr and "accelerate launch --cpu" in r.stderr, r.stderr[-2000:]
