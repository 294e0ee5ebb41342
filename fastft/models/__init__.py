"""Models: one registry names every architecture fastft trains and analyses, torch-free, so that plans, claims and the
report can know a model's layers without importing torch.

A registered model is a module that defines its ``nn.Module`` and meets a small protocol (see
:mod:`fastft.models.alexnet`): named layers in network order (``LAYERS``: the analyses' taps, ``forward(x,
taps=…)``), ``freeze(n)`` of the first ``n`` of ``FREEZABLE``, ``replace_head(num_classes)`` and a ``cfg`` holding its
config. ``build(name, num_classes, **keys)`` makes one; adding an architecture is one new module plus a
:func:`register` line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import FastFTError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    module: str                  # the module defining it (imported only when a model is built)
    layers: tuple[str, ...]      # named outputs, in network order
    freezable: tuple[str, ...]   # freeze=n keeps the first n of these fixed


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
register(ModelSpec("alexnet", "fastft.models.alexnet", ALEXNET_LAYERS, ALEXNET_LAYERS[:7]))


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FastFTError(f"model {name!r} is not registered; models: {', '.join(sorted(REGISTRY))}") from None


def all_layers() -> tuple[str, ...]:
    """Every layer name of every registered model (what a claim's ``probe_<layer>`` may name)."""
    return tuple(dict.fromkeys(l for s in REGISTRY.values() for l in s.layers))


def build(name: str, num_classes: int, **keys):
    """A new, initialised model ``name`` with ``num_classes`` outputs; ``keys`` are its own config keys."""
    return importlib.import_module(spec(name).module).build(num_classes, **keys)
