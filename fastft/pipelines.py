"""Kept for one release: the input pipelines moved to the package :mod:`fastft.loading` (order, samples, dali,
augment, fallback, cache, resources, loader). Their names read through from there, and assigning one here (as older
benchmark scripts and tests do: ``pipelines.FEED_NO_COPY = False``) sets it where it is read (see
:mod:`fastft.util.shim`)."""
from . import loading as _loading
from .loading import augment, cache, dali, fallback, loader, order, resources, samples
from .util import env as _env
from .util.shim import moved

moved(__name__, _loading, loader, order, samples, dali, augment, fallback, cache, resources, _env)
__all__ = list(_loading.__all__)  # what `from fastft.pipelines import *` gave before the move
