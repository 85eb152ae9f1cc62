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

from ..backend import get_array_module
from ._checks import check_nhwc, check_same_dtype


def batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, training=True,
                      momentum=0.99, eps=1e-3):
    """x: (N, H, W, C); gamma, beta, moving_mean, moving_variance: (C,) -> y: (N, H, W, C), cache.

    In training mode ``moving_mean`` and ``moving_variance`` are updated in place with
    the batch statistics; in eval mode they normalise and are not touched.
    """
    xp = get_array_module(x, gamma, beta, moving_mean, moving_variance)
    c = gamma.shape[0]
    check_nhwc(x, c, "batch norm input")
    check_same_dtype(x, gamma, beta, what="batch norm")
    x2 = x.reshape(-1, c)                       # (M, C): one row per pixel, M = N*H*W
    m = x2.shape[0]
    if training:
        if m < 2:
            raise ValueError(f"batch norm in training mode needs more than one value per channel, got input shape {x.shape}")
        mean = x2.mean(axis=0)
        xc = x2 - mean                          # x - mu, kept for backward (xhat = xc * inv_std)
        var = xp.einsum("mc,mc->c", xc, xc) / m     # biased, as Keras
        inv_std = 1.0 / xp.sqrt(var + eps)
        moving_mean *= momentum
        moving_mean += (1.0 - momentum) * mean.astype(moving_mean.dtype, copy=False)
        moving_variance *= momentum
        moving_variance += (1.0 - momentum) * var.astype(moving_variance.dtype, copy=False)
    else:
        inv_std = (1.0 / xp.sqrt(moving_variance + eps)).astype(x.dtype, copy=False)
        xc = x2 - moving_mean.astype(x.dtype, copy=False)
    y = xc * (gamma * inv_std) + beta           # gamma * xhat + beta
    return y.reshape(x.shape), (xc, gamma, inv_std, training, x.shape)


def batchnorm_backward(dy, cache):
    """dy: (N, H, W, C) -> (dx: (N, H, W, C), dgamma: (C,), dbeta: (C,))."""
    xc, gamma, inv_std, training, x_shape = cache
    c = gamma.shape[0]
    dy2 = dy.reshape(-1, c)
    m = dy2.shape[0]
    xp = get_array_module(dy)
    dbeta = dy2.sum(axis=0)
    dgamma = xp.einsum("mc,mc->c", dy2, xc) * inv_std          # sum(dy * xhat)
    scale = gamma * inv_std
    if not training:                    # the statistics are constants: dx = gamma / std * dy
        return (dy2 * scale).reshape(x_shape), dgamma, dbeta
    # dx = gamma / std * (dy - mean(dy) - xhat * mean(dy * xhat)), with xhat = xc * inv_std
    dx = scale * (dy2 - dbeta / m - xc * (dgamma * inv_std / m))
    return dx.reshape(x_shape), dgamma, dbeta
