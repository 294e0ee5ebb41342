"""The paper's AlexNet (Table 1 of the paper) with named layer outputs.

Layer order is the paper's Table 1, ReLU → max-pool → LRN in conv1 and conv2 (as in the CaffeNet reference model),
not ``bvlc_alexnet``'s ReLU → LRN → pool; conv3/conv4 end in ReLU, conv5 in ReLU → pool; fc6/fc7 are ReLU layers
after a dropout of their input (dropout 0.5 follows fc6 and fc7, as the paper says), fc8 gives the logits. Layers
``conv1 … fc8`` are attributes; ``forward(x, taps=[...])`` also returns the named outputs the analyses use.
``width`` scales every conv and fc width (1.0 = the paper) and ``input_size`` the input, so CPU tests and the demo run
a small configuration of the same code.

Initialisation (``init``):

* ``paper`` (§3): weights N(0, 0.01), fc6/fc7 N(0, 0.005); biases 1 in conv2, conv4, conv5 and every fc layer, 0
  elsewhere. Those σ were chosen for the full-size fan-ins, and for inputs on Caffe's 0–255 scale
  (:mod:`fastft.preprocess`).
* ``paper-scaled``: the same, with each layer's σ multiplied by √(full-size fan-in / this model's fan-in), so every
  layer has the gain it has in the full-size model (identical to ``paper`` at width 1.0 and a 227 input). A scaled
  configuration needs it: at width 0.25 and a 71 input fc6 has 64 inputs instead of 9,216, each conv 1/4 of its
  inputs, and with the paper's σ the signal reaching fc6 is ~1/300 of the full-size model's (across-sample spread
  of fc6 at init 0.0003 vs 0.09; conv1's gradient ~1/600): such a run stays at ln C
  (``benchmarks/results/learning-cpu2-2026-12-02.json``).
* ``kaiming``: He-normal weights, zero biases, fc8 N(0, 0.01): for inputs of unit variance (``preprocess:
  imagenet``); on Caffe's scale its activations are ~50× too large and a run diverges at once.

Runs record which init and preprocessing they used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from . import ALEXNET_INITS, ALEXNET_LAYERS, forward_layers
from ..errors import FastFTError

INITS = ALEXNET_INITS
LAYERS = ALEXNET_LAYERS
FREEZABLE = LAYERS[:7]  # freeze=n keeps conv1 … the n-th of these fixed


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    width: float = 1.0       # channel multiplier (1.0: 96/256/384/384/256 convs, 4096 fc)
    input_size: int = 227
    groups: bool = False     # Caffe's 2-group conv2/conv4/conv5
    dropout: float = 0.5
    init: str = "paper"      # paper | paper-scaled | kaiming (see the module docstring)


Config = ModelConfig  # the registry's name for a model's config (fastft.models)


def check_config(cfg: ModelConfig) -> str | None:
    """The first field of a model file's config that is out of range (its name), or None."""
    for k, ok in (("width", math.isfinite(cfg.width) and cfg.width > 0), ("dropout", 0 <= cfg.dropout < 1),
                  ("init", cfg.init in INITS)):
        if not ok:
            return k
    return None


def _spatial(n: int) -> int:
    conv = lambda s, k, st, p=0: (s + 2 * p - k) // st + 1  # noqa: E731
    s = conv(n, 11, 4)
    s = conv(s, 3, 2)          # pool1
    s = conv(s, 3, 2)          # pool2 (conv2 keeps size)
    s = conv(s, 3, 2)          # pool5
    return s


def _paper_fan_in(name: str, groups: bool) -> int:
    """Inputs per output unit of layer ``name`` in the full-size model (width 1.0, 227 input; conv2/4/5 halved when
    grouped): the fan-in the paper's σ were chosen for."""
    g = 2 if groups else 1
    return {"conv1": 3 * 11 * 11, "conv2": 96 // g * 25, "conv3": 256 * 9, "conv4": 384 // g * 9, "conv5": 384 // g * 9,
            "fc6": 256 * 6 * 6, "fc7": 4096, "fc8": 4096}[name]


class _InputPadConv(nn.Conv2d):
    """conv1: an ``nn.Conv2d`` (same parameters and state dict) that can zero-pad its input channels (see
    :meth:`AlexNet.pad_input`)."""
    pad_to = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.pad_to - x.shape[1]
        if extra <= 0:
            return super().forward(x)
        x = nn.functional.pad(x, (0, 0, 0, 0, 0, extra))
        return self._conv_forward(x, nn.functional.pad(self.weight, (0, 0, 0, 0, 0, extra)), self.bias)


class AlexNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.init not in INITS:
            raise FastFTError(f"init must be one of {', '.join(INITS)}, got {cfg.init!r}")
        self.cfg = cfg
        c = [max(8, round(x * cfg.width)) for x in (96, 256, 384, 384, 256)]
        fc = max(16, round(4096 * cfg.width))
        g = 2 if cfg.groups else 1
        s = _spatial(cfg.input_size)
        if s < 1:
            raise FastFTError(f"input size {cfg.input_size} is too small for AlexNet (needs >= 67 pixels)")
        lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
        self.conv1 = nn.Sequential(_InputPadConv(3, c[0], 11, 4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), lrn())
        self.conv2 = nn.Sequential(nn.Conv2d(c[0], c[1], 5, padding=2, groups=g), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), lrn())
        self.conv3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True))
        self.conv4 = nn.Sequential(nn.Conv2d(c[2], c[3], 3, padding=1, groups=g), nn.ReLU(inplace=True))
        self.conv5 = nn.Sequential(nn.Conv2d(c[3], c[4], 3, padding=1, groups=g), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.fc6 = nn.Sequential(nn.Flatten(), nn.Linear(c[4] * s * s, fc), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fc, fc), nn.ReLU(inplace=True))
        self.fc8 = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(fc, cfg.num_classes))
        self.reset_parameters()

    def reset_parameters(self, only: tuple[str, ...] = LAYERS) -> None:
        for name in only:
            for m in getattr(self, name).modules():
                if not isinstance(m, (nn.Conv2d, nn.Linear)):
                    continue
                if self.cfg.init == "kaiming":
                    if name == "fc8":
                        nn.init.normal_(m.weight, 0.0, 0.01)
                    else:
                        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
                else:
                    std = 0.005 if name in ("fc6", "fc7") else 0.01
                    if self.cfg.init == "paper-scaled":
                        std *= math.sqrt(_paper_fan_in(name, self.cfg.groups) / m.weight[0].numel())
                    nn.init.normal_(m.weight, 0.0, std)
                    nn.init.constant_(m.bias, 0.0 if name in ("conv1", "conv3") else 1.0)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):
        return forward_layers(self, LAYERS, x, taps)

    def pad_input(self, channels: int) -> None:
        """Feed conv1 ``channels`` input channels (3 + zeros), weight zero-padded to match inside the step: same
        result and same parameters; on GPUs cuDNN's bf16 NHWC kernels then need no padding pass of their own (inside a
        compiled step the padding fuses with the input cast). 0 = off."""
        self.conv1[0].pad_to = channels

    def replace_head(self, num_classes: int) -> None:
        """Fine-tuning: a new, randomly initialised fc8 with ``num_classes`` outputs (paper init)."""
        lin = self.fc8[1]
        self.fc8[1] = nn.Linear(lin.in_features, num_classes).to(lin.weight.device, lin.weight.dtype)
        self.reset_parameters(("fc8",))
        self.cfg = ModelConfig(num_classes, self.cfg.width, self.cfg.input_size, self.cfg.groups, self.cfg.dropout, self.cfg.init)

    def freeze(self, n: int) -> list[str]:
        """Keep the first ``n`` layers (conv1 … fc7) fixed; returns their names."""
        if not 0 <= n <= len(FREEZABLE):
            raise FastFTError(f"freeze must be 0..{len(FREEZABLE)} (conv1 … fc7), got {n}")
        for name in FREEZABLE[:n]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        return list(FREEZABLE[:n])


def build(num_classes: int, **keys) -> AlexNet:
    """The registry's constructor (:func:`fastft.models.build`): ``keys`` are :class:`ModelConfig`'s other fields."""
    return AlexNet(ModelConfig(num_classes, **keys))
