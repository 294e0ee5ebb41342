"""Step variants: named changes to the training step that ``fastft bench train --steps`` measures against the current
best step in the same run, e.g. ``--steps compile+graph+fused+pad8,compile+graph+fused+pad8+fused-relu-pool-lrn``.

A step mode is ``eager`` or ``+``-joined flags: the step's own (``compile``, ``graph``, ``fused``, ``pad4``/``pad8``,
see :func:`fastft.bench._make_step`) and any of the variants registered here. A variant is one module (a file in
this package) defining ``apply(model)``, which changes the freshly built model in place (on its device, before the
optimiser is made; parameters and state-dict keys unchanged) and returns what it replaced, and optionally
``unavailable(device)``, the reason it cannot run there, or None. Adding one is a new file plus a :func:`register`
call below. None is a default of ``fastft train``: a variant becomes one only after it is measured faster and shown
to keep the paper's numbers.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ...errors import FastFTError


@dataclass(frozen=True)
class StepVariant:
    name: str
    module: str    # the module defining apply(model) (imported only when the variant is used)
    summary: str   # one line for --help and the bench JSON


REGISTRY: dict[str, StepVariant] = {}


def register(v: StepVariant) -> StepVariant:
    REGISTRY[v.name] = v
    return v


register(StepVariant("fused-relu-pool-lrn", "fastft.train.variants.fused_relu_pool_lrn",
                     "ReLU → max-pool(3,2) → LRN (conv1, conv2) as one Triton kernel forward and two backward"))


def get(name: str) -> StepVariant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FastFTError(f"step variant {name!r} is not registered; variants: {', '.join(sorted(REGISTRY))}") from None


def apply(names, model, device: str) -> list[str]:
    """Apply the variants ``names`` (in order) to ``model`` on ``device``; returns what each replaced."""
    done = []
    for name in names:
        mod = importlib.import_module(get(name).module)
        why = getattr(mod, "unavailable", lambda d: None)(device)
        if why:
            raise FastFTError(f"step variant {name} cannot run on {device}: {why}")
        done.append(f"{name}: {mod.apply(model)}")
    return done
