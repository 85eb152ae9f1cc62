"""Pure forward/backward math: every op is a pair

    y, cache = op_forward(x, params..., options...)
    dx, dparams... = op_backward(dy, cache)

No state, no classes: the layers in ``minixception.nn`` hold parameters and call
these. All arrays are NHWC; NumPy or CuPy, float32 or float64, never mixed.
"""
from .activations import elu_backward, elu_forward, relu_backward, relu_forward
from .batchnorm import batchnorm_backward, batchnorm_forward
from .conv import conv2d_backward, conv2d_forward
from .dense import dense_backward, dense_forward
from .depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from .dropout import dropout_backward, dropout_forward
from .loss import softmax, softmax_cross_entropy
from .padding import conv_geometry, pad_amounts
from .pointwise import pointwise_conv2d_backward, pointwise_conv2d_forward
from .pooling import (avgpool2d_backward, avgpool2d_forward, global_avgpool2d_backward,
                      global_avgpool2d_forward, maxpool2d_backward, maxpool2d_forward)
from .separable import separable_conv2d_backward, separable_conv2d_forward

__all__ = [n for n in dir() if n.endswith(("_forward", "_backward"))] + [
    "softmax", "softmax_cross_entropy", "conv_geometry", "pad_amounts"]
