"""GPU-only checks (skipped without CUDA): the mixed-decoder pipeline agrees with the CPU backend, training runs on GPU."""
import pytest
import torch

from fastft.pipelines import Loader, LoaderConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_gpu_decode_matches_cpu_backend(view_near):
    cpu = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71), seed=1).epoch(0))
    gpu = list(Loader(view_near.path, "train", LoaderConfig(batch_size=8, crop=71, device="cuda"), seed=1).epoch(0))
    assert len(cpu) == len(gpu)
    for (xc, yc, _), (xg, yg, _) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        # nvJPEG / the hardware decoder may round differently from libjpeg-turbo: compare loosely
        assert (xc - xg.cpu()).abs().mean() < 0.05


def test_bench_train_on_gpu(view_near):
    from fastft.bench import bench_train

    r = bench_train(str(view_near.path), batch=32, seconds=2, width=0.25, crop=71)
    assert r["device"] == "cuda" and r["gpu"] and r["fastft_e2e_img_s"] > 0
