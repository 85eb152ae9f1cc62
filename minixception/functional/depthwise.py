"""Depthwise 2-D convolution: one kh x kw filter per channel, channels never mix.

    x: (N, H, W, C)     kernel: (kh, kw, C, 1)  (Keras's layout, depth multiplier 1)
    y[n, i, j, c] = sum_{a, b} x_pad[n, i*s + a, j*s + b, c] * kernel[a, b, c, 0]

The windows of the padded input are a strided *view* of shape (N, Ho, Wo, C, kh, kw)
(``sliding_window_view`` -- no copy, unlike an im2col matrix kh*kw times the input),
and the sum above is literally one ``einsum`` over it. With NHWC the channel axis
is contiguous, so the einsum walks memory in order.

Backward, with the same windows:

    dkernel[a, b, c] = sum_{n,i,j} x_pad[n, i*s + a, j*s + b, c] * dy[n, i, j, c]
    dx = depthwise_conv(dilate(dy, s) padded by k-1, kernel flipped in a and b)

The second line is the classic "the input gradient of a convolution is a full
convolution of the upstream gradient with the flipped kernel"; for stride s the
upstream gradient is first spread out with s-1 zeros between entries.

This equals ``conv2d_forward(x, K, groups=C)`` with the same kernel (a block-
diagonal regular convolution); the tests check that identity.
"""
from __future__ import annotations

from .. import cuda as _cuda
from ..backend import get_array_module, is_gpu_array
from . import _parallel
from ._checks import check_nhwc, check_same_dtype
from .padding import conv_geometry, pad_nhwc, pair


def _windows(xp, x_pad, kh, kw, oh, ow, sh, sw):
    """(N, Ho, Wo, C, kh, kw) view of the kh x kw windows the output positions see (no copy)."""
    win = xp.lib.stride_tricks.sliding_window_view(x_pad, (kh, kw), axis=(1, 2))
    return win[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]


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
    if is_gpu_array(x) and _cuda.depthwise_ready(x, kernel):      # hand-written kernel, minixception/cuda
        return _cuda.depthwise_forward(x, kernel, pads, (sh, sw), (oh, ow))
    x_pad = pad_nhwc(x, pads)
    win = _windows(xp, x_pad, kh, kw, oh, ow, sh, sw)
    k = kernel[:, :, :, 0]
    y = _parallel.batched_einsum(xp, "nhwcab,abc->nhwc", lambda b: (win[b], k), n,
                                 (n, oh, ow, c), x.dtype, oh * ow * c * kh * kw)
    return y, (x_pad, kernel, pads, (sh, sw), x.shape)


def depthwise_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    if isinstance(cache, _cuda.DepthwiseCache):                     # the forward ran the CUDA kernel
        return _cuda.depthwise_backward(dy, cache)
    xp = get_array_module(dy)
    x_pad, kernel, pads, (sh, sw), x_shape = cache
    kh, kw, c, _ = kernel.shape
    n, oh, ow, _ = dy.shape
    win = _windows(xp, x_pad, kh, kw, oh, ow, sh, sw)
    slices = _parallel.batch_slices(xp, n, oh * ow * c * kh * kw)
    partial = _parallel.run(lambda b: xp.einsum("nhwcab,nhwc->abc", win[b], dy[b]), slices)
    dkernel = sum(partial[1:], partial[0])[..., None]

    # dx_pad = full correlation of the dilated dy with the flipped kernel. The dilated,
    # (k-1)-padded dy has (Ho-1)*s + 2k - 1 rows; the result covers the first
    # (Ho-1)*s + k rows of the padded input, the rest (a stride remainder) got no window.
    dil = xp.zeros((n, (oh - 1) * sh + 2 * kh - 1, (ow - 1) * sw + 2 * kw - 1, c), dtype=dy.dtype)
    dil[:, kh - 1 : kh - 1 + (oh - 1) * sh + 1 : sh, kw - 1 : kw - 1 + (ow - 1) * sw + 1 : sw] = dy
    flipped = kernel[::-1, ::-1, :, 0]
    # Only the rows/columns of dx_pad that are real input (not padding) are computed:
    # the windows start at the top/left padding offset.
    (t, _), (l, _) = pads
    h, w = x_shape[1], x_shape[2]
    rows = min(h, (oh - 1) * sh + kh - t)         # beyond: a stride remainder no window touched
    cols = min(w, (ow - 1) * sw + kw - l)
    covered = _windows(xp, dil[:, t:, l:], kh, kw, rows, cols, 1, 1)
    dx = _parallel.batched_einsum(xp, "nhwcab,abc->nhwc", lambda b: (covered[b], flipped), n,
                                  (n, rows, cols, c), dy.dtype, rows * cols * c * kh * kw)
    if (rows, cols) != (h, w):
        full = xp.zeros(x_shape, dtype=dy.dtype)
        full[:, :rows, :cols] = dx
        dx = full
    return dx, dkernel
