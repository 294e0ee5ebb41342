"""The paper's recipe and the learning guard: one preprocessing in every feeder (by pixel value), Caffe's per-parameter
multipliers in the real optimiser, a NaN run ends as failed with valid JSON, a run held at ln C is flagged and the
report shows it."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fastft.loading import Loader, LoaderConfig
from fastft.preprocess import PREPROCESSING, mean_std

TINY = ["width=0.25", "crop=71", "batch_size=32", "progress=false", "num_threads=1"]


def fastft(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastft", *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _expected(src, i: int, crop: int, pre: str) -> torch.Tensor:
    """Sample ``i``'s centre crop, decoded by PIL and preprocessed by hand: what every feeder must give."""
    px = np.asarray(Image.open(io.BytesIO(src.jpeg(i).tobytes())).convert("RGB"), np.float32)
    h, w = px.shape[:2]
    y0, x0 = (h - crop + 1) // 2, (w - crop + 1) // 2  # the centre, half a pixel rounded up (as DALI)
    mean, std = (np.array(v, np.float32) for v in mean_std(pre))
    return torch.from_numpy(((px[y0:y0 + crop, x0:x0 + crop] - mean) / std).transpose(2, 0, 1).copy())


@pytest.mark.parametrize("pre", sorted(PREPROCESSING))
def test_every_feeder_applies_the_runs_preprocessing_by_pixel_value(view_near, pre):
    """DALI, the PyTorch fallback and the cache (device tier, host tier, decoded rest) give each sample's pixels minus
    the preprocessing's mean over its std, by value — at the same centre (80 − 71 = 9: DALI rounds 4.5 up; the fallback
    and the cache rounded it to even, one pixel off, until this test)."""
    n = len(Loader(view_near.path, "val", LoaderConfig(batch_size=8, crop=71), train=False).src)
    per = 80 * 80 * 3
    feeders = {"dali": {}, "pytorch": {"backend": "pytorch"}, "device cache": {"cache": True},
               "device + host + decoded": {"cache": True, "cache_gb": (n // 3) * per / 1e9 + 1e-12, "host_cache_gb": (n // 3) * per / 1e9}}
    for name, kw in feeders.items():
        L = Loader(view_near.path, "val", LoaderConfig(batch_size=8, crop=71, num_threads=1, preprocess=pre, **kw), train=False)
        plan = L.plan.epoch(0)
        for s, (x, y, w) in enumerate(L.epoch(0)):
            rows = plan["index"][s]  # the cache serves a step device tier first, then host tier, then decoded
            rows = rows[np.argsort(L.tiers(rows), kind="stable")]
            for j, i in enumerate(rows):
                assert int(y[j]) == int(L.src.labels[i]), name
                assert torch.allclose(x[j], _expected(L.src, i, 71, pre), atol=1e-3), (name, pre, s, j)
        if name == "device + host + decoded":
            st = L.stats()
            assert 0 < st["cache_fraction"] < 1 and 0 < st["host_cache_fraction"] < 1


def test_caffe_multipliers_reach_the_optimisers_groups(demo_spec, store, tmp_path):
    """A real fine-tune with freeze=2: biases at 2x LR and no decay, the new fc8 at 10x (its bias 20x), conv1/conv2
    in no group — read back from the optimiser state the run checkpointed."""
    from fastft.model import AlexNet, ModelConfig
    from fastft.trainer import TrainConfig, param_groups

    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    common = [f"spec={spec}", f"store={store}", f"out={tmp_path}", *TINY, "init=paper-scaled", "plateau_epochs=0"]
    assert fastft("train", "set=near", "name=src", "epochs=1", *common).returncode == 0
    (src,) = tmp_path.glob("src-*")
    r = fastft("train", "set=target", "name=ft", "mode=finetune", f"source={src}", "freeze=2", "epochs=2", "lr=0.001", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    (ft,) = tmp_path.glob("ft-*")
    (ckpt,) = (ft / "checkpoints").iterdir()
    groups = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)["opt"]["param_groups"]
    got = sorted((g["lr_mult"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups)
    # conv3-5, fc6, fc7: 5 weights (x1, decay) and 5 biases (x2, no decay); fc8: weight x10, bias x20 (no decay)
    assert got == sorted([(1.0, 0.001, 5e-4, 5), (2.0, 0.002, 0.0, 5), (10.0, 0.01, 5e-4, 1), (20.0, 0.02, 0.0, 1)])
    # the same grouping for a scratch model, without a head; the old behaviour under other values of the same keys
    m = AlexNet(ModelConfig(4, 0.25, 71))
    cfg = TrainConfig(view="v", bias_lr_mult=1.0, bias_decay_mult=1.0)
    (only,) = param_groups(m, cfg)
    assert only["lr_mult"] == 1.0 and only["weight_decay"] == 5e-4 and len(only["params"]) == 16


def test_a_non_finite_loss_fails_the_run_at_once_with_valid_json(demo_spec, store, tmp_path):
    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    args = ["train", f"spec={spec}", "set=near", f"store={store}", f"out={tmp_path}", "name=boom", "epochs=3", "lr=1000",
            *TINY, "init=paper-scaled"]
    r = fastft(*args)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("fastft: error: run boom-") and "became NaN or infinite at step" in err and "with lr 1000" in err
    (d,) = tmp_path.glob("boom-*")
    assert not (d / "final.json").exists(), "a failed run is not finished"
    rec = json.loads((d / "failed.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in failed.json"))
    assert rec["status"] == "failed" and rec["lr"] == 1000 and rec["epoch"] == 1 and rec["global_step"] >= 1
    for line in (d / "metrics.jsonl").read_text().splitlines() if (d / "metrics.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    r = fastft("report", tmp_path, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "1 run(s) failed" in md and "became NaN or infinite" in md
    assert fastft(*args).returncode != 0  # a re-run retries (the same divergence) instead of trusting the record


def test_a_run_held_at_chance_is_flagged_and_the_report_keeps_it_out_of_means(demo_spec, store, tmp_path):
    """The paper's literal init at the scaled size stays at ln C (benchmarks/learning.py): flagged in final.json, listed
    by the report, out of the summary unless --include-flagged; a run that learns is not flagged."""
    spec = tmp_path / "spec.json"
    demo_spec.save(spec)
    common = [f"spec={spec}", "set=near", f"store={store}", f"out={tmp_path}", "epochs=3", "plateau_epochs=3", *TINY]
    r = fastft("train", "name=stuck", "init=paper", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning: init paper at width 0.25, crop 71" in r.stdout + r.stderr
    assert "did not learn" in r.stdout + r.stderr
    assert fastft("train", "name=learns", "init=kaiming", "preprocess=imagenet", "lr=0.005", *common).returncode == 0
    (stuck,), (learns,) = tmp_path.glob("stuck-*"), tmp_path.glob("learns-*")
    fin = json.loads((stuck / "final.json").read_text())
    assert fin["learned"] is False and fin["flags"][0].startswith("did not learn: train loss")
    assert json.loads((learns / "final.json").read_text())["learned"] is True
    r = fastft("report", tmp_path, "--out", tmp_path / "rep")
    assert r.returncode == 0 and "1 did not learn" in r.stdout
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "**1 run(s) did not learn**, left out of every mean" in md and f"| {stuck.name} |" in md
    assert list(pd.read_csv(tmp_path / "rep" / "summary.csv")["template"]) == ["learns"]
    r = fastft("report", tmp_path, "--out", tmp_path / "rep2", "--include-flagged")
    assert sorted(pd.read_csv(tmp_path / "rep2" / "summary.csv")["template"]) == ["learns", "stuck"]
    assert "counted in the tables below" in (tmp_path / "rep2" / "report.md").read_text()


def test_plateau_flag_reads_the_loss_at_its_epoch():
    from fastft.guard import plateau_flag

    m = [{"epoch": e, "train_loss": v} for e, v in enumerate([2.08, 2.07, 1.2, 0.5], 1)]
    assert plateau_flag(m, 8, 2, 0.02).startswith("did not learn: train loss 2.0700")  # at epoch 2, still ~ln 8
    assert plateau_flag(m, 8, 3, 0.02) is None and plateau_flag(m, 8, 10, 0.02) is None  # the last epoch when shorter
    assert plateau_flag(m, 8, 0, 0.02) is None and plateau_flag(m, 1, 2, 0.02) is None
    assert "the uniform-prediction plateau" in plateau_flag(m, 8, 2, 0.02)
    above = plateau_flag([{"epoch": 1, "train_loss": 9.0}], 8, 5, 0.02)  # above ln C counts too, and is called that
    assert "above the uniform-prediction loss ln C: worse than chance" in above and "plateau" not in above
