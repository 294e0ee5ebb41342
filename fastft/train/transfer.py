"""Transfer of the first n layers (Yosinski et al. 2014, "How transferable are features in deep neural networks"):
a fine-tune with ``copy: n`` takes layers 1 … n of its source — in the model's ``LAYERS`` order (:mod:`fastft.models`;
AlexNet: conv1 … fc7) — and re-initialises every later layer, the head included, from the run's seed. With
``freeze: n`` the copied layers stay fixed (AnB / BnB), without they fine-tune with the rest (AnB+ / BnB+).

A fine-tune without ``copy`` is the paper's (Li et al.) fine-tune: every layer but the head copied
(:func:`fastft.train.loop._build`); its run id does not change, since ``copy`` enters a run's identity only when set.

The rules, checked before any work (:func:`check`, called by ``TrainConfig.validate``; torch-free):

* ``copy`` needs ``mode: finetune`` and a ``source`` (what would it copy from?);
* ``1 ≤ copy ≤ len(LAYERS) − 1``: the head is always new (it names the target's classes), and ``copy: 0`` copies
  nothing — that is a scratch run (``mode: scratch``);
* ``freeze ≤ copy`` (more exactly: every layer ``freeze`` keeps fixed is a copied one): freezing a re-initialised
  layer would keep random weights fixed, which no treatment of the paper does.

The fresh layers are exactly a scratch model's (same seed, same number of classes): :func:`build` seeds
``torch.manual_seed(seed)``, builds the model for the target, then overwrites the copied layers' parameters and
buffers with the source's, bit for bit. A parameter that belongs to no named layer is re-initialised with the fresh
model (it is not part of any copied layer).
"""
from __future__ import annotations

from ..errors import FastFTError
from ..models import spec as model_spec


def check(model: str, mode: str, source: str | None, copy: int | None, freeze: int) -> None:
    """The ``copy`` key's rules (see the module docstring); raises :class:`FastFTError` naming what to change."""
    if copy is None:
        return
    if mode != "finetune" or not source:
        raise FastFTError(f"copy {copy!r} copies layers from a source model: it needs mode: finetune and source: "
                          "<run dir or model.pt>")
    s = model_spec(model)
    copyable = s.layers[:-1]
    if isinstance(copy, bool) or not isinstance(copy, int) or not 1 <= copy <= len(copyable):
        raise FastFTError(f"copy must be 1 … {len(copyable)} (model {model}: layers {copyable[0]} … {copyable[-1]} "
                          f"copied from the source; its head {s.head} is always new), got {copy!r}"
                          + ("; copy 0 copies nothing: use mode: scratch" if copy == 0 else ""))
    outside = [l for l in s.freezable[:freeze] if l not in copyable[:copy]]
    if outside:
        raise FastFTError(f"freeze {freeze} would keep {', '.join(outside)} fixed, which copy {copy} re-initialises "
                          f"(random weights kept fixed); freeze at most the copied layers (freeze ≤ {copy})")


def copied_layers(model: str, copy: int) -> tuple[str, ...]:
    """The names of the layers ``copy`` takes from the source."""
    return model_spec(model).layers[:copy]


def copy_layers(model, state: dict, layers: tuple[str, ...]) -> list[str]:
    """Overwrite the parameters and buffers of ``layers`` (submodule names) in ``model`` with ``state``'s (a source
    state dict), bit for bit; returns the state-dict keys copied. A key of those layers missing from the source, or
    one of another shape, is an error naming it."""
    import torch

    own = model.state_dict()
    keys = [k for k in own if k.split(".", 1)[0] in layers]
    missing = [k for k in keys if k not in state]
    if missing:
        raise FastFTError(f"the source has no {', '.join(missing[:3])} (layers {', '.join(layers)} are to be copied)")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in keys if state[k].shape != own[k].shape]
    if wrong:
        raise FastFTError(f"source layers do not fit this model (source vs this run): {'; '.join(wrong[:3])}; the "
                          "copied layers' shapes must match (same width, groups and crop as the source)")
    with torch.no_grad():
        for k in keys:
            own[k].copy_(state[k])
    return keys


def build(model_name: str, num_classes: int, keys: dict, state: dict, copy: int, seed: int):
    """A fine-tune's model under ``copy``: a fresh, seeded model for ``num_classes`` (its layers after the n-th are a
    scratch run's with the same seed), its first ``copy`` layers the source's (``state``)."""
    import torch

    from .. import models

    torch.manual_seed(seed)
    model = models.build(model_name, num_classes, **keys)
    copy_layers(model, state, copied_layers(model_name, copy))
    return model
