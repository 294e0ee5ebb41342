"""Step variant ``fused-relu-pool-lrn``: every ``ReLU → MaxPool2d(3, 2) → LocalResponseNorm`` in the model (the paper's
AlexNet: conv1 and conv2) becomes :class:`fastft.kernels.relu_pool_lrn.ReluPoolLRN` — one Triton kernel forward, two
backward, the same arithmetic in float32 (see that module for how it differs from the eager ops in bfloat16)."""
from __future__ import annotations

import importlib.util

from torch import nn
from torch.nn.modules.utils import _pair

from ...errors import FastFTError


def unavailable(device: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    return None


def _pool_3_2(m: nn.Module) -> bool:
    return (isinstance(m, nn.MaxPool2d) and _pair(m.kernel_size) == (3, 3) and _pair(m.stride) == (2, 2)
            and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)


def apply(model: nn.Module) -> str:
    """Replace each matching triple in every ``nn.Sequential`` by the fused op and two ``nn.Identity`` (indices, and so
    state-dict keys, unchanged). A model without one is named: the variant would measure nothing."""
    from ...kernels.relu_pool_lrn import ReluPoolLRN

    done = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 2):
            a, b, c = seq[i], seq[i + 1], seq[i + 2]
            if isinstance(a, nn.ReLU) and _pool_3_2(b) and isinstance(c, nn.LocalResponseNorm):
                seq[i] = ReluPoolLRN(c.size, c.alpha, c.beta, c.k)
                seq[i + 1], seq[i + 2] = nn.Identity(), nn.Identity()
                done.append(f"{name}[{i}:{i + 3}]")
    if not done:
        raise FastFTError(f"step variant fused-relu-pool-lrn: {type(model).__name__} has no ReLU → MaxPool2d(3, 2) → "
                          "LocalResponseNorm sequence to fuse (the paper's AlexNet has two)")
    return ", ".join(done)
