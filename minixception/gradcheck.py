"""Gradient checking: compare hand-written backward passes with central differences.

For a function with output y and a *random* upstream gradient dy, define the scalar
    L(x, params) = sum(y * dy)
whose exact gradient is what ``backward(dy)`` returns. Central differences
    dL/dv ~ (L(v + h) - L(v - h)) / (2h),   h = 1e-5, in float64
estimate it coordinate by coordinate. The relative error
    max|a - n| / max(1e-8, max(|a| + |n|))
is below 1e-7 for smooth ops; ReLU and max pool need inputs kept off their kinks.

A random dy matters: with dy all ones, batch norm's input gradient is exactly zero
and a wrong backward could pass unnoticed.

Usage::

    layer = mx.nn.SeparableConv2D(4, 6, dtype="float64")
    errors = mx.gradcheck.check_layer(layer, x)      # {"input": 3e-10, "depthwise_kernel": ...}
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module, to_numpy
from .nn.init import as_generator
from .nn.module import inference_mode


def rel_error(a, b) -> float:
    """max|a - b| / max(1e-8, max(|a| + |b|)) over all entries (host floats)."""
    a, b = np.asarray(to_numpy(a), dtype=np.float64), np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def _pick(size, samples, rng):
    if samples is None or size <= samples:
        return np.arange(size)
    return np.sort(rng.choice(size, samples, replace=False))


def numerical_gradient(loss_fn, array, h=1e-5, indices=None):
    """Central-difference gradient of the scalar ``loss_fn()`` w.r.t. ``array`` (perturbed in place).

    Only the flat ``indices`` are evaluated (all when None); returns their values (host float64).
    """
    if array.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 arrays, got {array.dtype}: build the layer with dtype='float64'")
    flat = array.reshape(-1)
    if not get_array_module(array).shares_memory(flat, array):
        raise ValueError("numerical_gradient needs a contiguous array to perturb in place")
    idx = np.arange(flat.size) if indices is None else np.asarray(indices)
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = flat[i].copy()
        flat[i] = old + h
        plus = loss_fn()
        flat[i] = old - h
        minus = loss_fn()
        flat[i] = old
        out[k] = (plus - minus) / (2 * h)
    return out


def check_layer(layer, x, seed=0, h=1e-5, samples=None):
    """Check ``layer.backward`` against central differences for the input and every parameter.

    x: float64 input (NumPy or CuPy). ``samples``: at most this many random coordinates per
    array (None: all of them -- use small inputs). The layer's buffers (BN moving
    statistics) are restored afterwards. Returns ``{"input": err, "<param name>": err, ...}``.
    """
    rng = as_generator(seed)
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    saved = layer.state_dict()
    y = layer(x)
    dy = xp.asarray(rng.standard_normal(y.shape))
    layer.zero_grad()
    dx = layer.backward(dy)

    def loss():
        with inference_mode():
            return float((layer(x) * dy).sum())

    targets = [("input", x, dx)] + [(n, p.data, p.grad.copy()) for n, p in layer.named_parameters()]
    errors = {}
    for name, arr, analytic in targets:
        idx = _pick(arr.size, samples, rng)
        numeric = numerical_gradient(loss, arr, h, idx)
        errors[name] = rel_error(to_numpy(analytic).reshape(-1)[idx], numeric)
    layer.load_state_dict(saved)
    layer.zero_grad()
    return errors


def check_function(forward, backward, inputs, seed=0, h=1e-5, samples=None):
    """Check a functional pair: ``y, cache = forward(*inputs)``; ``grads = backward(dy, cache)``.

    ``backward`` must return one gradient per input (a tuple, or one array for one input),
    in the order of ``inputs``. Returns a list of relative errors, one per input.
    """
    rng = as_generator(seed)
    xp = get_array_module(*inputs)
    inputs = [xp.ascontiguousarray(a) for a in inputs]
    y, cache = forward(*inputs)
    dy = xp.asarray(rng.standard_normal(y.shape))
    grads = backward(dy, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(inputs):
        # zip() would silently check only the first ones, or pair gradients with the wrong inputs
        raise ValueError(f"check_function: backward returned {len(grads)} gradient(s) for {len(inputs)} "
                         "input(s); expected one per input, in the order of the inputs")

    def loss():
        return float((forward(*inputs)[0] * dy).sum())

    errors = []
    for arr, g in zip(inputs, grads):
        idx = _pick(arr.size, samples, rng)
        errors.append(rel_error(to_numpy(g).reshape(-1)[idx], numerical_gradient(loss, arr, h, idx)))
    return errors
