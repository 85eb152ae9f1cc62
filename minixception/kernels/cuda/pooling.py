"""Max pooling on the GPU: pooling.cu behind the reference's signature and cache.

    y, cache = maxpool_forward(x, pool_size, stride, padding)     x: (N, H, W, C)
    dx = maxpool_backward(dy, cache)                               dy: (N, Ho, Wo, C)

The cache is the reference's own, ``(winner, padded_shape, pads, (kh, kw), (sh, sw), x_shape)``
with ``winner`` the uint8 index of the winning tap, so either backward reads either forward's
cache. One launch each way (the plain CuPy version: about 4 per tap forward, 3 per tap backward).
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...backend import cupy_module
from ...functional._checks import check_nhwc
from ...functional.padding import conv_geometry, pair
from . import common, compiles, function, launch
from .common import block_2d, check_dy, grid_3d

MAX_TAPS = 255         # the winner is a uint8


class MaxPoolCache(tuple):
    """The reference's cache tuple, plus the forward's dtype (so the backward can check dy)."""
    dtype = None


def _geometry(pool_size, stride):
    try:
        return pair(pool_size, "pool_size"), pair(stride, "stride")
    except (TypeError, ValueError):
        return None


def supports(x, pool_size=3, stride=2, padding="same"):
    """float32/float64 on the GPU, a window of at most 255 taps, the kernel compiled."""
    if str(x.dtype) not in ("float32", "float64") or getattr(x, "ndim", 0) != 4 or not common.on_gpu(x):
        return False
    geo = _geometry(pool_size, stride)
    if geo is None or geo[0][0] * geo[0][1] > MAX_TAPS:
        return False
    (kh, kw), (sh, sw) = geo
    return compiles("pooling", x.dtype, KH=kh, KW=kw, SH=sh, SW=sw)


def _args(x_shape, pads, out_hw):
    n, h, w, c = x_shape
    return tuple(np.int32(v) for v in (n, h, w, c, out_hw[0], out_hw[1], pads[0][0], pads[1][0]))


def maxpool_forward(x, pool_size=3, stride=2, padding="same"):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, C), the reference's cache."""
    if not supports(x, pool_size, stride, padding):
        return F.maxpool2d_forward(x, pool_size, stride, padding)
    cp = cupy_module()
    check_nhwc(x, None, "max pool input")
    (kh, kw), (sh, sw) = _geometry(pool_size, stride)
    n, h, w, c = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    x = cp.ascontiguousarray(x)
    y = cp.empty((n, oh, ow, c), dtype=x.dtype)
    winner = cp.empty(y.shape, dtype=cp.uint8)
    block = block_2d(c)
    f = function("pooling", "maxpool_forward", x.dtype, KH=kh, KW=kw, SH=sh, SW=sw)
    launch(f, "maxpool_forward", grid_3d(c, ow, n * oh, block), block, (x, y, winner) + _args(x.shape, pads, (oh, ow)))
    padded = (n, h + pads[0][0] + pads[0][1], w + pads[1][0] + pads[1][1], c)
    cache = MaxPoolCache((winner, padded, pads, (kh, kw), (sh, sw), x.shape))
    cache.dtype = x.dtype
    return y, cache


def maxpool_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> dx: (N, H, W, C)."""
    winner, _, pads, (kh, kw), (sh, sw), x_shape = cache
    if not isinstance(cache, MaxPoolCache):                 # the forward ran the reference
        return F.maxpool2d_backward(dy, cache)
    check_dy(dy, winner.shape, cache.dtype, "max pool")
    cp = cupy_module()
    n, h, w, c = x_shape
    dy = cp.ascontiguousarray(dy)
    dx = cp.empty(x_shape, dtype=dy.dtype)
    block = block_2d(c)
    f = function("pooling", "maxpool_backward", dy.dtype, KH=kh, KW=kw, SH=sh, SW=sw)
    launch(f, "maxpool_backward", grid_3d(c, w, n * h, block), block,
           (dy, winner, dx) + _args(x_shape, pads, dy.shape[1:3]))
    return dx


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("maxpool2d", "gpu", Kernel("cuda", maxpool_forward, maxpool_backward, supports))
