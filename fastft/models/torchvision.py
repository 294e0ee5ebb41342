"""torchvision's classification models (ResNet-18/34/50/101, VGG-16 with batch norm, torchvision's AlexNet) as
fastft models: torchvision's own modules, built with ``weights=None`` (nothing is ever downloaded), regrouped into
named blocks so that they meet the protocol of :mod:`fastft.models` (named taps, ``freeze(n)``, ``replace_head``).

* ResNets: ``stem`` (conv1 → bn1 → ReLU → max-pool), ``layer1`` … ``layer4`` (the stages), ``pool`` (global average
  pool, flattened: the pooled features), ``fc`` (the head). ``freeze=n`` keeps the first n of stem, layer1 … layer4.
* ``vgg16_bn`` and ``tv-alexnet``: ``conv1`` … ``conv5`` (one block per pooling stage, ending in its max-pool), then
  ``fc6`` (the adaptive average pool, flatten, Linear, ReLU), ``fc7`` (Dropout, Linear, ReLU), ``fc8`` (the head) —
  the paper's AlexNet's names, so its analyses' defaults (fc7, conv5) read the same layers. torchvision's dropout
  after a ReLU is this dropout before the next Linear: the same network.

The blocks hold the very module objects torchvision built, in torchvision's order: the forward pass is torchvision's,
and the state dict is torchvision's with other names. The mapping between the two names of each tensor is found
once, by identity (:func:`_key_map`), so a plain torchvision state dict (``torchvision.models.resnet50(weights=…)
.state_dict()``, or a file from ``~/.cache/torch/hub/checkpoints/``) loads through :meth:`TorchvisionNet.adopt`
(``source=FILE``, see :func:`fastft.weights.read_source`), and :meth:`TorchvisionNet.torchvision_state_dict` gives
one back that torchvision's own model loads.

A frozen block is fixed whole: its parameters take no gradient and its batch-norm layers stay in eval mode (their
running statistics are part of what was learnt), whatever ``train()`` is called with.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from . import ALEXNET_LAYERS as VGG_LAYERS, RESNET_LAYERS, forward_layers, spec
from ..errors import FastFTError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
# where each conv block of torchvision's ``features`` ends (after its max-pool)
BLOCK_ENDS = {"vgg16_bn": (7, 14, 24, 34, 44), "tv-alexnet": (3, 6, 8, 10, 13)}
TORCHVISION_NAME = {"tv-alexnet": "alexnet"}  # fastft's name -> torchvision's (the paper's AlexNet is "alexnet")


@dataclass(frozen=True)
class Config:
    num_classes: int
    input_size: int = 227  # the crop the model is fed (any size from the model's minimum: the pools are adaptive)


def _torchvision(name: str, num_classes: int) -> nn.Module:
    """torchvision's model, randomly initialised as torchvision initialises it (``weights=None``: no download)."""
    import torchvision

    return getattr(torchvision.models, TORCHVISION_NAME.get(name, name))(weights=None, num_classes=num_classes)


def _blocks(name: str, tv: nn.Module) -> OrderedDict:
    """torchvision's modules regrouped into fastft's named blocks (the same objects)."""
    if name in RESNETS:
        return OrderedDict(
            stem=nn.Sequential(OrderedDict(conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool)),
            layer1=tv.layer1, layer2=tv.layer2, layer3=tv.layer3, layer4=tv.layer4,
            pool=nn.Sequential(tv.avgpool, nn.Flatten()), fc=tv.fc)
    f, c = list(tv.features), list(tv.classifier)
    ends = (0, *BLOCK_ENDS[name])
    out = OrderedDict((f"conv{i + 1}", nn.Sequential(*f[a:b])) for i, (a, b) in enumerate(zip(ends, ends[1:])))
    if name == "vgg16_bn":  # classifier: Linear ReLU Dropout Linear ReLU Dropout Linear
        out["fc6"] = nn.Sequential(tv.avgpool, nn.Flatten(), c[0], c[1])
        out["fc7"] = nn.Sequential(c[2], c[3], c[4])
        out["fc8"] = nn.Sequential(c[5], c[6])
    else:  # torchvision's AlexNet: Dropout Linear ReLU Dropout Linear ReLU Linear
        out["fc6"] = nn.Sequential(tv.avgpool, nn.Flatten(), c[0], c[1], c[2])
        out["fc7"] = nn.Sequential(c[3], c[4], c[5])
        out["fc8"] = nn.Sequential(c[6])
    return out


def _key_map(ours: nn.Module, tv: nn.Module) -> dict[str, str]:
    """fastft's state-dict key -> torchvision's, for every tensor (the two hold the same tensor objects)."""
    theirs = {id(t): k for k, t in tv.state_dict(keep_vars=True).items()}
    return {k: theirs[id(t)] for k, t in ours.state_dict(keep_vars=True).items()}


def _some(keys: list) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


class TorchvisionNet(nn.Module):
    def __init__(self, name: str, cfg: Config):
        super().__init__()
        self.name, self.cfg = name, cfg
        self.LAYERS = RESNET_LAYERS if name in RESNETS else VGG_LAYERS
        self.FREEZABLE = self.LAYERS[:5] if name in RESNETS else self.LAYERS[:7]
        tv = _torchvision(name, cfg.num_classes)
        for k, m in _blocks(name, tv).items():
            setattr(self, k, m)
        self._frozen: tuple[str, ...] = ()
        self._tv_keys = _key_map(self, tv)

    # -- the protocol (fastft.models)
    def forward(self, x: torch.Tensor, taps: tuple[str, ...] | None = None):
        return forward_layers(self, self.LAYERS, x, taps)

    def replace_head(self, num_classes: int) -> None:
        """Fine-tuning: a new head with ``num_classes`` outputs, initialised as torchvision initialises its own."""
        head = self.LAYERS[-1]
        block, attr = (self, head) if isinstance(getattr(self, head), nn.Linear) else (getattr(self, head), str(len(getattr(self, head)) - 1))
        old = getattr(block, attr)
        new = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        if self.name not in RESNETS:  # torchvision's VGG/AlexNet init of a Linear (a ResNet's fc keeps nn.Linear's)
            nn.init.normal_(new.weight, 0, 0.01)
            nn.init.zeros_(new.bias)
        setattr(block, attr, new)
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes)

    def freeze(self, n: int) -> list[str]:
        """Keep the first ``n`` of :attr:`FREEZABLE` fixed (parameters and batch-norm statistics); their names."""
        if not 0 <= n <= len(self.FREEZABLE):
            raise FastFTError(f"freeze must be 0..{len(self.FREEZABLE)} ({self.FREEZABLE[0]} … {self.FREEZABLE[-1]}), got {n}")
        self._frozen = self.FREEZABLE[:n]
        for name in self._frozen:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        self.train(self.training)
        return list(self._frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self._frozen:  # a fixed layer's batch-norm statistics are fixed too
            getattr(self, name).eval()
        return self

    # -- torchvision's state dicts
    def torchvision_state_dict(self) -> dict:
        """This model's weights under torchvision's names (``torchvision.models.<name>(num_classes=…)`` loads it)."""
        return {self._tv_keys[k]: v for k, v in self.state_dict().items()}

    def torchvision_names(self) -> dict:
        """What ``model.pt`` records so that plain torchvision loads it: torchvision's model name and, per tensor,
        fastft's key -> torchvision's."""
        return {"name": TORCHVISION_NAME.get(self.name, self.name), "keys": dict(self._tv_keys)}

    def adopt(self, state: dict, where: str) -> dict:
        """A torchvision state dict of this architecture under fastft's names, every key and shape checked: one of
        another model (or another depth) is named by its missing and unexpected keys, not loaded in part."""
        back = {v: k for k, v in self._tv_keys.items()}
        missing = [k for k in back if k not in state]
        unexpected = [k for k in state if k not in back]
        tv_name = TORCHVISION_NAME.get(self.name, self.name)
        if missing or unexpected:
            parts = ([f"missing {len(missing)} key(s): {_some(missing)}"] if missing else []) + \
                    ([f"unexpected {len(unexpected)} key(s): {_some(unexpected)}"] if unexpected else [])
            fits = fitting(state)
            hint = (f"it fits {' / '.join(fits)}: set model={fits[0]}" if fits else
                    "set model= to the architecture the file was saved from")
            raise FastFTError(f"{where} is not a torchvision {tv_name} state dict: {'; '.join(parts)} ({hint})")
        ours = self.state_dict()
        for k, ok in back.items():
            if ours[ok].shape != state[k].shape:
                raise FastFTError(f"{where}: {k} has shape {tuple(state[k].shape)} where torchvision's {tv_name} has "
                                  f"{tuple(ours[ok].shape)}: not a state dict of this architecture")
        return {back[k]: v for k, v in state.items()}


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def unwrap(state: dict) -> dict:
    """A state dict saved from a wrapped model (every key ``module.…`` or ``_orig_mod.…``) under the model's own keys."""
    for prefix in WRAPPER_PREFIXES:
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def fitting(state: dict) -> list[str]:
    """The registered torchvision models whose state dict has exactly ``state``'s keys (what a file that fits none
    of the chosen model's keys was most likely saved from). Built on the meta device: no memory, no weights."""
    import torchvision

    keys, found = set(state), []
    for name in ARCHS:
        with torch.device("meta"):
            tv = torchvision.models.get_model(TORCHVISION_NAME.get(name, name), weights=None)
        if set(tv.state_dict()) == keys:
            found.append(name)
    return found


def head_classes(state: dict, name: str) -> int | None:
    """The class count a torchvision state dict's head was saved with (None: no head of this model's name)."""
    w = state.get("fc.weight" if name in RESNETS else "classifier.6.weight")
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 2 else None


class Arch:
    """One architecture of this module as the registry sees a model's module (:func:`fastft.models.module`):
    ``Config``, ``check_config``, ``build``."""
    Config = Config

    def __init__(self, name: str):
        self.name = name

    def check_config(self, cfg: Config) -> str | None:
        """``input_size`` when a model file's crop is below this model's smallest input."""
        return None if cfg.input_size >= spec(self.name).min_crop else "input_size"

    def build(self, num_classes: int, **keys) -> TorchvisionNet:
        return TorchvisionNet(self.name, Config(num_classes, **keys))

    def adopt(self, state: dict, where: str) -> tuple[dict, Config]:
        """(a plain torchvision state dict under fastft's names, the Config it fits)."""
        state = unwrap(state)
        n = head_classes(state, self.name)
        if n is None:  # no head of this architecture: the check names every missing and unexpected key
            n = 1000
        return self.build(n).adopt(state, where), Config(n)


ARCHS = {name: Arch(name) for name in (*RESNETS, "vgg16_bn", "tv-alexnet")}


def arch(name: str) -> Arch:
    """What the registry builds model ``name`` with (this module serves several models; see :mod:`fastft.models`)."""
    return ARCHS[name]
