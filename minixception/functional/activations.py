"""Element-wise activations: ReLU and ELU, any shape.

ReLU:  y = max(x, 0)                          dy/dx = 1 where x > 0, else 0
ELU:   y = x if x > 0 else a * (exp(x) - 1)   dy/dx = 1 where x > 0, else y + a
"""
from __future__ import annotations

from ..backend import get_array_module


def _check_float(x, what):
    """Refuse anything but a float32 / float64 array (any shape)."""
    if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
        raise TypeError(f"{what}: expected a float32 or float64 array, got {getattr(x, 'dtype', type(x).__name__)}")


def relu_forward(x):
    """x: any shape -> y = max(x, 0) (same shape), cache (the mask x > 0, bool)."""
    _check_float(x, "relu")
    xp = get_array_module(x)
    mask = x > 0                  # 1 byte per value: cheaper to keep than y
    return xp.maximum(x, 0), mask


def relu_backward(dy, cache):
    """dy: any shape -> dx: same shape, dy where x > 0, else 0."""
    mask = cache
    return dy * mask              # float * bool keeps dy's dtype (and is faster than xp.where)


def elu_forward(x, alpha=1.0):
    """x: any shape -> y: same shape, x (x > 0) or alpha * (exp(x) - 1), cache."""
    _check_float(x, "elu")
    xp = get_array_module(x)
    pos = x > 0
    # max(x, 0) carries the positive part, alpha * expm1(min(x, 0)) the negative one
    # (each is 0 on the other side; min() also keeps exp from overflowing for large x)
    y = xp.maximum(x, 0) + (alpha * xp.expm1(xp.minimum(x, 0))).astype(x.dtype, copy=False)
    return y, (pos, y, alpha)


def elu_backward(dy, cache):
    """dy: any shape -> dx: same shape, dy * (1 where x > 0, else y + alpha)."""
    pos, y, alpha = cache
    xp = get_array_module(dy)
    slope = (xp.minimum(y, 0) + dy.dtype.type(alpha)) * ~pos   # y + alpha where x <= 0
    slope += pos                                               # 1 where x > 0
    return dy * slope
