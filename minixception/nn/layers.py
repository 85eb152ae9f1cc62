"""The layers: thin holders of parameters around the ``functional`` math.

Every layer is NHWC, float32 by default (``dtype="float64"`` for gradient checks),
created on the CPU and moved with ``.to("gpu")``. Weight names and layouts are
Keras's, so a Keras state dict loads without transposes.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..backend import get_array_module, is_gpu_array
from .init import as_generator, glorot_uniform
from .module import Module


def _check_positive(name, v):
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


class Conv2D(Module):
    """Regular (groups=1) or grouped convolution. kernel: (kh, kw, in // groups, out), bias: (out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="valid", groups=1,
                 use_bias=True, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("groups", groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        kh, kw = F.padding.pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (kh, kw), stride, padding, groups
        rng = as_generator(rng)
        self.kernel = self.add_parameter("kernel", glorot_uniform((kh, kw, in_channels // groups, out_channels), rng, dtype))
        self.bias = self.add_parameter("bias", np.zeros(out_channels, dtype), regularize=False) if use_bias else None

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.conv2d_forward(x, self.kernel.data, self.bias.data if self.bias else None,
                                    self.stride, self.padding, self.groups)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dk, db = F.conv2d_backward(dy, self._take_cache())
        self.kernel.grad += dk
        if self.bias is not None:
            self.bias.grad += db
        return dx


class DepthwiseConv2D(Module):
    """One kh x kw filter per channel. depthwise_kernel: (kh, kw, C, 1)."""

    def __init__(self, channels, kernel_size=3, stride=1, padding="same", use_bias=False,
                 name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("channels", channels)
        kh, kw = F.padding.pair(kernel_size, "kernel_size")
        self.channels, self.kernel_size, self.stride, self.padding = channels, (kh, kw), stride, padding
        self.kernel = self.add_parameter("depthwise_kernel", glorot_uniform((kh, kw, channels, 1), as_generator(rng), dtype))
        self.bias = self.add_parameter("bias", np.zeros(channels, dtype), regularize=False) if use_bias else None

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.depthwise_conv2d_forward(x, self.kernel.data, self.stride, self.padding)
        if self.bias is not None:
            y += self.bias.data
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dk = F.depthwise_conv2d_backward(dy, self._take_cache())
        self.kernel.grad += dk
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 1, 2))
        return dx


class PointwiseConv2D(Module):
    """1x1 convolution, one GEMM. pointwise_kernel: (1, 1, in, out)."""

    def __init__(self, in_channels, out_channels, use_bias=False, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel = self.add_parameter("pointwise_kernel", glorot_uniform((1, 1, in_channels, out_channels), as_generator(rng), dtype))
        self.bias = self.add_parameter("bias", np.zeros(out_channels, dtype), regularize=False) if use_bias else None

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.pointwise_conv2d_forward(x, self.kernel.data)
        if self.bias is not None:
            y += self.bias.data
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dk = F.pointwise_conv2d_backward(dy, self._take_cache())
        self.kernel.grad += dk
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 1, 2))
        return dx


class SeparableConv2D(Module):
    """Depthwise kh x kw, [optional ReLU/ELU], then pointwise 1x1 (Keras's SeparableConv2D).

    Parameters: ``depthwise_kernel (kh, kw, in, 1)``, ``pointwise_kernel (1, 1, in, out)``,
    and ``bias (out,)`` when ``use_bias``.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding="same",
                 use_bias=False, intermediate=None, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        F.separable._check_intermediate(intermediate)
        kh, kw = F.padding.pair(kernel_size, "kernel_size")
        rng = as_generator(rng)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.intermediate = (kh, kw), stride, padding, intermediate
        self.depthwise_kernel = self.add_parameter("depthwise_kernel", glorot_uniform((kh, kw, in_channels, 1), rng, dtype))
        self.pointwise_kernel = self.add_parameter("pointwise_kernel", glorot_uniform((1, 1, in_channels, out_channels), rng, dtype))
        self.bias = self.add_parameter("bias", np.zeros(out_channels, dtype), regularize=False) if use_bias else None

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.separable_conv2d_forward(x, self.depthwise_kernel.data, self.pointwise_kernel.data,
                                              self.stride, self.padding, self.intermediate)
        if self.bias is not None:
            y += self.bias.data
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dd, dp = F.separable_conv2d_backward(dy, self._take_cache())
        self.depthwise_kernel.grad += dd
        self.pointwise_kernel.grad += dp
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 1, 2))
        return dx


class BatchNorm2D(Module):
    """Batch norm over N, H, W per channel. gamma, beta trained; moving_mean, moving_variance buffers."""

    def __init__(self, channels, eps=1e-3, momentum=0.99, name=None, dtype="float32"):
        super().__init__(name)
        _check_positive("channels", channels)
        self.channels, self.eps, self.momentum = channels, eps, momentum
        self.gamma = self.add_parameter("gamma", np.ones(channels, dtype), regularize=False)
        self.beta = self.add_parameter("beta", np.zeros(channels, dtype), regularize=False)
        self.add_buffer("moving_mean", np.zeros(channels, dtype))
        self.add_buffer("moving_variance", np.ones(channels, dtype))

    @property
    def moving_mean(self):
        return self._buffers["moving_mean"]

    @property
    def moving_variance(self):
        return self._buffers["moving_variance"]

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.batchnorm_forward(x, self.gamma.data, self.beta.data, self.moving_mean,
                                       self.moving_variance, self.training, self.momentum, self.eps)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = F.batchnorm_backward(dy, self._take_cache())
        self.gamma.grad += dgamma
        self.beta.grad += dbeta
        return dx


class ReLU(Module):
    def forward(self, x):
        y, cache = F.relu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._take_cache())


class ELU(Module):
    def __init__(self, alpha=1.0, name=None):
        super().__init__(name)
        self.alpha = alpha

    def forward(self, x):
        y, cache = F.elu_forward(x, self.alpha)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.elu_backward(dy, self._take_cache())


class MaxPool2D(Module):
    def __init__(self, pool_size=3, stride=2, padding="same", name=None):
        super().__init__(name)
        self.pool_size, self.stride, self.padding = pool_size, stride, padding

    def forward(self, x):
        y, cache = F.maxpool2d_forward(x, self.pool_size, self.stride, self.padding)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.maxpool2d_backward(dy, self._take_cache())


class AvgPool2D(Module):
    """Average pool; padding excluded from the count (Keras)."""

    def __init__(self, pool_size=3, stride=1, padding="same", name=None):
        super().__init__(name)
        self.pool_size, self.stride, self.padding = pool_size, stride, padding

    def forward(self, x):
        y, cache = F.avgpool2d_forward(x, self.pool_size, self.stride, self.padding)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.avgpool2d_backward(dy, self._take_cache())


class GlobalAvgPool2D(Module):
    """(N, H, W, C) -> (N, C)."""

    def forward(self, x):
        y, cache = F.global_avgpool2d_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.global_avgpool2d_backward(dy, self._take_cache())


class Dense(Module):
    """y = x @ kernel + bias. kernel: (in, out), bias: (out,)."""

    def __init__(self, in_features, out_features, use_bias=True, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_features", in_features)
        _check_positive("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.kernel = self.add_parameter("kernel", glorot_uniform((in_features, out_features), as_generator(rng), dtype))
        self.bias = self.add_parameter("bias", np.zeros(out_features, dtype), regularize=False) if use_bias else None

    def forward(self, x):
        self._check_input_device(x)
        y, cache = F.dense_forward(x, self.kernel.data, self.bias.data if self.bias else None)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dk, db = F.dense_backward(dy, self._take_cache())
        self.kernel.grad += dk
        if self.bias is not None:
            self.bias.grad += db
        return dx


class Dropout(Module):
    """Inverted dropout with its own seeded generators; the identity in eval mode.

    On the CPU the mask comes from a ``numpy.random.Generator``; on the GPU from a
    counter-based generator drawn on the device (``kernels.cuda.rng.CounterRNG``), keyed
    from the host generator on first GPU use. ``rng_state()`` / ``set_rng_state()`` cover
    both, so a checkpoint resumes with exactly the masks an uninterrupted run draws.
    """

    def __init__(self, rate, name=None, rng=None):
        super().__init__(name)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self._host_rng = as_generator(rng)
        self._device_rng = None   # a CounterRNG keyed from the host generator, made on first GPU use

    def _rng_for(self, x):
        if not is_gpu_array(x):
            return self._host_rng
        if self._device_rng is None:
            from ..kernels.cuda.rng import CounterRNG
            self._device_rng = CounterRNG(int(self._host_rng.integers(2**63 - 1)))
        return self._device_rng

    def rng_state(self) -> dict:
        """``{"host": <numpy bit-generator state>, "device": {"key", "counter"} or None}`` (JSON-able)."""
        return {"host": self._host_rng.bit_generator.state,
                "device": None if self._device_rng is None else self._device_rng.state()}

    def set_rng_state(self, state) -> None:
        """Restore what :meth:`rng_state` returned (a bare NumPy bit-generator state: host only)."""
        if not isinstance(state, dict):
            raise TypeError(f"Dropout.set_rng_state: expected the dict rng_state() returns, got {type(state).__name__}")
        if "bit_generator" in state:                       # the host state alone (older checkpoints)
            state = {"host": state, "device": None}
        if set(state) != {"host", "device"}:
            raise ValueError(f"Dropout.set_rng_state: expected keys 'host' and 'device', got {sorted(state)}")
        host = state["host"]
        bg = getattr(np.random, host["bit_generator"])()
        bg.state = host
        device = None
        if state["device"] is not None:
            from ..kernels.cuda.rng import CounterRNG
            device = CounterRNG.from_state(state["device"])
        self._host_rng, self._device_rng = np.random.Generator(bg), device

    def forward(self, x):
        y, cache = F.dropout_forward(x, self.rate, self._rng_for(x), self.training)
        self._keep(("mask", cache))
        return y

    def backward(self, dy):
        _, mask = self._take_cache()
        return F.dropout_backward(dy, mask)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        self._keep(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._take_cache())
