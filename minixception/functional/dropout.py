"""Inverted dropout: zero a fraction ``rate`` of activations while training and
scale the survivors by 1 / (1 - rate), so evaluation is the identity.

The mask comes from an explicit generator: ``rng`` is a ``numpy.random.Generator``
for NumPy arrays, or a ``cupy.random.Generator`` for CuPy arrays (drawing the mask
on the device avoids a host-to-device copy per step).
"""
from __future__ import annotations

from ..backend import get_array_module


def dropout_forward(x, rate, rng, training=True):
    """x: any shape -> y: same shape, cache (the scaled mask, or None in eval)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if not training or rate == 0.0:
        return x, None
    xp = get_array_module(x)
    keep = rng.random(x.shape, dtype=x.dtype) >= rate
    mask = keep.astype(x.dtype) * xp.asarray(1.0 / (1.0 - rate), dtype=x.dtype)
    return x * mask, mask


def dropout_backward(dy, cache):
    """dy: any shape -> dx: same shape, dy * mask (the forward's scaled mask; a copy of dy in eval)."""
    mask = cache
    return dy.copy() if mask is None else dy * mask
