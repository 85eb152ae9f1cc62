"""Element-wise activations: ReLU and ELU, any shape.

ReLU:  y = max(x, 0)                          dy/dx = 1 where x > 0, else 0
ELU:   y = x if x > 0 else a * (exp(x) - 1)   dy/dx = 1 where x > 0, else y + a
"""
from __future__ import annotations

from ..backend import get_array_module


def _check_float(x, what):
    if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
        raise TypeError(f"{what}: expected a float32 or float64 array, got {getattr(x, 'dtype', type(x).__name__)}")


def relu_forward(x):
    """x: any shape -> y = max(x, 0), cache (the mask x > 0)."""
    _check_float(x, "relu")
    xp = get_array_module(x)
    mask = x > 0
    return xp.maximum(x, 0, dtype=x.dtype), mask


def relu_backward(dy, cache):
    mask = cache
    xp = get_array_module(dy)
    return xp.where(mask, dy, xp.zeros((), dtype=dy.dtype))


def elu_forward(x, alpha=1.0):
    """x: any shape -> y = x (x > 0) or alpha * (exp(x) - 1), cache."""
    _check_float(x, "elu")
    xp = get_array_module(x)
    pos = x > 0
    neg = alpha * xp.expm1(xp.minimum(x, 0))   # min(): no overflow of exp for large positive x
    y = xp.where(pos, x, neg).astype(x.dtype, copy=False)
    return y, (pos, y, alpha)


def elu_backward(dy, cache):
    pos, y, alpha = cache
    xp = get_array_module(dy)
    return xp.where(pos, dy, dy * (y + alpha)).astype(dy.dtype, copy=False)
