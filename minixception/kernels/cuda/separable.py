"""Separable convolution on the GPU: the CUDA depthwise kernel, then the pointwise GEMM (cuBLAS).

Same signature, checks and results as ``functional.separable_conv2d_forward`` /
``separable_conv2d_backward``; only the depthwise half is swapped for depthwise.cu (the
pointwise half already is one GEMM forward and two backward on the GPU).
"""
from __future__ import annotations

from ...functional import (elu_backward, elu_forward, pointwise_conv2d_backward, pointwise_conv2d_forward,
                           relu_backward, relu_forward)
from . import depthwise
from .common import check_dy

_ACTIVATIONS = {"relu": (relu_forward, relu_backward), "elu": (elu_forward, elu_backward)}


def _check_intermediate(intermediate):
    if intermediate is not None and intermediate not in _ACTIVATIONS:
        raise ValueError(f"intermediate must be None, 'relu' or 'elu', got {intermediate!r}")


def supports(x, depthwise_kernel=None, pointwise_kernel=None, stride=1, padding="same", intermediate=None):
    return depthwise.supports(x, depthwise_kernel, stride, padding)


def separable_forward(x, depthwise_kernel, pointwise_kernel, stride=1, padding="same", intermediate=None):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, F), cache."""
    _check_intermediate(intermediate)
    if pointwise_kernel.ndim == 4 and depthwise_kernel.ndim == 4 \
            and pointwise_kernel.shape[2] != depthwise_kernel.shape[2]:
        raise ValueError(
            f"separable conv: depthwise kernel {depthwise_kernel.shape} gives "
            f"{depthwise_kernel.shape[2]} channels but the pointwise kernel "
            f"{pointwise_kernel.shape} expects {pointwise_kernel.shape[2]}")
    h, dw_cache = depthwise.depthwise_forward(x, depthwise_kernel, stride, padding)
    act_cache = None
    if intermediate is not None:
        h, act_cache = _ACTIVATIONS[intermediate][0](h)
    y, pw_cache = pointwise_conv2d_forward(h, pointwise_kernel)
    return y, (dw_cache, act_cache, pw_cache, intermediate, y.shape, y.dtype)


def separable_backward(dy, cache):
    """dy: (N, Ho, Wo, F) -> (dx, ddepthwise_kernel, dpointwise_kernel)."""
    dw_cache, act_cache, pw_cache, intermediate, y_shape, y_dtype = cache
    check_dy(dy, y_shape, y_dtype, "separable conv")
    dh, dpointwise = pointwise_conv2d_backward(dy, pw_cache)
    if intermediate is not None:
        dh = _ACTIVATIONS[intermediate][1](dh, act_cache)
    dx, ddepthwise = depthwise.depthwise_backward(dh, dw_cache)
    return dx, ddepthwise, dpointwise


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("separable_conv2d", "gpu", Kernel("cuda", separable_forward, separable_backward, supports))
