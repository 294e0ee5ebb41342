"""Models: one registry names every architecture fastft trains and analyses, torch-free, so that plans, claims, the
report and ``fastft train --help`` can know a model's layers and keys without importing torch.

A registered model is a module (named in its :class:`ModelSpec`, imported only when a model is built) that defines
``Config``, a frozen dataclass whose first field is ``num_classes`` (``vars(model.cfg)`` plus the model's name is the
``model_config`` its ``model.pt`` records), and ``build(num_classes, **keys)`` returning an ``nn.Module`` that meets a
small protocol (:mod:`fastft.models.alexnet` is the example):

* ``LAYERS``: named outputs in network order, each a submodule attribute of that name; ``forward(x)`` gives the
  logits and ``forward(x, taps=(…))`` a dict of the named outputs (the analyses' taps). The last layer is the head.
* ``freeze(n)``: keep the first ``n`` of ``FREEZABLE`` fixed, returning their names; ``replace_head(num_classes)``:
  a new, initialised head (fine-tuning; the head learns at ``head_lr_mult``).
* ``cfg``: its ``Config``; optional: ``check_config(cfg)`` in the module (an out-of-range field's name, or None),
  ``pad_input(channels)`` on the model (``conv1_pad``, a train key the spec lists in ``options``).

A module may define several models: then it defines ``arch(name)``, giving each one's ``Config``/``build``/
``check_config`` (:mod:`fastft.models.torchvision`: torchvision's ResNets, VGG-16-BN and AlexNet, ``tv-alexnet``).
The spec also says what the rest of fastft needs to know without building the model: its input scale
(``preprocess: auto``), its smallest crop, the layer the SVM and the distance read (``features``), its last conv layer
(``conv``: the filters analysis) and, for torchvision's models, that ``source=`` may be a torchvision state dict.

A model takes the train keys its spec names in ``keys`` (e.g. ``crop`` as its ``input_size``); a run that sets a
key the model does not take is an error before any work. ``build(name, num_classes, **keys)`` makes one; adding an
architecture is one new module plus a :func:`register` call (here, or in the user's code before the run starts).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import FastFTError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str                  # the module defining it (imported only when a model is built)
    layers: tuple[str, ...]      # named outputs, in network order; the last is the head
    freezable: tuple[str, ...]   # freeze=n keeps the first n of these fixed
    keys: dict = field(default_factory=dict)  # train key -> its Config field, for the train keys this model takes
    source_keys: tuple[str, ...] = ()         # train keys a fine-tune must share with its source (the weights' shapes)
    options: tuple[str, ...] = ()             # train keys it takes that are not Config fields (conv1_pad: pad_input)
    preprocess: str = "caffe"                 # preprocess: auto gives this model this input scale (fastft.preprocess)
    min_crop: int = 1                         # its smallest input side
    features: str | None = None               # the pooled features (svm, distance); default: the layer before the head
    conv: str | None = None                   # its last conv layer (filters: per-filter AP); None: it has none named
    torchvision: str | None = None            # torchvision's name for it: source= may be a torchvision state dict
    choices: dict = field(default_factory=dict)  # train key -> its allowed values (checked before any work)

    @property
    def head(self) -> str:
        return self.layers[-1]

    @property
    def feature_layer(self) -> str:
        return self.features or self.layers[-2]


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
ALEXNET_INITS = ("paper", "paper-scaled", "kaiming")
register(ModelSpec("alexnet", "fastft.models.alexnet", ALEXNET_LAYERS, ALEXNET_LAYERS[:7],
                   keys={"width": "width", "crop": "input_size", "groups": "groups", "init": "init"},
                   source_keys=("width", "groups"), options=("conv1_pad",), preprocess="caffe", min_crop=67,
                   features="fc7", conv="conv5", choices={"init": ALEXNET_INITS}))
# torchvision's classification models (fastft/models/torchvision.py), on ImageNet's mean/std input as torchvision
# trains them; a ResNet's smallest input leaves layer4 one pixel, VGG's and torchvision's AlexNet's their last pool
RESNET_LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "fc")
for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register(ModelSpec(_name, "fastft.models.torchvision", RESNET_LAYERS, RESNET_LAYERS[:5], keys={"crop": "input_size"},
                       preprocess="imagenet", min_crop=32, features="pool", conv="layer4", torchvision=_name))
register(ModelSpec("vgg16_bn", "fastft.models.torchvision", ALEXNET_LAYERS, ALEXNET_LAYERS[:7], keys={"crop": "input_size"},
                   preprocess="imagenet", min_crop=32, features="fc7", conv="conv5", torchvision="vgg16_bn"))
register(ModelSpec("tv-alexnet", "fastft.models.torchvision", ALEXNET_LAYERS, ALEXNET_LAYERS[:7], keys={"crop": "input_size"},
                   preprocess="imagenet", min_crop=63, features="fc7", conv="conv5", torchvision="alexnet"))


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise FastFTError(f"model {name!r} is not registered; models: {', '.join(sorted(REGISTRY))}") from None


def module(name: str):
    """The module defining model ``name`` (imports torch); a module that defines several models (``arch(name)``)
    gives the one of that name (its ``Config``, ``build`` and ``check_config``)."""
    mod = importlib.import_module(spec(name).module)
    return mod.arch(name) if hasattr(mod, "arch") else mod


def all_layers() -> tuple[str, ...]:
    """Every layer name of every registered model (what a claim's ``probe_<layer>`` may name)."""
    return tuple(dict.fromkeys(l for s in REGISTRY.values() for l in s.layers))


def model_keys(name: str, train_keys: dict) -> dict:
    """The config keys model ``name`` is built with, from train keys (``{"width": 0.25, "crop": 71, …}``): those it
    takes, under its own names (``crop`` → AlexNet's ``input_size``); the others are not passed."""
    return {field: train_keys[k] for k, field in spec(name).keys.items() if k in train_keys}


def forward_layers(model, layers: tuple[str, ...], x, taps: tuple[str, ...] | None = None):
    """The protocol's ``forward`` for a model that is its named layers in order: the logits, or with ``taps`` a dict
    of the named outputs (stopping after the last one asked for)."""
    if taps is None:
        for name in layers:
            x = getattr(model, name)(x)
        return x
    out = {}
    for name in layers:
        x = getattr(model, name)(x)
        if name in taps:
            out[name] = x
        if len(out) == len(taps):
            break
    return out


def build(name: str, num_classes: int, **keys):
    """A new, initialised model ``name`` with ``num_classes`` outputs; ``keys`` are its own config keys."""
    return module(name).build(num_classes, **keys)
