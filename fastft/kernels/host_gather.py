"""The host tier's crops gathered by the GPU itself, straight from pinned host memory: no CPU gather, no staging copy.

The decoded-image cache keeps what the GPU cannot hold as uint8 images [M, H, W, 3] in pinned host memory
(:mod:`fastft.loading.cache`). Pinned memory is mapped into the GPU's address space (unified virtual addressing: the
device pointer of a ``cudaHostAlloc`` allocation is its host pointer), so a kernel can load from it over the host
link directly. :func:`gather_crops` does that for one step's host-tier samples: each program walks blocks of crop
rows ``(sample, y…)``, reads each row's ``crop × 3`` bytes at ``(y0 + y, x0 …)`` of image ``slot`` — only the crop crosses the
link, ~79 % of the image at 227 of 256 — mirrored where ``mirror`` says, and writes the uint8 crops [k, c, c, 3] to
device memory, where the cache normalises them as it does the device tier's. The result is the cache's own crop
(``fastft.loading.augment._crop``) byte for byte: a copy, no arithmetic.

``programs`` bounds the grid: the gather runs on a side stream next to the training step, and the loads wait on the
link rather than on the SMs, so a few programs per SM keep enough requests in flight. On CPU tensors the same kernel
runs through Triton's interpreter (the tests; a CPU run has no host tier of its own).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_kernel(host, slot, x0, y0, mirror, out, K, H, W, CROP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    j = tl.arange(0, BLOCK)[None, :]  # byte j of a crop row: pixel j // 3, channel j % 3
    px, ch = j // 3, j % 3
    blocks = (CROP + ROWS - 1) // ROWS  # ROWS rows of one sample per unit of work
    for u in range(tl.program_id(0), K * blocks, tl.num_programs(0)):
        i = u // blocks
        y = (u % blocks) * ROWS + tl.arange(0, ROWS)[:, None]
        s = tl.load(slot + i).to(tl.int64)
        left = tl.load(x0 + i).to(tl.int64)
        top = tl.load(y0 + i).to(tl.int64)
        flip = tl.load(mirror + i) != 0
        sx = tl.where(flip, CROP - 1 - px, px)
        valid = (j < CROP * 3) & (y < CROP)
        src = host + ((s * H + top + y) * W + left) * 3 + sx * 3 + ch
        v = tl.load(src, mask=valid, other=0)
        tl.store(out + (i * CROP + y) * (CROP * 3) + j, v, mask=valid)


ROWS = 4  # crop rows per unit of work on a GPU (untuned: the GPU session measures)
_interpreted = None


def _cpu_kernel():
    """The kernel under Triton's interpreter, whatever TRITON_INTERPRET says (CPU tensors)."""
    global _interpreted
    if _interpreted is None:
        from triton.runtime.interpreter import InterpretedFunction

        _interpreted = InterpretedFunction(getattr(_gather_kernel, "fn", _gather_kernel))
    return _interpreted


def check_host(host: torch.Tensor, device: torch.device) -> str | None:
    """Why ``host`` cannot be read by the GPU gather on ``device`` (None if it can)."""
    if host.dim() != 4 or host.shape[3] != 3 or host.dtype != torch.uint8 or not host.is_contiguous():
        return f"the host tier must be contiguous uint8 [M, H, W, 3], got {host.dtype} {tuple(host.shape)}"
    if device.type == "cuda" and not host.is_pinned():
        return "the host tier is not in pinned memory: the GPU cannot map it"
    return None


def gather_crops(host: torch.Tensor, slot: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, mirror: torch.Tensor,
                 crop: int, out: torch.Tensor | None = None, programs: int = 0) -> torch.Tensor:
    """uint8 crops [k, c, c, 3] of ``host[slot]`` (pinned host memory) at ``(y0, x0)``, mirrored where ``mirror``, on
    ``slot``'s device, read by that device from host memory. ``out``: a buffer to fill (its first k rows); ``programs``:
    the grid (0: 4 per SM on a GPU)."""
    k, dev = len(slot), slot.device
    why = check_host(host, dev)
    if why:
        raise ValueError(why)
    _, h, w, _ = host.shape
    out = torch.empty((k, crop, crop, 3), dtype=torch.uint8, device=dev) if out is None else out[:k]
    if k == 0:
        return out
    if dev.type == "cuda":
        kernel, grid, rows = _gather_kernel, programs or 4 * torch.cuda.get_device_properties(dev).multi_processor_count, ROWS
    else:  # the interpreter pays per operation, not per element: a whole crop per step of the loop
        kernel, grid, rows = _cpu_kernel(), programs or 4, triton.next_power_of_2(crop)
    units = k * triton.cdiv(crop, rows)
    kernel[(min(grid, units),)](host, slot, x0, y0, mirror.to(torch.uint8), out, k, h, w, CROP=crop, ROWS=rows,
                                BLOCK=triton.next_power_of_2(crop * 3))
    return out

