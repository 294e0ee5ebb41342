"""ReLU → max-pool (3×3, stride 2) → local response normalisation across channels, as one fused op.

The paper's AlexNet ends conv1 and conv2 in this sequence (``fastft.models.alexnet``: ``LocalResponseNorm(5,
alpha=1e-4, beta=0.75, k=1)``). Eagerly it is three kernels forward and three backward, each a full pass over the
feature map in memory; here it is one pass forward (the pooled map is computed from the conv output and normalised
in registers) and two backward (the LRN gradient at the pooled resolution, then routing to the argmax and the ReLU
mask at the input resolution).

Arithmetic (what :func:`reference` states in PyTorch ops): every value is read in its stored dtype and computed in
float32; ``pooled = max(relu(x))`` over each window (argmax: the first maximum in row-major order, as PyTorch's
``max_pool2d``); ``out = pooled / (k + alpha * mean(pooled², over the size channels around c, zero-padded)) ** beta``;
``out`` is stored in ``x``'s dtype and layout (NCHW or channels_last). In float32 that is PyTorch's arithmetic up to
the order of the five-term sum and the ``pow`` (``exp2(beta·log2)``); in bfloat16 it is more exact than the eager ops
under autocast, which round ``pooled²``, its mean and ``k + …`` to bfloat16 before the float32 ``pow``. The backward
is the exact derivative of that formula; the gradient reaching an input that is the argmax of several overlapping
windows is summed in output order, as PyTorch's pooling backward does. NaN propagates through the max.

The forward saves ``pooled`` (in ``x``'s dtype: a max is one of its inputs, so exact) and the argmax (int8, 0–8)
for the backward, and ``x`` for the ReLU mask: the memory the eager ops keep (ReLU output, pooling indices, LRN input).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

POOL, STRIDE = 3, 2  # the only pooling geometry the kernels implement (AlexNet's overlapping pooling)
INTERPRET = bool(getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret)
BLOCK_P, BLOCK_C = 32, 32  # pixels × channels per program (untuned: the GPU session measures)


@triton.jit
def _decompose(q, H, W):
    """Pixel index → (n, h, w) of an [N, ·, H, W] map; n as int64 so that batch offsets cannot overflow."""
    w = q % W
    t = q // W
    return (t // H).to(tl.int64), t % H, w


@triton.jit
def _fwd_kernel(x, out, pooled, arg, P, C, OH, OW, sxn, sxc, sxh, sxw, son, soc, soh, sow, alpha, beta, k,
                SIZE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    q = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    qm = q < P
    n, oh, ow = _decompose(q, OH, OW)
    xbase = n * sxn + (2 * oh) * sxh + (2 * ow) * sxw
    s = tl.zeros((BP, BC), tl.float32)
    centre = tl.zeros((BP, BC), tl.float32)
    idx = tl.zeros((BP, BC), tl.int32)
    for d in tl.static_range(SIZE):  # the pooled map at channels c - SIZE//2 … c + (SIZE-1)//2 (LRN's window)
        cc = c + (d - SIZE // 2)
        m = qm[:, None] & ((cc >= 0) & (cc < C))[None, :]
        ptr = x + xbase[:, None] + cc[None, :].to(tl.int64) * sxc
        best = tl.full((BP, BC), float("-inf"), tl.float32)
        for kh in tl.static_range(3):
            for kw in tl.static_range(3):
                v = tl.load(ptr + (kh * sxh + kw * sxw), mask=m, other=0.0).to(tl.float32)
                v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)  # ReLU
                if d == SIZE // 2:
                    idx = tl.where(v > best, kh * 3 + kw, idx)  # the first maximum, as max_pool2d's indices
                best = tl.maximum(best, v, propagate_nan=tl.PropagateNan.ALL)
        s += best * best
        if d == SIZE // 2:
            centre = best
    den = (s / SIZE) * alpha + k
    o = centre / tl.exp2(beta * tl.log2(den))
    om = qm[:, None] & (c < C)[None, :]
    optr = (n * son + oh * soh + ow * sow)[:, None] + c[None, :].to(tl.int64) * soc
    tl.store(out + optr, o.to(out.dtype.element_ty), mask=om)
    tl.store(pooled + optr, centre.to(pooled.dtype.element_ty), mask=om)
    tl.store(arg + optr, idx.to(tl.int8), mask=om)


@triton.jit
def _lrn_bwd_kernel(g, pooled, gp, P, C, OH, OW, son, soc, soh, sow, sgn, sgc, sgh, sgw, alpha, beta, k,
                    SIZE: tl.constexpr, BP: tl.constexpr, BC: tl.constexpr):
    """d loss / d pooled_j = g_j den_j^-β − (2αβ/SIZE) pooled_j Σ_{c: j ∈ window(c)} g_c pooled_c den_c^(-β-1)."""
    q = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    qm = q < P
    n, oh, ow = _decompose(q, OH, OW)
    pbase = (n * son + oh * soh + ow * sow)[:, None]
    gbase = (n * sgn + oh * sgh + ow * sgw)[:, None]
    acc = tl.zeros((BP, BC), tl.float32)
    den_c = tl.full((BP, BC), 1.0, tl.float32)
    g_c = tl.zeros((BP, BC), tl.float32)
    p_c = tl.zeros((BP, BC), tl.float32)
    for e in tl.static_range(SIZE):  # the channels whose window holds c: c - (SIZE-1)//2 … c + SIZE//2
        ce = c + (e - (SIZE - 1) // 2)
        me = qm[:, None] & ((ce >= 0) & (ce < C))[None, :]
        s = tl.zeros((BP, BC), tl.float32)
        pe = tl.zeros((BP, BC), tl.float32)
        for f in tl.static_range(SIZE):  # den at channel ce, as the forward computed it
            cf = ce + (f - SIZE // 2)
            mf = qm[:, None] & ((cf >= 0) & (cf < C))[None, :]
            p = tl.load(pooled + pbase + cf[None, :].to(tl.int64) * soc, mask=mf, other=0.0).to(tl.float32)
            s += p * p
            if f == SIZE // 2:
                pe = p
        den = (s / SIZE) * alpha + k
        ge = tl.load(g + gbase + ce[None, :].to(tl.int64) * sgc, mask=me, other=0.0).to(tl.float32)
        acc += ge * pe / (den * tl.exp2(beta * tl.log2(den)))
        if e == (SIZE - 1) // 2:
            den_c, g_c, p_c = den, ge, pe
    grad = g_c / tl.exp2(beta * tl.log2(den_c)) - (2.0 * alpha * beta / SIZE) * p_c * acc
    om = qm[:, None] & (c < C)[None, :]
    tl.store(gp + pbase + c[None, :].to(tl.int64) * soc, grad, mask=om)


@triton.jit
def _pool_bwd_kernel(x, gp, arg, gx, P, C, H, W, OH, OW, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                     BP: tl.constexpr, BC: tl.constexpr):
    """Each input gathers the pooled gradient of the (up to 2×2) windows whose argmax it is, in output order, then
    the ReLU mask (x > 0)."""
    q = tl.program_id(0) * BP + tl.arange(0, BP)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    qm = q < P
    n, ih, iw = _decompose(q, H, W)
    cm = (c < C)[None, :]
    coff = c[None, :].to(tl.int64)
    acc = tl.zeros((BP, BC), tl.float32)
    for a in tl.static_range(2):
        oh = ih // 2 - 1 + a
        dh = ih - 2 * oh
        vh = (oh >= 0) & (oh < OH) & (dh <= 2)
        for b in tl.static_range(2):
            ow = iw // 2 - 1 + b
            dw = iw - 2 * ow
            m = (qm & vh & (ow >= 0) & (ow < OW) & (dw <= 2))[:, None] & cm
            ptr = (n * son + oh * soh + ow * sow)[:, None] + coff * soc
            hit = tl.load(arg + ptr, mask=m, other=-1).to(tl.int32) == (dh * 3 + dw)[:, None]
            acc += tl.where(hit, tl.load(gp + ptr, mask=m, other=0.0), 0.0)
    xptr = (n * sxn + ih * sxh + iw * sxw)[:, None] + coff * sxc
    xv = tl.load(x + xptr, mask=qm[:, None] & cm, other=0.0).to(tl.float32)
    tl.store(gx + xptr, tl.where(xv > 0, acc, 0.0).to(gx.dtype.element_ty), mask=qm[:, None] & cm)


def _like(x: torch.Tensor, shape, dtype) -> torch.Tensor:
    """A new tensor of ``shape`` in ``x``'s memory format (channels_last stays channels_last)."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.empty(shape, dtype=dtype, device=x.device, memory_format=torch.channels_last if cl else torch.contiguous_format)


def _out_shape(x: torch.Tensor):
    n, c, h, w = x.shape
    return n, c, (h - POOL) // STRIDE + 1, (w - POOL) // STRIDE + 1


def _grid(pixels: int, channels: int):
    return triton.cdiv(pixels, BLOCK_P), triton.cdiv(channels, BLOCK_C)


@torch.library.custom_op("fastft::relu_pool_lrn", mutates_args=())
def _forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = _out_shape(x)
    out, pooled, arg = _like(x, shape, x.dtype), _like(x, shape, x.dtype), _like(x, shape, torch.int8)
    n, c, oh, ow = shape
    _fwd_kernel[_grid(n * oh * ow, c)](x, out, pooled, arg, n * oh * ow, c, oh, ow, *x.stride(), *out.stride(),
                                       alpha, beta, k, SIZE=size, BP=BLOCK_P, BC=BLOCK_C)
    return out, pooled, arg


@_forward.register_fake
def _(x, size, alpha, beta, k):
    shape = _out_shape(x)
    return _like(x, shape, x.dtype), _like(x, shape, x.dtype), _like(x, shape, torch.int8)


@torch.library.custom_op("fastft::relu_pool_lrn_backward", mutates_args=())
def _backward(g: torch.Tensor, x: torch.Tensor, pooled: torch.Tensor, arg: torch.Tensor, size: int, alpha: float,
              beta: float, k: float) -> torch.Tensor:
    n, c, oh, ow = pooled.shape
    gp = _like(pooled, pooled.shape, torch.float32)
    _lrn_bwd_kernel[_grid(n * oh * ow, c)](g, pooled, gp, n * oh * ow, c, oh, ow, *pooled.stride(), *g.stride(),
                                           alpha, beta, k, SIZE=size, BP=BLOCK_P, BC=BLOCK_C)
    gx = _like(x, x.shape, x.dtype)
    h, w = x.shape[2:]
    _pool_bwd_kernel[_grid(n * h * w, c)](x, gp, arg, gx, n * h * w, c, h, w, oh, ow, *x.stride(), *pooled.stride(),
                                          BP=BLOCK_P, BC=BLOCK_C)
    return gx


@_backward.register_fake
def _(g, x, pooled, arg, size, alpha, beta, k):
    return _like(x, x.shape, x.dtype)


def _setup(ctx, inputs, output):
    x, size, alpha, beta, k = inputs
    _, pooled, arg = output
    ctx.save_for_backward(x, pooled, arg)
    ctx.lrn = (size, alpha, beta, k)


def _grad(ctx, g, _gpooled, _garg):
    x, pooled, arg = ctx.saved_tensors
    return _backward(g, x, pooled, arg, *ctx.lrn), None, None, None, None


torch.library.register_autograd("fastft::relu_pool_lrn", _grad, setup_context=_setup)


def reference(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """The kernels' arithmetic in PyTorch ops: float32 ReLU → max-pool → LRN of ``x``'s values, in ``x``'s dtype."""
    r = F.max_pool2d(F.relu(x.float()), POOL, STRIDE)
    return F.local_response_norm(r, size, alpha, beta, k).to(x.dtype)


def _checked(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[2] < POOL or x.shape[3] < POOL:
        raise ValueError(f"relu_pool_lrn needs an [N, C, H, W] input with H, W >= {POOL}, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"relu_pool_lrn takes float32, bfloat16 or float16, got {x.dtype}")


def relu_pool_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> torch.Tensor:
    """``LocalResponseNorm(size, alpha, beta, k)(max_pool2d(relu(x), 3, 2))`` in one kernel (differentiable). On CPU
    tensors without Triton's interpreter: :func:`reference`."""
    _checked(x)
    if not x.is_cuda and not INTERPRET:
        return reference(x, size, alpha, beta, k)
    return _forward(x, int(size), float(alpha), float(beta), float(k))[0]


class ReluPoolLRN(nn.Module):
    """``nn.Sequential(ReLU, MaxPool2d(3, 2), LocalResponseNorm(size, alpha, beta, k))`` as one op; no parameters."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_pool_lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
