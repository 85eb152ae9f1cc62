"""Depthwise 2-D convolution: one kh x kw filter per channel, channels never mix.

    x: (N, H, W, C)     kernel: (kh, kw, C, 1)  (Keras's layout, depth multiplier 1)
    y[n, i, j, c] = sum_{di, dj} x_pad[n, i*s + di, j*s + dj, c] * kernel[di, dj, c, 0]

With NHWC the C channels are contiguous, so each of the kh*kw taps is one
vectorised multiply-add over the whole tensor: ``y += tap(di, dj) * kernel[di, dj]``.
No im2col matrix (it would be kh*kw times the input) and no Python loop over
channels or pixels. Backward runs the same taps in reverse:

    dkernel[di, dj, c] = sum_{n,i,j} tap(di, dj)[n, i, j, c] * dy[n, i, j, c]
    dx_pad[tap(di, dj)] += dy * kernel[di, dj]

This equals ``conv2d_forward(x, K, groups=C)`` with the same kernel (a block-
diagonal regular convolution); the tests check that identity.
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_nhwc, check_same_dtype
from .padding import conv_geometry, pad_nhwc, pair, tap


def depthwise_conv2d_forward(x, kernel, stride=1, padding="same"):
    """x: (N, H, W, C), kernel: (kh, kw, C, 1) -> y: (N, Ho, Wo, C), cache."""
    xp = get_array_module(x, kernel)
    if kernel.ndim != 4 or kernel.shape[3] != 1:
        raise ValueError(f"depthwise conv: kernel must be (kh, kw, C, 1), got shape {kernel.shape}")
    kh, kw, c, _ = kernel.shape
    check_nhwc(x, c, "depthwise conv input")
    check_same_dtype(x, kernel, what="depthwise conv")
    sh, sw = pair(stride, "stride")
    n, h, w, _ = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    x_pad = pad_nhwc(x, pads)
    k = kernel[:, :, :, 0]
    y = xp.empty((n, oh, ow, c), dtype=x.dtype)
    tmp = xp.empty_like(y)            # one scratch buffer reused by every tap (no per-tap allocation)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                xp.multiply(tap(x_pad, i, j, oh, ow, sh, sw), k[i, j], out=y)
            else:
                xp.multiply(tap(x_pad, i, j, oh, ow, sh, sw), k[i, j], out=tmp)
                y += tmp
    cache = (x_pad, kernel, pads, (sh, sw), x.shape)
    return y, cache


def depthwise_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    xp = get_array_module(dy)
    x_pad, kernel, pads, (sh, sw), x_shape = cache
    kh, kw, c, _ = kernel.shape
    n, oh, ow, _ = dy.shape
    k = kernel[:, :, :, 0]
    dkernel = xp.empty_like(kernel)
    dx_pad = xp.zeros(x_pad.shape, dtype=dy.dtype)
    tmp = xp.empty_like(dy)
    for i in range(kh):
        for j in range(kw):
            xp.multiply(tap(x_pad, i, j, oh, ow, sh, sw), dy, out=tmp)
            dkernel[i, j, :, 0] = tmp.reshape(-1, c).sum(axis=0)
            xp.multiply(dy, k[i, j], out=tmp)
            tap(dx_pad, i, j, oh, ow, sh, sw)[...] += tmp
    (t, _), (l, _) = pads
    dx = dx_pad[:, t:t + x_shape[1], l:l + x_shape[2], :]
    return xp.ascontiguousarray(dx), dkernel
