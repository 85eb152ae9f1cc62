"""Fully connected layer: y = x @ kernel + bias.

    x: (N, in)    kernel: (in, out)  (Keras's layout)    bias: (out,)    y: (N, out)
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_same_dtype


def dense_forward(x, kernel, bias=None):
    """x: (N, in), kernel: (in, out), bias: (out,) or None -> y: (N, out), cache."""
    get_array_module(x, kernel, bias)
    if getattr(x, "ndim", None) != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(f"dense: expected input (N, {kernel.shape[0]}), got shape {getattr(x, 'shape', None)}")
    if x.dtype.kind != "f":
        raise TypeError(f"dense: expected a float32 or float64 input, got dtype {x.dtype}")
    check_same_dtype(x, kernel, bias, what="dense")
    y = x @ kernel
    if bias is not None:
        y += bias
    return y, (x, kernel, bias is not None)


def dense_backward(dy, cache):
    """dy: (N, out) -> (dx: (N, in), dkernel: (in, out), dbias: (out,) or None)."""
    x, kernel, has_bias = cache
    # y = x W + b  ->  dx = dy W^T,  dW = x^T dy,  db = sum over the batch of dy
    return dy @ kernel.T, x.T @ dy, (dy.sum(axis=0) if has_bias else None)
