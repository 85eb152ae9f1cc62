"""ReLU as one compiled sweep: y and the mask written together, backward in one pass too.

Same signature, semantics and results as ``functional.relu_forward`` / ``relu_backward``
(any shape; the cache is the mask ``x > 0``; ``dx = dy * mask``, so an infinite or NaN
dy gives NaN where the mask is 0, as the reference's product does). The reference makes
two NumPy passes over x (compare, then maximum); here each element is read once.

Element-wise work is cheap, so a split over the threads pays only for large arrays:
``threads.chunk_bounds`` cuts the flat array into chunks of about a million elements,
and anything smaller runs on the calling thread without a hand-off.

ELU is not here: its ``expm1`` is not vectorised by the compiler, and NumPy's is.
"""
from __future__ import annotations

import numba
import numpy as np

from .. import Kernel, register
from . import threads


@numba.njit(nogil=True, cache=True)
def _relu_fwd(x, y, mask):
    """x, y: (m,) flat; mask: (m,) bool.  y = max(x, 0) (NaN stays NaN), mask = x > 0."""
    zero = np.zeros(1, y.dtype)[0]
    for i in range(x.shape[0]):
        v = x[i]
        mask[i] = v > 0
        y[i] = zero if v <= 0 else v


@numba.njit(nogil=True, cache=True)
def _relu_bwd(dy, mask, dx):
    """dx = dy * mask, flat."""
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * mask[i]


def _flat_chunks(size, fn):
    threads.run_chunks(fn, threads.chunk_bounds(size, 1))


def relu_forward(x):
    """x: any shape -> y = max(x, 0), cache (the mask x > 0, bool, x's shape)."""
    y = np.empty_like(x)
    mask = np.empty(x.shape, dtype=bool)
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    _flat_chunks(xf.size, lambda lo, hi: _relu_fwd(xf[lo:hi], yf[lo:hi], mf[lo:hi]))
    return y, mask


def relu_backward(dy, cache):
    """dy: the forward's output shape -> dx = dy * mask."""
    mask = cache
    if dy.shape != mask.shape or dy.dtype.kind != "f":
        raise TypeError(f"relu backward: expected a float dy of shape {mask.shape} (the forward's output), "
                        f"got shape {dy.shape} and dtype {dy.dtype}")
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    df, mf, xf = dy.reshape(-1), mask.reshape(-1), dx.reshape(-1)
    _flat_chunks(df.size, lambda lo, hi: _relu_bwd(df[lo:hi], mf[lo:hi], xf[lo:hi]))
    return dx


def supports(x) -> bool:
    """NumPy float32/float64 C-contiguous arrays of any shape; else the reference runs."""
    return (isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous and x.size > 0)


register("relu", "cpu", Kernel("numba", relu_forward, relu_backward, supports))
