"""Depthwise convolution on the GPU: depthwise.cu behind the reference's signature.

    y, cache = depthwise_forward(x, kernel, stride, padding)     x: (N, H, W, C), kernel: (kh, kw, C, 1)
    dx, dkernel = depthwise_backward(dy, cache)                   dy: (N, Ho, Wo, C)

Same validation, padding rules and results as ``functional.depthwise_conv2d_forward``; the
cache keeps the unpadded input (no padded copy is made). Forward: one launch; backward:
two launches and one small sum over the partials of the kernel gradient.
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...backend import cupy_module
from ...functional._checks import check_nhwc, check_same_dtype
from ...functional.padding import conv_geometry, pair
from . import common, compiles, function, launch
from .common import block_2d, check_dy, grid_3d

MAX_TAPS = 49          # kernels up to 7x7 run here; larger ones (rare) run the reference
LANES = 8              # lanes per block of the kernel-gradient reduction (LANES in depthwise.cu)


class DepthwiseCache:
    """What the backward needs: the unpadded input, the kernel and the geometry."""
    __slots__ = ("x", "kernel", "pads", "stride", "out_shape")

    def __init__(self, x, kernel, pads, stride, out_shape):
        self.x, self.kernel, self.pads, self.stride, self.out_shape = x, kernel, pads, stride, out_shape


def _defines(kernel, stride):
    kh, kw = kernel.shape[:2]
    sh, sw = stride
    return dict(KH=kh, KW=kw, SH=sh, SW=sw)


def supports(x, kernel=None, stride=1, padding="same"):
    """CuPy float32/float64, a (kh, kw, C, 1) kernel of at most 7x7 taps, and the kernel compiled.

    Asked with ``x`` alone, it answers for the dtype; the forward then checks the rest and
    runs the reference for a call it cannot take (its backward follows the cache).
    """
    if str(x.dtype) not in ("float32", "float64") or not common.on_gpu(x, kernel):
        return False
    if kernel is None:
        return True
    if getattr(kernel, "ndim", 0) != 4 or kernel.shape[3] != 1 or x.dtype != kernel.dtype:
        return False                  # the reference raises the clear error
    if kernel.shape[0] * kernel.shape[1] > MAX_TAPS:
        return False
    try:
        stride = pair(stride, "stride")
    except (TypeError, ValueError):
        return False
    return compiles("depthwise", x.dtype, **_defines(kernel, stride))


def _args(x, pads, out_hw):
    n, h, w, c = x.shape
    (pt, _), (pl, _) = pads
    return tuple(np.int32(v) for v in (n, h, w, c, out_hw[0], out_hw[1], pt, pl))


def depthwise_forward(x, kernel, stride=1, padding="same"):
    """x: (N, H, W, C), kernel: (kh, kw, C, 1) -> y: (N, Ho, Wo, C), DepthwiseCache."""
    if not supports(x, kernel, stride, padding):          # e.g. 9x9, or the kernel did not compile
        return F.depthwise_conv2d_forward(x, kernel, stride, padding)
    cp = cupy_module()
    if kernel.ndim != 4 or kernel.shape[3] != 1:
        raise ValueError(f"depthwise conv: kernel must be (kh, kw, C, 1), got shape {kernel.shape}")
    kh, kw, c, _ = kernel.shape
    check_nhwc(x, c, "depthwise conv input")
    check_same_dtype(x, kernel, what="depthwise conv")
    stride = pair(stride, "stride")
    n, h, w, _ = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), stride, padding)
    x, kernel = cp.ascontiguousarray(x), cp.ascontiguousarray(kernel)
    y = cp.empty((n, oh, ow, c), dtype=x.dtype)
    f = function("depthwise", "dw_forward", x.dtype, **_defines(kernel, stride))
    block = block_2d(c)
    launch(f, "dw_forward", grid_3d(c, ow, n * oh, block), block, (x, kernel, y) + _args(x, pads, (oh, ow)))
    return y, DepthwiseCache(x, kernel, pads, stride, y.shape)


def _reduction_rows(rows):
    """Block rows P of the kernel-gradient reduction over ``rows`` output rows: ~8 rows a thread."""
    return max(1, min(1024, -(-int(rows) // (LANES * 8))))


def depthwise_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    if not isinstance(cache, DepthwiseCache):              # the forward ran the reference
        return F.depthwise_conv2d_backward(dy, cache)
    x, kernel = cache.x, cache.kernel
    check_dy(dy, cache.out_shape, x.dtype, "depthwise conv")
    cp = cupy_module()
    kh, kw, c, _ = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = cache.out_shape[1:3]
    dy = cp.ascontiguousarray(dy)
    defines = _defines(kernel, cache.stride)
    args = _args(x, cache.pads, (oh, ow))
    dx = cp.empty_like(x)
    block = block_2d(c)
    launch(function("depthwise", "dw_backward_input", x.dtype, **defines), "dw_backward_input",
           grid_3d(c, w, n * h, block), block, (dy, kernel, dx) + args)
    p = _reduction_rows(n * oh)
    partial = cp.empty((p, kh * kw, c), dtype=x.dtype)
    launch(function("depthwise", "dw_backward_kernel", x.dtype, **defines), "dw_backward_kernel",
           (-(-c // 32), p), (32, LANES), (x, dy, partial) + args)
    dkernel = partial.sum(axis=0).reshape(kh, kw, c, 1)
    return dx, dkernel


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("depthwise_conv2d", "gpu", Kernel("cuda", depthwise_forward, depthwise_backward, supports))
