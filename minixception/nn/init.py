"""Weight initialisation on the host (NumPy), so NumPy and CuPy runs start identical.

Glorot (Xavier) uniform, Keras's default for conv and dense kernels:
U(-l, l) with l = sqrt(6 / (fan_in + fan_out)), where a conv kernel
(kh, kw, cin, cout) has fan_in = kh*kw*cin and fan_out = kh*kw*cout.
"""
from __future__ import annotations

import numpy as np


def as_generator(rng):
    """Accept a ``numpy.random.Generator``, an int seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def glorot_uniform(shape, rng, dtype="float32"):
    if len(shape) == 4:
        receptive = shape[0] * shape[1]
        fan_in, fan_out = receptive * shape[2], receptive * shape[3]
    else:
        fan_in, fan_out = shape[0], shape[1]
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return as_generator(rng).uniform(-limit, limit, size=shape).astype(dtype)
