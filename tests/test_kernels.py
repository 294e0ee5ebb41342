"""Hand-written kernels (fastft.kernels) and the step variants that use them (fastft.train.variants).

On CPU the Triton kernels run through Triton's interpreter (TRITON_INTERPRET=1, set here before they are imported):
the same kernel code the GPU compiles, executed on CPU tensors. Checked against the eager PyTorch ops — values and
gradients, NCHW and channels_last, float32 and bfloat16, AlexNet's shapes scaled down and odd sizes — and a training
step with the variant against the eager step. The GPU-marked tests repeat the check on CUDA and time the kernel."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit runs: the kernels then execute on CPU tensors

triton = pytest.importorskip("triton")
from fastft.kernels import relu_pool_lrn as rpl  # noqa: E402

LRN = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)  # AlexNet's (fastft.models.alexnet)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def eager(x):
    """The model's own ops (fastft.models.alexnet: conv1/conv2 after the conv)."""
    return nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2), nn.LocalResponseNorm(**LRN))(x)


def run(fn, x, g):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    out.backward(g.to(out.dtype))
    return out.detach(), x.grad


def inputs(shape, dtype, layout, scale=30.0, seed=0):
    """Conv-output-like values: signed, on Caffe's scale (so that LRN's denominator departs from k)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * scale).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    return x.to(DEV)


def grad_out(x, seed=1):
    n, c, h, w = x.shape
    return torch.randn((n, c, (h - 3) // 2 + 1, (w - 3) // 2 + 1), generator=torch.Generator().manual_seed(seed)).to(DEV)


def ulps(a, b, dtype):
    """|a - b| in units of ``dtype``'s spacing at |b| (1 = one rounding step)."""
    eps = torch.finfo(dtype).eps
    return ((a.float() - b.float()).abs() / (b.float().abs().clamp_min(1e-3) * eps)).max().item()


# AlexNet's two sites at width 0.25 / crop 71 (conv1: 24 × 16², conv2: 64 × 7²), odd sizes (channels not a multiple of
# the block nor of the LRN window, maps whose last row/column no window covers), and the smallest map
SHAPES = [(2, 24, 16, 16), (2, 64, 7, 7), (3, 13, 17, 16), (1, 3, 3, 3)]


def test_interpreter_is_what_runs_on_cpu():
    """Without this the CPU tests below would compare the PyTorch reference with itself."""
    if DEV == "cpu":
        assert rpl.INTERPRET, "TRITON_INTERPRET=1 did not take effect: the kernels would not run"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_values_and_gradients_match_eager_ops(shape, layout):
    x = inputs(shape, torch.float32, layout)
    g = grad_out(x)
    out, gx = run(rpl.relu_pool_lrn, x, g)
    ref, rgx = run(eager, x, g)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(gx, rgx, rtol=2e-6, atol=1e-6)
    assert gx.stride() == x.stride()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_bf16_is_the_float32_formula_rounded_once(shape, layout):
    """bfloat16 in and out, float32 inside: within one rounding of the float32 ops on the same bfloat16 values
    (Triton's interpreter rounds float32 → bfloat16 by truncation, the GPU to nearest: one step either way), and on
    GPUs near the eager bfloat16 ops, which round each intermediate (PyTorch's CPU LRN has no bfloat16 kernel)."""
    x = inputs(shape, torch.bfloat16, layout)
    g = grad_out(x).bfloat16()
    out, gx = run(rpl.relu_pool_lrn, x, g)
    assert out.dtype == gx.dtype == torch.bfloat16
    ref, rgx = run(eager, x.float(), g.float())
    assert ulps(out, ref, torch.bfloat16) <= 1.01
    assert ulps(gx, rgx, torch.bfloat16) <= 1.01
    if DEV == "cpu":
        return
    eb, egx = run(eager, x, g)
    assert (out.float() - eb.float()).abs().max() <= 0.02 * eb.float().abs().max()
    assert (gx.float() - egx.float()).abs().max() <= 0.05 * egx.float().abs().max()


def test_ties_and_overlaps_route_gradients_as_max_pool_does():
    """Small integers: many equal maxima in a window and zeros after ReLU. The gradient must go to the first maximum
    (row-major), sum over the overlapping windows whose argmax an input is, and stop at the ReLU — all exact in
    float32 with such values, so equal to the eager ops bit for bit up to LRN's division."""
    gen = torch.Generator().manual_seed(3)
    for layout in ("nchw", "channels_last"):
        x = torch.randint(-2, 3, (2, 7, 11, 11), generator=gen).float()
        x = (x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x).to(DEV)
        g = grad_out(x, seed=4)
        out, gx = run(rpl.relu_pool_lrn, x, g)
        ref, rgx = run(eager, x, g)
        torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-7)
        assert torch.equal(gx != 0, rgx != 0), "the gradient reached other inputs than max_pool2d's argmax"
        torch.testing.assert_close(gx, rgx, rtol=2e-6, atol=1e-7)


def test_nan_propagates():
    x = inputs((1, 6, 9, 9), torch.float32, "nchw")
    x[0, 2, 4, 4] = float("nan")
    out = rpl.relu_pool_lrn(x)
    ref = eager(x)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="H, W >= 3"):
        rpl.relu_pool_lrn(torch.zeros(1, 4, 2, 8, device=DEV))
    with pytest.raises(ValueError, match="float32, bfloat16"):
        rpl.relu_pool_lrn(torch.zeros(1, 4, 8, 8, dtype=torch.float64, device=DEV))


def test_step_variant_gives_the_eager_steps_losses_and_weights():
    """The trainer's step (fastft.bench._make_step, as ``fastft train`` builds it) with ``fused-relu-pool-lrn``
    against the eager step: same parameters, same state-dict keys, same losses and weights after three SGD steps."""
    from fastft.bench import _make_step

    torch.manual_seed(0)
    a = _make_step("eager", 10, DEV, "fp32", 0.25, 71)
    b = _make_step("fused-relu-pool-lrn", 10, DEV, "fp32", 0.25, 71)
    assert sum(isinstance(m, rpl.ReluPoolLRN) for m in b.model.modules()) == 2
    assert list(a.model.state_dict()) == list(b.model.state_dict())
    b.model.load_state_dict(a.model.state_dict())
    a.model.eval(), b.model.eval()  # no dropout: the two must agree step by step
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = (torch.randn(4, 3, 71, 71, generator=gen) * 50).to(DEV)
        y = torch.randint(0, 10, (4,), generator=gen).to(DEV)
        la, lb = float(a(x, y)), float(b(x, y))
        assert abs(la - lb) <= 1e-5 * max(1.0, abs(la)), (la, lb)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)


def test_variant_names_a_model_it_cannot_change():
    from fastft.errors import FastFTError
    from fastft.train import variants

    with pytest.raises(FastFTError, match="no ReLU → MaxPool2d"):
        variants.apply(["fused-relu-pool-lrn"], nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)), DEV)
    with pytest.raises(FastFTError, match="variants: fused-relu-pool-lrn"):
        variants.apply(["fused-lrn"], nn.Sequential(), DEV)


def test_bench_names_an_unknown_step_mode_before_any_work(tmp_path):
    """A typo in --steps is an error naming the flags and variants, before the view is even opened."""
    r = subprocess.run([sys.executable, "-m", "fastft", "bench", "train", str(tmp_path / "no-view"), "--steps",
                        "graph,graph+fused-relu-pool-lrm"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "fused-relu-pool-lrm" in r.stderr and "fused-relu-pool-lrn" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_full_size_matches_eager_and_is_faster(layout):
    """conv1's map of the paper's AlexNet (batch 256, 96 × 55², bf16 under autocast as training runs it): within
    bfloat16 rounding of the float32 ops, and forward + backward faster than the eager ops."""
    x = inputs((256, 96, 55, 55), torch.bfloat16, layout, seed=7)
    g = grad_out(x, seed=8).bfloat16()
    out, gx = run(rpl.relu_pool_lrn, x, g)
    ref, rgx = run(eager, x.float(), g.float())
    assert ulps(out, ref, torch.bfloat16) <= 1.01 and ulps(gx, rgx, torch.bfloat16) <= 1.01

    def ms(fn):
        for _ in range(3):
            run(fn, x, g)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            run(fn, x, g)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 20

    with torch.autocast("cuda", torch.bfloat16):
        fused, base = ms(rpl.relu_pool_lrn), ms(eager)
    print(f"relu_pool_lrn {layout}: fused {fused:.3f} ms, eager {base:.3f} ms (forward + backward)")
    assert fused < base, (fused, base)


@pytest.mark.gpu
@gpu
def test_gpu_graph_step_with_variant_matches_graph_step():
    from fastft.bench import _make_step

    torch.manual_seed(0)
    a = _make_step("graph", 10, "cuda", "fp32", 0.25, 71)
    b = _make_step("graph+fused-relu-pool-lrn", 10, "cuda", "fp32", 0.25, 71)
    b.model.load_state_dict(a.model.state_dict())
    a.model.eval(), b.model.eval()
    for _ in range(8):  # warm-up steps, then capture and replays
        x, y = torch.randn(16, 3, 71, 71, device="cuda") * 50, torch.randint(0, 10, (16,), device="cuda")
        la, lb = float(a(x, y)), float(b(x, y))
        assert abs(la - lb) < 1e-3 * max(1, abs(la)), (la, lb)
