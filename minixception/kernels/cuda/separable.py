"""Separable convolution on the GPU: the CUDA depthwise kernel, then the pointwise GEMM (cuBLAS).

Same signature, checks and results as ``functional.separable_conv2d_forward`` /
``separable_conv2d_backward``; only the depthwise half is swapped for depthwise.cu (the
pointwise half already is one GEMM forward and two backward on the GPU).
"""
from __future__ import annotations

from ...functional import pointwise_conv2d_backward, pointwise_conv2d_forward
from ...functional.separable import INTERMEDIATE_ACTIVATIONS, check_separable_arguments
from . import depthwise
from .common import check_dy


def supports(x, depthwise_kernel=None, pointwise_kernel=None, stride=1, padding="same", intermediate=None):
    return depthwise.supports(x, depthwise_kernel, stride, padding)


def separable_forward(x, depthwise_kernel, pointwise_kernel, stride=1, padding="same", intermediate=None):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, F), cache."""
    check_separable_arguments(depthwise_kernel, pointwise_kernel, intermediate)
    h, dw_cache = depthwise.depthwise_forward(x, depthwise_kernel, stride, padding)
    act_cache = None
    if intermediate is not None:
        h, act_cache = INTERMEDIATE_ACTIVATIONS[intermediate][0](h)
    y, pw_cache = pointwise_conv2d_forward(h, pointwise_kernel)
    return y, (dw_cache, act_cache, pw_cache, intermediate, y.shape, y.dtype)


def separable_backward(dy, cache):
    """dy: (N, Ho, Wo, F) -> (dx, ddepthwise_kernel, dpointwise_kernel)."""
    dw_cache, act_cache, pw_cache, intermediate, y_shape, y_dtype = cache
    check_dy(dy, y_shape, y_dtype, "separable conv")
    dh, dpointwise = pointwise_conv2d_backward(dy, pw_cache)
    if intermediate is not None:
        dh = INTERMEDIATE_ACTIVATIONS[intermediate][1](dh, act_cache)
    dx, ddepthwise = depthwise.depthwise_backward(dh, dw_cache)
    return dx, ddepthwise, dpointwise


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("separable_conv2d", "gpu", Kernel("cuda", separable_forward, separable_backward, supports))
