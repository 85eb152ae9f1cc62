"""Pointwise (1x1) convolution: mixes channels, never looks at neighbours.

    x: (N, H, W, C)    kernel: (1, 1, C, F)    y: (N, H, W, F)

In NHWC every pixel is a row of a (N*H*W, C) matrix, so the whole layer is one
GEMM, ``y = x.reshape(-1, C) @ kernel.reshape(C, F)``, with no copy of x.
Backward: ``dkernel = x^T dy`` and ``dx = dy kernel^T``, two more GEMMs.
"""
from __future__ import annotations

from ._checks import check_nhwc, check_same_dtype


def pointwise_conv2d_forward(x, kernel):
    """x: (N, H, W, C), kernel: (1, 1, C, F) -> y: (N, H, W, F), cache."""
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1):
        raise ValueError(f"pointwise conv: kernel must be (1, 1, C, F), got shape {kernel.shape}")
    c, f = kernel.shape[2], kernel.shape[3]
    check_nhwc(x, c, "pointwise conv input")
    check_same_dtype(x, kernel, what="pointwise conv")
    n, h, w, _ = x.shape
    x2 = x.reshape(-1, c)
    y = (x2 @ kernel.reshape(c, f)).reshape(n, h, w, f)
    return y, (x2, kernel, x.shape)


def pointwise_conv2d_backward(dy, cache):
    """dy: (N, H, W, F) -> (dx: (N, H, W, C), dkernel: (1, 1, C, F))."""
    x2, kernel, x_shape = cache        # x2: (M, C), M = N*H*W
    c, f = kernel.shape[2], kernel.shape[3]
    dy2 = dy.reshape(-1, f)
    w2 = kernel.reshape(c, f)
    dkernel = (x2.T @ dy2).reshape(kernel.shape)      # x^T dy
    dx = (dy2 @ w2.T).reshape(x_shape)                # dy W^T
    return dx, dkernel
