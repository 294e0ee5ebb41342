"""Kept for one release: the paper's AlexNet moved to :mod:`fastft.models.alexnet` (see :mod:`fastft.models`)."""
from .models.alexnet import FREEZABLE, INITS, LAYERS, AlexNet, ModelConfig  # noqa: F401
