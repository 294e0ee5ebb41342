"""The paper's optimiser: SGD with momentum and weight decay, with Caffe's per-parameter multipliers (biases, a
fine-tune's new head) as parameter groups, and the schedule's LR applied per group."""
from __future__ import annotations

import torch

from .config import TrainConfig


def param_groups(model, cfg: TrainConfig, head: tuple[str, ...] = ()) -> list[dict]:
    """SGD parameter groups with Caffe's per-parameter multipliers: each group carries ``lr_mult`` (its LR is the
    schedule's × ``lr_mult``, see :func:`set_lr`) and its own ``weight_decay``. Biases (parameters named ``*.bias``)
    get ``bias_lr_mult`` and ``bias_decay_mult``; the modules named in ``head`` (a fine-tune's new fc8) get
    ``head_lr_mult`` on top. Frozen parameters are in no group. Empty groups are left out."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bias = name.endswith("bias")
        lr_mult = (cfg.bias_lr_mult if bias else 1.0) * (cfg.head_lr_mult if name.split(".")[0] in head else 1.0)
        decay = cfg.weight_decay * (cfg.bias_decay_mult if bias else 1.0)
        groups.setdefault((lr_mult, decay), []).append(p)
    return [{"params": ps, "lr_mult": m, "weight_decay": d} for (m, d), ps in groups.items()]


def set_lr(opt, lr: float) -> None:
    """The schedule's LR for this epoch, times each group's ``lr_mult``."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def sgd(params, lr: float, momentum: float, weight_decay: float, fused: bool = False) -> torch.optim.SGD:
    """The paper's optimiser (SGD with momentum and weight decay); ``params`` may be :func:`param_groups`' groups
    (their own ``weight_decay``); ``fused``: one kernel per update on CUDA."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **({"fused": True} if fused else {}))
