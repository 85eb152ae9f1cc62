"""Depthwise 2-D convolution: one kh x kw filter per channel, channels never mix.

    x: (N, H, W, C)     kernel: (kh, kw, C, 1)  (Keras's layout, depth multiplier 1)
    x_pad: x padded to (N, Hp, Wp, C)           y: (N, Ho, Wo, C)

Forward, a sum over the kh*kw taps (a, b) of the kernel:

    y[n, i, j, c] = sum_{a, b} x_pad[n, i*s + a, j*s + b, c] * k[a, b, c]

For a fixed tap (a, b) the values ``x_pad[:, i*s + a, j*s + b, :]`` over all (i, j) are
one strided slice of the padded input (``padding.tap``), so the op is a loop over the
taps, each a whole-array multiply-add. With NHWC the channel axis is the contiguous
one, and ``k[a, b, :]`` broadcasts along it.

Backward, read off the same sum (chapter 4 derives both):

    dk[a, b, c]                         = sum_{n, i, j} x_pad[n, i*s + a, j*s + b, c] * dy[n, i, j, c]
    dx_pad[n, i*s + a, j*s + b, c]     += dy[n, i, j, c] * k[a, b, c]     for every tap (a, b)

The input gradient is the forward run backwards: every tap adds its share of ``dy``
into the very slice of the padded input it read from. Then the padding is cut off
(its gradient belongs to no input). This per-tap form is what the CUDA kernel in
``minixception.kernels`` computes, one input element per thread.

This equals ``conv2d_forward(x, K, groups=C)`` with the same kernel (a block-diagonal
regular convolution); the tests check that identity.
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_nhwc, check_same_dtype
from .padding import conv_geometry, pad_nhwc, pair, tap


def depthwise_conv2d_forward(x, kernel, stride=1, padding="same"):
    """x: (N, H, W, C), kernel: (kh, kw, C, 1) -> y: (N, Ho, Wo, C), cache.

    ``stride``: int or (sh, sw); ``padding``: "valid", "same" (TensorFlow's rule) or an int.
    """
    xp = get_array_module(x, kernel)
    if getattr(kernel, "ndim", None) != 4 or kernel.shape[3] != 1:
        raise ValueError(f"depthwise conv: kernel must be (kh, kw, C, 1), got shape {getattr(kernel, 'shape', None)}")
    kh, kw, c, _ = kernel.shape
    check_nhwc(x, c, "depthwise conv input")
    check_same_dtype(x, kernel, what="depthwise conv")
    sh, sw = pair(stride, "stride")
    n, h, w, _ = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    x_pad = pad_nhwc(x, pads)
    k = kernel[:, :, :, 0]                                    # (kh, kw, C)
    y = xp.zeros((n, oh, ow, c), dtype=x.dtype)
    for a in range(kh):
        for b in range(kw):
            y += tap(x_pad, a, b, oh, ow, sh, sw) * k[a, b]   # (N, Ho, Wo, C) * (C,)
    return y, (x_pad, kernel, pads, (sh, sw), x.shape)


def depthwise_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    xp = get_array_module(dy)
    x_pad, kernel, pads, (sh, sw), x_shape = cache
    kh, kw, c, _ = kernel.shape
    oh, ow = dy.shape[1:3]
    k = kernel[:, :, :, 0]
    dk = xp.empty((kh, kw, c), dtype=dy.dtype)
    dx_pad = xp.zeros(x_pad.shape, dtype=dy.dtype)
    for a in range(kh):
        for b in range(kw):
            # dk[a, b, c] = sum_{n,i,j} x_pad[n, i*s+a, j*s+b, c] * dy[n, i, j, c]
            dk[a, b] = xp.einsum("nijc,nijc->c", tap(x_pad, a, b, oh, ow, sh, sw), dy)
            # dx_pad[n, i*s+a, j*s+b, c] += dy[n, i, j, c] * k[a, b, c]
            tap(dx_pad, a, b, oh, ow, sh, sw)[...] += dy * k[a, b]
    (top, _), (left, _) = pads
    dx = dx_pad[:, top:top + x_shape[1], left:left + x_shape[2], :]
    return xp.ascontiguousarray(dx), dk[..., None]
