"""Depthwise separable convolution: a depthwise conv, then a pointwise conv.

    x: (N, H, W, C) --depthwise (kh, kw, C, 1)--> (N, Ho, Wo, C)
                    --[optional ReLU/ELU]-------> (N, Ho, Wo, C)
                    --pointwise (1, 1, C, F)----> (N, Ho, Wo, F)

Keras's SeparableConv2D (and Xception) puts *no* nonlinearity between the two;
``intermediate="relu"`` or ``"elu"`` gives the variants of the paper's Figure 10.
Without an intermediate activation the whole op is one regular convolution whose
kernel is ``K[di, dj, c, o] = D[di, dj, c] * P[c, o]`` (the tests check that), with
kh*kw*C + C*F parameters instead of kh*kw*C*F.
"""
from __future__ import annotations

from .activations import elu_backward, elu_forward, relu_backward, relu_forward
from .depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from .pointwise import pointwise_conv2d_backward, pointwise_conv2d_forward

# the activation allowed between the two halves: name -> (forward, backward); the fast separable
# kernels (which swap only the depthwise half) use this table and the checks below as well
INTERMEDIATE_ACTIVATIONS = {
    None: None,
    "relu": (relu_forward, relu_backward),
    "elu": (elu_forward, elu_backward),
}


def check_separable_arguments(depthwise_kernel, pointwise_kernel, intermediate):
    """Refuse an unknown activation name (the layer checks it at construction too) and kernels
    whose channel counts do not chain."""
    if intermediate not in INTERMEDIATE_ACTIVATIONS:
        raise ValueError(f"intermediate must be None, 'relu' or 'elu', got {intermediate!r}")
    if pointwise_kernel.ndim == 4 and depthwise_kernel.ndim == 4 \
            and pointwise_kernel.shape[2] != depthwise_kernel.shape[2]:
        raise ValueError(
            f"separable conv: depthwise kernel {depthwise_kernel.shape} gives "
            f"{depthwise_kernel.shape[2]} channels but the pointwise kernel "
            f"{pointwise_kernel.shape} expects {pointwise_kernel.shape[2]}")


def separable_conv2d_forward(x, depthwise_kernel, pointwise_kernel, stride=1, padding="same",
                             intermediate=None):
    """x: (N, H, W, C), depthwise_kernel: (kh, kw, C, 1), pointwise_kernel: (1, 1, C, F)
    -> y: (N, Ho, Wo, F), cache."""
    check_separable_arguments(depthwise_kernel, pointwise_kernel, intermediate)
    h, dw_cache = depthwise_conv2d_forward(x, depthwise_kernel, stride, padding)
    act_cache = None
    if intermediate is not None:
        h, act_cache = INTERMEDIATE_ACTIVATIONS[intermediate][0](h)
    y, pw_cache = pointwise_conv2d_forward(h, pointwise_kernel)
    return y, (dw_cache, act_cache, pw_cache, intermediate)


def separable_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, F) -> (dx: (N, H, W, C), ddepthwise_kernel: (kh, kw, C, 1),
    dpointwise_kernel: (1, 1, C, F)): the chain rule backwards through the three stages."""
    dw_cache, act_cache, pw_cache, intermediate = cache
    dh, dpointwise = pointwise_conv2d_backward(dy, pw_cache)
    if intermediate is not None:
        dh = INTERMEDIATE_ACTIVATIONS[intermediate][1](dh, act_cache)
    dx, ddepthwise = depthwise_conv2d_backward(dh, dw_cache)
    return dx, ddepthwise, dpointwise
