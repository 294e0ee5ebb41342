"""Kept for one release: the layer probes moved to :mod:`fastft.analysis.layer_probes` (with the analysis that runs
them); this module re-exports their names."""
from .analysis.extract import pooled as _pooled
from .analysis.layer_probes import (BATCH, EPOCHS, LR, MIN_STEPS, WEIGHT_DECAY, InMemory, Streamed, _features,
                                    _standardisation, groups, memory_budget, probe_model, train_group)

__all__ = ["BATCH", "EPOCHS", "LR", "MIN_STEPS", "WEIGHT_DECAY", "InMemory", "Streamed", "groups", "memory_budget",
           "probe_model", "train_group",
           "_features", "_pooled", "_standardisation"]  # the old private names too
