"""Element-wise activations: ReLU and ELU, any shape.

ReLU:  y = max(x, 0)                          dy/dx = 1 where x > 0, else 0
ELU:   y = x if x > 0 else a * (exp(x) - 1)   dy/dx = 1 where x > 0, else y + a
"""
from __future__ import annotations

from ..backend import get_array_module
from . import _parallel


def _check_float(x, what):
    if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
        raise TypeError(f"{what}: expected a float32 or float64 array, got {getattr(x, 'dtype', type(x).__name__)}")


def _first_axis_slices(xp, x):
    """Slices of the first axis for the CPU threads ([...] for a 0-d array)."""
    if x.ndim == 0:
        return [Ellipsis]
    return _parallel.batch_slices(xp, x.shape[0], x[:1].size)


def relu_forward(x):
    """x: any shape -> y = max(x, 0), cache (the mask x > 0)."""
    _check_float(x, "relu")
    xp = get_array_module(x)
    y = xp.empty_like(x)
    mask = xp.empty(x.shape, dtype=bool)          # 1 byte per value: cheaper to keep than y

    def piece(b):                                 # a slice of the first axis (all of it on the GPU)
        xp.greater(x[b], 0, out=mask[b])
        xp.maximum(x[b], 0, out=y[b])
    _parallel.run(piece, _first_axis_slices(xp, x))
    return y, mask


def relu_backward(dy, cache):
    mask = cache
    xp = get_array_module(dy)
    dx = xp.empty_like(dy)
    # float * bool keeps dy's dtype (and is ~10x faster than xp.where on NumPy)
    _parallel.run(lambda b: xp.multiply(dy[b], mask[b], out=dx[b]), _first_axis_slices(xp, dy))
    return dx


def elu_forward(x, alpha=1.0):
    """x: any shape -> y = x (x > 0) or alpha * (exp(x) - 1), cache."""
    _check_float(x, "elu")
    xp = get_array_module(x)
    pos = x > 0
    # max(x, 0) carries the positive part, alpha * expm1(min(x, 0)) the negative one
    # (each is 0 on the other side; min() also keeps exp from overflowing for large x)
    y = xp.maximum(x, 0) + (alpha * xp.expm1(xp.minimum(x, 0))).astype(x.dtype, copy=False)
    return y, (pos, y, alpha)


def elu_backward(dy, cache):
    pos, y, alpha = cache
    xp = get_array_module(dy)
    slope = (xp.minimum(y, 0) + dy.dtype.type(alpha)) * ~pos   # y + alpha where x <= 0
    slope += pos                                               # 1 where x > 0
    return dy * slope
