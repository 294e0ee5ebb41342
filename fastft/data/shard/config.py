"""The settings of ``fastft shard`` (:class:`ShardConfig`), checked when made: recorded in a store's
``settings.json`` and manifest, and compared on every resume."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import FastFTError
from ..store import parse_resize


@dataclass(frozen=True)
class ShardConfig:
    """Settings of ``fastft shard`` (recorded in ``settings.json`` and the manifest)."""
    resize: str = "256x256"        # "WxH" (exact, the paper's 256x256), "short:N" (shorter side N), or "none"
    quality: int = 90              # JPEG quality of re-encoded images
    shard_mb: float = 256.0        # close a shard once it reaches this size
    seed: int = 0                  # global shuffle across shards
    val_layout: str = "auto"       # auto | folders | devkit | kaggle
    classes: tuple[str, ...] = ()  # only these wnids (empty = all 1000)
    allow_missing: bool = False    # classes absent from the tree are skipped instead of an error
    skip_unknown: bool = False     # folders that are not ILSVRC2012 wnids are skipped instead of an error
    dataset: str = "ilsvrc2012"    # ilsvrc2012 (its layouts, detected) | imagefolder (train/<class>/, any class names)

    def __post_init__(self):
        parse_resize(self.resize)
        if not 1 <= self.quality <= 100:
            raise FastFTError(f"--quality must be 1..100, got {self.quality}")
        if self.shard_mb <= 0:
            raise FastFTError(f"--shard-mb must be positive, got {self.shard_mb}")
        from ..sources import DATASETS

        if self.dataset not in DATASETS:
            raise FastFTError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.val_layout not in ("auto", "folders", "devkit", "kaggle"):
            raise FastFTError(f"--val-layout must be auto, folders, devkit or kaggle, got {self.val_layout!r}")
