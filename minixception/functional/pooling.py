"""Max, average and global average pooling, NHWC, per channel.

Max and average pools loop over the k*k window taps (views of the padded input),
like the depthwise convolution, never over pixels.

* Max pool pads with -inf (padding never wins) and remembers, per output, which
  tap won -- the first one in row-major order on ties, as cuDNN and PyTorch do --
  so backward routes each gradient to exactly one input.
* Average pool follows Keras/TensorFlow: padded positions are *excluded* from
  the count, so a corner window of a "same" 3x3 pool averages 4 values, not 9.
* Global average pool: y[n, c] = mean over H, W.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._checks import check_nhwc
from .padding import conv_geometry, pad_nhwc, pair, tap


def maxpool2d_forward(x, pool_size=3, stride=2, padding="same"):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, C), cache (the winning tap of each output).

    The winner map uses the smallest unsigned integer type that can number every tap
    (uint8 up to 256 taps, uint16 beyond), so any window size works.
    """
    xp = get_array_module(x)
    check_nhwc(x, None, "max pool input")
    kh, kw = pair(pool_size, "pool_size")
    sh, sw = pair(stride, "stride")
    n, h, w, c = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    x_pad = pad_nhwc(x, pads, value=-np.inf)
    y = tap(x_pad, 0, 0, oh, ow, sh, sw).copy()
    winner = xp.zeros(y.shape, dtype=np.min_scalar_type(kh * kw - 1))
    for t in range(1, kh * kw):
        i, j = divmod(t, kw)
        v = tap(x_pad, i, j, oh, ow, sh, sw)
        better = v > y                             # strict: on ties the first maximum keeps the gradient
        y = xp.maximum(y, v)
        winner[better] = t
    return y, (winner, x_pad.shape, pads, (kh, kw), (sh, sw), x.shape)


def maxpool2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> dx: (N, H, W, C), each dy added to the input its window's max came from."""
    xp = get_array_module(dy)
    winner, padded_shape, pads, (kh, kw), (sh, sw), x_shape = cache
    oh, ow = dy.shape[1:3]
    dx_pad = xp.zeros(padded_shape, dtype=dy.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        tap(dx_pad, i, j, oh, ow, sh, sw)[...] += dy * (winner == t)     # dy where tap t won, else 0
    (top, _), (left, _) = pads
    return xp.ascontiguousarray(dx_pad[:, top:top + x_shape[1], left:left + x_shape[2], :])


def _window_counts(n, k, s, before, out):
    """-> (out,): how many real (non-padding) inputs each output window covers along one axis."""
    starts = np.arange(out) * s - before
    return (np.minimum(starts + k, n) - np.maximum(starts, 0)).astype(np.float64)


def avgpool2d_forward(x, pool_size=3, stride=2, padding="valid"):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, C), cache. Padding is excluded from the mean."""
    xp = get_array_module(x)
    check_nhwc(x, None, "average pool input")
    kh, kw = pair(pool_size, "pool_size")
    sh, sw = pair(stride, "stride")
    n, h, w, c = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    counts = np.outer(_window_counts(h, kh, sh, pads[0][0], oh), _window_counts(w, kw, sw, pads[1][0], ow))
    inv_count = xp.asarray((1.0 / counts)[None, :, :, None].astype(x.dtype))   # (1, Ho, Wo, 1), tiny
    x_pad = pad_nhwc(x, pads)
    y = tap(x_pad, 0, 0, oh, ow, sh, sw).copy()
    for t in range(1, kh * kw):
        i, j = divmod(t, kw)
        y += tap(x_pad, i, j, oh, ow, sh, sw)
    y *= inv_count
    return y, (inv_count, x_pad.shape, pads, (kh, kw), (sh, sw), x.shape)


def avgpool2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> dx: (N, H, W, C)."""
    xp = get_array_module(dy)
    inv_count, padded_shape, pads, (kh, kw), (sh, sw), x_shape = cache
    oh, ow = dy.shape[1:3]
    g = dy * inv_count
    dx_pad = xp.zeros(padded_shape, dtype=dy.dtype)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        tap(dx_pad, i, j, oh, ow, sh, sw)[...] += g
    (top, _), (left, _) = pads
    return xp.ascontiguousarray(dx_pad[:, top:top + x_shape[1], left:left + x_shape[2], :])


def global_avgpool2d_forward(x):
    """x: (N, H, W, C) -> y: (N, C), cache."""
    check_nhwc(x, None, "global average pool input")
    return x.mean(axis=(1, 2)), x.shape


def global_avgpool2d_backward(dy, cache):
    """dy: (N, C) -> dx: (N, H, W, C), dy / (H*W) spread over every position."""
    xp = get_array_module(dy)
    n, h, w, c = cache
    return xp.broadcast_to((dy / (h * w))[:, None, None, :], (n, h, w, c)).copy()
