"""Batch normalisation over N, H, W for each of the C channels (Keras defaults).

Training (batch statistics, biased variance, M = N*H*W values per channel):
    mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta
    moving = momentum * moving + (1 - momentum) * batch_stat      (Keras's rule)
Evaluation uses the moving statistics in place of mu and var.

Backward in training mode (derived in chapter 5): with dbeta = sum(dy) and
dgamma = sum(dy * xhat),
    dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xhat * dgamma / M)
The two terms subtracted from dy are the paths through mu and var: the reason a
constant upstream gradient (dy all ones) gives dx = 0 -- gradient checks therefore
use a random dy.
"""
from __future__ import annotations

from .. import cuda as _cuda
from ..backend import get_array_module, is_gpu_array
from . import _parallel
from ._checks import check_nhwc, check_same_dtype


def _sum_parts(parts):
    """Add per-slice partial results in a fixed order (tuples added element-wise)."""
    if isinstance(parts[0], tuple):
        return tuple(_sum_parts([p[i] for p in parts]) for i in range(len(parts[0])))
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, training=True,
                      momentum=0.99, eps=1e-3):
    """x: (N, H, W, C) -> y: (N, H, W, C), cache.

    In training mode ``moving_mean`` and ``moving_variance`` (C,) are updated in
    place with the batch statistics; in eval mode they normalise and are not touched.
    The M = N*H*W rows are processed in slices (one per CPU core; one on the GPU),
    each pass a single sweep over its slice.
    """
    xp = get_array_module(x, gamma, beta, moving_mean, moving_variance)
    c = gamma.shape[0]
    check_nhwc(x, c, "batch norm input")
    check_same_dtype(x, gamma, beta, what="batch norm")
    x2 = x.reshape(-1, c)
    m = x2.shape[0]
    if training and m > 1 and is_gpu_array(x) and _cuda.batchnorm_ready(x):   # hand-written kernels
        return _cuda.batchnorm_forward_train(x, gamma, beta, moving_mean, moving_variance, momentum, eps)
    rows = _parallel.batch_slices(xp, m, c)
    xc = xp.empty_like(x2)            # x - mu; xhat = xc * inv_std is never stored (one sweep saved)
    if training:
        if m < 2:
            raise ValueError(f"batch norm in training mode needs more than one value per channel, got input shape {x.shape}")
        mean = _sum_parts(_parallel.run(lambda r: x2[r].sum(axis=0), rows)) / m

        def center(r):                                   # xc = x - mu; partial sum of squares
            xp.subtract(x2[r], mean, out=xc[r])
            return xp.einsum("mc,mc->c", xc[r], xc[r])
        var = _sum_parts(_parallel.run(center, rows)) / m   # biased, as Keras
        inv_std = 1.0 / xp.sqrt(var + eps)
        moving_mean *= momentum
        moving_mean += (1.0 - momentum) * mean.astype(moving_mean.dtype, copy=False)
        moving_variance *= momentum
        moving_variance += (1.0 - momentum) * var.astype(moving_variance.dtype, copy=False)
    else:
        inv_std = (1.0 / xp.sqrt(moving_variance + eps)).astype(x.dtype, copy=False)
        mu = moving_mean.astype(x.dtype, copy=False)
        _parallel.run(lambda r: xp.subtract(x2[r], mu, out=xc[r]), rows)
    y = xp.empty_like(x2)
    scale = gamma * inv_std

    def normalise(r):                                    # y = gamma * xhat + beta = xc * (gamma / std) + beta
        xp.multiply(xc[r], scale, out=y[r])
        y[r] += beta
    _parallel.run(normalise, rows)
    return y.reshape(x.shape), (xc, gamma, inv_std, training, x.shape)


def batchnorm_backward(dy, cache):
    """dy: (N, H, W, C) -> (dx: (N, H, W, C), dgamma: (C,), dbeta: (C,))."""
    if isinstance(cache, _cuda.BatchNormCache):                     # the forward ran the CUDA kernels
        return _cuda.batchnorm_backward_train(dy, cache)
    xp = get_array_module(dy)
    xc, gamma, inv_std, training, x_shape = cache
    c = gamma.shape[0]
    dy2 = dy.reshape(-1, c)
    m = dy2.shape[0]
    rows = _parallel.batch_slices(xp, m, c)
    dbeta, dy_xc = _sum_parts(_parallel.run(
        lambda r: (dy2[r].sum(axis=0), xp.einsum("mc,mc->c", dy2[r], xc[r])), rows))
    dgamma = dy_xc * inv_std                                   # sum(dy * xhat)
    scale = gamma * inv_std
    dx = xp.empty_like(dy2)
    if training:
        mean_dy, xc_coef = dbeta / m, dgamma * inv_std / m     # xhat * mean(dy * xhat) = xc * xc_coef

        def piece(r):                      # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat))
            xp.multiply(xc[r], -xc_coef, out=dx[r])
            dx[r] += dy2[r]
            dx[r] -= mean_dy
            dx[r] *= scale
    else:
        def piece(r):                      # the statistics are constants: dx = scale * dy
            xp.multiply(dy2[r], scale, out=dx[r])
    _parallel.run(piece, rows)
    return dx.reshape(x_shape), dgamma, dbeta
