"""The inputs of a store: which dataset source reads the root (:mod:`fastft.data.sources`), and each input's key.

What a source cannot use is still listed (an :class:`Input` with a ``reason``: a file outside every class folder, an
unlabelled file in a flat ``val/``), so that the writer's ledger balances; what would silently lose images (a
missing or empty class, a folder inside a class folder, an unlabelled val image) is an error before any work.
"""
from __future__ import annotations

import collections
import os
import re
from dataclasses import replace
from pathlib import Path

from ...errors import FastFTError
from .. import sources
from ..sources import Input
from ..taxonomy import load
from .config import ShardConfig

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def scan(root: str | Path, cfg: ShardConfig, progress: bool = False) -> tuple[list[Input], dict]:
    """Every input of ``root`` with its split and class (an ILSVRC2012 wnid, or a name of the source's own vocabulary),
    as the source that recognises it lists them (see :func:`fastft.data.sources.find`), keyed; raises on an unknown
    layout and on unknown / missing / empty classes. ``scan_info["classes"]``: the store's vocabulary in label order."""
    root = Path(root)
    if not root.is_dir():
        what = "image-folder dataset root" if cfg.dataset == "imagefolder" else "ImageNet root"
        raise FastFTError(f"{what} {root} is not a directory")
    source = sources.find(root, cfg)
    listing = source.read(progress)
    classes = list(listing.classes) if listing.classes is not None else list(load().wnids)
    _check_listing(source.name, listing.inputs, classes, listing.classes is None)
    return _assign_keys(listing.inputs), {"val_layout": listing.val_layout, "missing": listing.missing,
                                          "skipped_folders": listing.skipped, "classes": classes}


def _check_listing(name: str, inputs: list[Input], classes: list[str], ilsvrc: bool) -> None:
    """What the writer relies on, checked before any work whatever the source (the built-in ones never fail it): a
    split it writes, and for every input not rejected unread a class of the store's vocabulary (its label): an
    ILSVRC2012 wnid, or one of the classes the source listed."""
    label = set(classes)
    if len(label) != len(classes):
        raise FastFTError(f"source {name} listed a class vocabulary with repeated classes")
    odd = [x for x in inputs if x.split not in ("train", "val")]
    if odd:
        raise FastFTError(f"source {name} listed {len(odd)} inputs in a split other than train or val (first: "
                          f"{odd[0].source}: {odd[0].split!r})")
    bad = [x for x in inputs if not x.reason and x.wnid not in label]
    if bad:
        what = "whose wnid is not an ILSVRC2012 class" if ilsvrc else "whose class is not in its class list"
        raise FastFTError(f"source {name} listed {len(bad)} inputs {what} (first: "
                          f"{bad[0].source}: {bad[0].wnid!r}); give each its class, or a reason to reject it")


KEY_CLASS_MAX = 16  # characters of a class name in a training key (a wnid has 9)
KEY_STEM_MAX = 64  # characters of the readable part of a key: ``<wnid>_`` + 64 + ``~<ordinal>`` + ``.jpg`` fit ustar's 100


def _key_base(x: Input) -> str:
    """The readable part of a key: the file name's stem (up to its last dot) with every run of characters other than
    ``A-Z a-z 0-9 _ -`` replaced by one ``-`` (dots, spaces, non-ASCII and undecodable bytes; ``~`` too, which only
    a collision suffix holds), cut to :data:`KEY_STEM_MAX`; training keys start with their class (a wnid as it is; a
    folder store's class name made safe the same way and cut to :data:`KEY_CLASS_MAX`, ``cls`` if nothing is left)."""
    name = Path(x.source).name
    stem = _SAFE.sub("-", name.rsplit(".", 1)[0] if "." in name else name).strip("-")[:KEY_STEM_MAX].strip("-") or "img"
    # a wnid is unchanged; an input rejected unread (no class) has no prefix, as before
    prefix = x.wnid and (_SAFE.sub("-", x.wnid).strip("-")[:KEY_CLASS_MAX].strip("-") or "cls")
    if x.split == "train" and not stem.startswith(prefix):
        stem = f"{prefix}_{stem}"
    return stem


def _assign_keys(inputs: list[Input]) -> list[Input]:
    """Keys unique across the whole store by construction, and safe for WebDataset, DALI and ustar tar names (no dots:
    WebDataset splits a name at the first one; ASCII, at most 86 characters).

    An input whose readable base (:func:`_key_base`) no other input shares keeps it as its key (``n01440764_10026``).
    Inputs sharing a base — ``x.JPEG`` and ``x.jpg``, ``a.b.JPEG`` and ``a-b.JPEG``, long names alike in their first
    64 characters, names with no ASCII letter — are keyed ``<base>~<n>``, ``n`` = 1, 2, … in the order of (split,
    wnid, file name bytes). ``~`` appears in no base, so a suffixed key never equals a plain one (``x-2.JPEG`` stays
    ``x-2``) and two suffixed keys differ in base or ordinal. Deterministic: the same input list gives the same keys,
    whether read from the extracted tree or the downloaded archives."""
    bases = [_key_base(x) for x in inputs]
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, b in enumerate(bases):
        groups[b].append(i)
    keys = list(bases)
    split_order = {"train": 0, "val": 1}
    for b, members in groups.items():
        if len(members) > 1:
            members.sort(key=lambda i: (split_order.get(inputs[i].split, 2), inputs[i].wnid, os.fsencode(Path(inputs[i].source).name)))
            for n, i in enumerate(members, 1):
                keys[i] = f"{b}~{n}"
    return [replace(x, key=k) for x, k in zip(inputs, keys)]
