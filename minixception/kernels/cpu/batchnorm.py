"""Batch norm, training and evaluation, as numba loops over the rows of x: (N*H*W, C).

Same signature, semantics and results as ``functional.batchnorm_forward`` /
``batchnorm_backward`` (Keras: biased batch variance, ``moving = momentum * moving +
(1 - momentum) * stat`` in place, ``eps`` inside the square root). What differs is how
the work is done:

* Statistics in one sweep. Each batch chunk adds up ``d = x - shift`` and ``d * d`` per
  channel in float64, where ``shift`` is the batch's first row. Then
  ``mean = shift + sum(d) / M`` and ``var = sum(d*d) / M - (sum(d) / M)^2``. Subtracting a
  value taken from the data keeps the one-pass formula from cancelling (the naive
  ``E[x^2] - E[x]^2`` loses every digit when ``|mean| >> std``).
* Determinism. Chunks are fixed by the problem size (``threads.chunk_bounds``) and their
  float64 sums are added in chunk order, so the statistics -- and the gradients of gamma
  and beta -- are bit-identical whatever the number of threads.
* No centred copy. The reference stores ``x - mean``; here the cache keeps ``x`` itself
  (the layer's input, not copied) and the float64 mean, and backward re-centres on the fly.
  The input must therefore not be modified between forward and backward.
"""
from __future__ import annotations

import numba
import numpy as np

from .. import Kernel, register
from . import threads


@numba.njit(nogil=True, cache=True)
def _shifted_sums(x, shift):
    """x: (m, C) rows, shift: (C,) float64 -> (2, C) float64: sum(x - shift), sum((x - shift)^2)."""
    m, c = x.shape
    out = np.zeros((2, c))
    s1 = out[0]
    s2 = out[1]
    for i in range(m):
        for k in range(c):           # channels innermost: contiguous, one accumulator per channel
            d = x[i, k] - shift[k]
            s1[k] += d
            s2[k] += d * d
    return out


@numba.njit(nogil=True, cache=True)
def _normalise(x, mean, scale, beta, y):
    """y = (x - mean) * scale + beta, row by row; x, y: (m, C), the rest (C,) in x's dtype."""
    m, c = x.shape
    for i in range(m):
        for k in range(c):
            y[i, k] = (x[i, k] - mean[k]) * scale[k] + beta[k]


@numba.njit(nogil=True, cache=True)
def _grad_sums(dy, x, mean):
    """-> (2, C) float64: sum(dy) and sum(dy * (x - mean)), mean: (C,) float64."""
    m, c = x.shape
    out = np.zeros((2, c))
    s_dy = out[0]
    s_dyxc = out[1]
    for i in range(m):
        for k in range(c):
            g = np.float64(dy[i, k])
            s_dy[k] += g
            s_dyxc[k] += g * (x[i, k] - mean[k])
    return out


@numba.njit(nogil=True, cache=True)
def _input_grad(dy, x, mean, scale, mean_dy, coef, dx):
    """dx = scale * (dy - mean_dy - (x - mean) * coef); every (C,) vector in x's dtype."""
    m, c = x.shape
    for i in range(m):
        for k in range(c):
            dx[i, k] = scale[k] * (dy[i, k] - mean_dy[k] - (x[i, k] - mean[k]) * coef[k])


@numba.njit(nogil=True, cache=True)
def _scale_grad(dy, scale, dx):
    """dx = scale * dy (evaluation mode: the statistics are constants)."""
    m, c = dy.shape
    for i in range(m):
        for k in range(c):
            dx[i, k] = scale[k] * dy[i, k]


def _add_in_order(parts):
    """Chunk results added in chunk order (never in completion order)."""
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def _row_chunks(x2, n, fn):
    """Run ``fn(rows)`` on the rows of each batch chunk of x2: (N*H*W, C); results in chunk order."""
    rows_per_sample = x2.shape[0] // n
    bounds = threads.chunk_bounds(n, x2[:rows_per_sample].size)
    return threads.run_chunks(lambda lo, hi: fn(slice(lo * rows_per_sample, hi * rows_per_sample)), bounds)


def batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, training=True,
                      momentum=0.99, eps=1e-3):
    """x: (N, H, W, C) -> y: (N, H, W, C), cache; updates the moving statistics in training."""
    n, c = x.shape[0], x.shape[3]
    x2 = x.reshape(-1, c)
    m = x2.shape[0]
    dtype = x.dtype
    if training:
        shift = x2[0].astype(np.float64)
        sums = _add_in_order(_row_chunks(x2, n, lambda r: _shifted_sums(x2[r], shift)))
        d = sums[0] / m
        mean = shift + d
        var = np.maximum(sums[1] / m - d * d, 0.0)   # biased, as Keras; rounding never makes it < 0
        moving_mean *= momentum
        moving_mean += (1.0 - momentum) * mean.astype(moving_mean.dtype)
        moving_variance *= momentum
        moving_variance += (1.0 - momentum) * var.astype(moving_variance.dtype)
    else:
        mean = moving_mean.astype(np.float64)
        var = moving_variance.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = (gamma * inv_std).astype(dtype)
    mean_x = mean.astype(dtype)
    beta_x = np.ascontiguousarray(beta, dtype=dtype)
    y2 = np.empty_like(x2)
    _row_chunks(x2, n, lambda r: _normalise(x2[r], mean_x, scale, beta_x, y2[r]))
    return y2.reshape(x.shape), (x2, mean, inv_std, gamma, bool(training), x.shape)


def batchnorm_backward(dy, cache):
    """dy: (N, H, W, C) -> (dx: (N, H, W, C), dgamma: (C,), dbeta: (C,))."""
    x2, mean, inv_std, gamma, training, x_shape = cache
    if dy.shape != x_shape or dy.dtype != x2.dtype:
        raise TypeError(f"batch norm backward: expected dy of shape {x_shape} and dtype {x2.dtype} "
                        f"(the forward's output), got shape {dy.shape} and dtype {dy.dtype}")
    n, c = x_shape[0], x_shape[3]
    dtype = x2.dtype
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)
    m = dy2.shape[0]
    sums = _add_in_order(_row_chunks(x2, n, lambda r: _grad_sums(dy2[r], x2[r], mean)))
    dbeta = sums[0]
    dgamma = sums[1] * inv_std                                   # sum(dy * xhat)
    scale = (gamma * inv_std).astype(dtype)
    dx2 = np.empty_like(dy2)
    if training:
        mean_dy = (dbeta / m).astype(dtype)
        coef = (dgamma * inv_std / m).astype(dtype)              # xhat * mean(dy * xhat) = (x - mean) * coef
        mean_x = mean.astype(dtype)
        _row_chunks(x2, n, lambda r: _input_grad(dy2[r], x2[r], mean_x, scale, mean_dy, coef, dx2[r]))
    else:
        _row_chunks(x2, n, lambda r: _scale_grad(dy2[r], scale, dx2[r]))
    return dx2.reshape(x_shape), dgamma.astype(dtype), dbeta.astype(dtype)


def supports(x, gamma=None, beta=None, moving_mean=None, moving_variance=None, training=True,
             momentum=0.99, eps=1e-3) -> bool:
    """NumPy float32/float64, C-contiguous NHWC x with matching (C,) parameters; else the reference
    runs (and raises its clear error for bad input)."""
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous and x.size > 0):
        return False
    c = x.shape[3]
    for p in (gamma, beta):
        if not (isinstance(p, np.ndarray) and p.shape == (c,) and p.dtype == x.dtype):
            return False
    for p in (moving_mean, moving_variance):       # updated in place: any float dtype, as the reference
        if not (isinstance(p, np.ndarray) and p.shape == (c,) and p.dtype.kind == "f"):
            return False
    return not training or x.size // c > 1         # one value per channel: the reference's error


register("batchnorm", "cpu", Kernel("numba", batchnorm_forward, batchnorm_backward, supports))
