"""GPU-only checks (skipped without CUDA): the mixed-decoder pipeline agrees with the CPU backend, training runs on GPU."""
import pytest
import torch

from fastft.loading import Loader, LoaderConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("decoders", [{}, {"hw_decoder_load": 0.5, "gpu_huffman": True}], ids=["hardware", "half-gpu-huffman"])
def test_gpu_decode_matches_cpu_backend(view_near, decoders):
    cpu = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71), seed=1).epoch(0))
    gpu = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", **decoders), seed=1).epoch(0))
    assert len(cpu) == len(gpu)
    for (xc, yc, _), (xg, yg, _) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        # nvJPEG / the hardware decoder may round differently from libjpeg-turbo: compare loosely
        assert (xc - xg.cpu()).abs().mean() < 0.05


def test_host_decoded_share_on_gpu_matches_cpu_backend(view_near):
    """``cpu_decode``: part of each batch decoded on the host, copied from pinned memory and normalised on the GPU,
    next to the mixed decoder's part; float16 NHWC as GPU training consumes it."""
    cpu = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71), seed=1).epoch(0))
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", cpu_decode=0.4, fp16=True,
                                                     channels_last=True), seed=1)
    g = L.stats()["decode_batch"]["main"]
    assert g == 4
    gpu = list(L.epoch(0))
    assert len(cpu) == len(gpu)
    for (xc, yc, _), (xg, yg, _) in zip(cpu, gpu):
        assert xg.is_cuda and xg.dtype == torch.float16 and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yc, yg.cpu())
        assert (xc[g:] - xg[g:].float().cpu()).abs().max() < 2e-2  # the host part: libjpeg-turbo on both sides
        assert (xc[:g] - xg[:g].float().cpu()).abs().mean() < 0.05


def test_bench_train_on_gpu(view_near):
    from fastft.bench import bench_train

    r = bench_train(str(view_near.path), batch=32, seconds=2, width=0.25, crop=71)
    assert r["device"] == "cuda" and r["gpu"] and r["fastft_e2e_img_s"] > 0


@pytest.mark.parametrize("mode", ["graph", "graph+fused+pad8"])
def test_cuda_graph_step_matches_eager_and_recaptures_on_lr_change(mode):
    from fastft.bench import _make_step

    torch.manual_seed(0)
    a = _make_step("eager", 10, "cuda", "fp32", 0.25, 71)
    b = _make_step(mode, 10, "cuda", "fp32", 0.25, 71)
    b.model.load_state_dict(a.model.state_dict())
    a.model.eval(), b.model.eval()  # no dropout: the two must agree step by step
    for i in range(10):
        if i == 6:
            for s in (a, b):
                s.opt.param_groups[0]["lr"] = 0.001
        x, y = torch.randn(16, 3, 71, 71, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
        la, lb = float(a(x, y)), float(b(x, y))
        assert abs(la - lb) < 1e-3 * max(1, abs(la)), (i, la, lb)
    assert b._lr == (0.001,), "the graph is re-captured when the learning rate changes"
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-3, rtol=1e-3)


def test_whole_device_cache_on_gpu_matches_decoding(view_near):
    """Whole device-tier batches go through the compiled crop + normalise kernel: same batches as decoding."""
    fmt = {"fp16": True, "channels_last": True}
    ref = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", **fmt), seed=4)
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", cache=True, **fmt), seed=4)
    for (xa, ya, _), (xb, yb, _) in zip(ref.epoch(1), L.epoch(1), strict=True):
        assert torch.equal(ya, yb) and xb.dtype == torch.float16 and xb.is_contiguous(memory_format=torch.channels_last)
        assert (xa.float() - xb.float()).abs().mean() < 0.05
    assert L.stats()["compiled_crop"] is True, "the compiled kernel served the batches"


def test_host_tier_on_gpu_serves_the_same_batches(view_near):
    """Device tier + pinned host tier (helper thread, copy stream, three staging buffers) + decoded rest: the same
    samples as decoding, in tier order, with the GPU batch format."""
    import numpy as np

    fmt = {"fp16": True, "channels_last": True}
    ref = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", **fmt), seed=4)
    n, per = len(ref.src), 80 * 80 * 3
    L = Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda", cache=True, cache_gb=n // 3 * per / 1e9,
                                                     host_cache_gb=n // 3 * per / 1e9, **fmt), seed=4)
    assert L.stats()["host_cache_fraction"] > 0.3
    for epoch in (0, 1):
        tier = L.tiers(ref.plan.epoch(epoch)["index"])
        for s, ((xa, ya, _), (xb, yb, _)) in enumerate(zip(ref.epoch(epoch), L.epoch(epoch), strict=True)):
            perm = torch.from_numpy(np.argsort(tier[s], kind="stable")).cuda()
            assert torch.equal(ya[perm], yb) and xb.is_contiguous(memory_format=torch.channels_last)
            assert (xa[perm].float() - xb.float()).abs().mean() < 0.05


def test_gpu_host_gather_serves_the_staged_batches(view_near):
    """``host_gather: gpu`` (the GPU reads the crops from the mapped pinned host tier) against the staging thread:
    the same batches bit for bit, device tier + host tier + decoded rest, over two epochs and a resume."""
    fmt = {"fp16": True, "channels_last": True}
    n, per = len(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71), seed=4).src), 80 * 80 * 3
    kw = dict(batch_size=8, crop=71, device="cuda", cache=True, cache_gb=n // 3 * per / 1e9, host_cache_gb=n // 3 * per / 1e9, **fmt)
    a = Loader(view_near.path, "train", LoaderConfig(**kw), seed=4)
    b = Loader(view_near.path, "train", LoaderConfig(**kw, host_gather="gpu"), seed=4)
    assert a.stats()["host_cache_fraction"] > 0.2 and b.stats()["host_gather"] == "gpu"
    for epoch, start in ((0, 0), (1, 0), (1, 2)):
        for (xa, ya, _), (xb, yb, _) in zip(a.epoch(epoch, start_step=start), b.epoch(epoch, start_step=start), strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_a_preloaded_run_trains_on_the_gpu(source_run, store, tmp_path):
    """A run forked from the preloaded server (which imported torch, dynamo, accelerate and DALI) initialises CUDA for
    itself and trains on the GPU (the check that lets GPU sweeps default to ``--launch preloaded``)."""
    import json
    import os

    from clirun import SMALL, run_dir

    from fastft.study import launch

    _, spec, _ = source_run
    argv = ["train", f"spec={spec}", "set=far", f"store={store}", f"out={tmp_path}", "name=far", "epochs=1", "device=cuda",
            *SMALL]
    r = launch.run("preloaded", argv, {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    env = json.loads((run_dir(tmp_path, "far") / "env.json").read_text())
    assert env["gpus"], env
