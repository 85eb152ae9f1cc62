"""The layers: thin holders of parameters around one op each.

Every layer is NHWC, float32 by default (``dtype="float64"`` for gradient checks),
created on the CPU and moved with ``.to("gpu")``. Weight names and layouts are
Keras's, so a Keras state dict loads without transposes.

All of them run through one path, ``OpLayer``: the forward asks the kernel table
(``minixception.kernels``) which implementation of the layer's op to run for this
input -- the reference math in ``minixception.functional`` or a fast kernel proven
equal to it -- keeps that implementation with its cache, and the backward calls
*the same* implementation's backward. A layer only says which op it runs, with which
arguments, and which of its parameters receive the op's gradients.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .. import kernels
from ..backend import get_array_module, is_gpu_array
from .init import as_generator, glorot_uniform
from .module import Module

INTERMEDIATES = (None, "relu", "elu")   # what SeparableConv2D may put between depthwise and pointwise


def _check_positive(name, v):
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


class OpLayer(Module):
    """A layer that runs one op of the kernel table; the shared forward/backward of every layer.

    A subclass sets ``op`` (the table's name for it) and defines

    * ``op_arguments(x)``: what follows ``x`` in the op's forward call (the parameter arrays,
      then the options), in the reference's order;
    * ``grad_targets()``: one entry per parameter gradient the op's backward returns after dx,
      the Parameter it is added into (None for a slot the layer does not use).

    The bias, where a layer has one, is not passed to the op: ``y + bias`` and its gradient
    ``sum of dy over every axis but the channels`` are the same for every layer, so they are
    done here once.
    """

    op: str = ""
    bias = None

    def op_arguments(self, x) -> tuple:
        return ()

    def grad_targets(self) -> tuple:
        return ()

    def select_kernel(self, x, args) -> kernels.Kernel:
        """The implementation to run: the kernel table's choice for ``op``. A subclass may return
        its own ``kernels.Kernel`` with the op's signatures (a batch norm whose statistics are
        reduced across processes, say) and still share this forward/backward path."""
        return kernels.select(self.op, x, *args)

    def forward(self, x):
        self._check_input_device(x)
        args = self.op_arguments(x)
        impl = self.select_kernel(x, args)
        y, cache = impl.forward(x, *args)
        if self.bias is not None:
            y = y + self.bias.data       # out of place: an op may keep its output in its cache
        self._keep((impl, cache), y)
        return y

    def backward(self, dy):
        impl, cache = self._take_cache(dy)
        grads = impl.backward(dy, cache)
        dx, dparams = (grads[0], grads[1:]) if isinstance(grads, tuple) else (grads, ())
        targets = self.grad_targets()
        if len(dparams) != len(targets):
            raise RuntimeError(f"{self._label()}: the {impl.name} backward of {self.op!r} returned "
                               f"{len(dparams)} parameter gradients, expected {len(targets)}")
        for p, g in zip(targets, dparams):
            if p is not None:
                p.grad += g
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=tuple(range(dy.ndim - 1)))
        return dx

    def _make_bias(self, channels, use_bias, dtype):
        """The (channels,) bias parameter, zero-initialised, when ``use_bias``."""
        if use_bias:
            self.bias = self.add_parameter("bias", np.zeros(channels, dtype), regularize=False)


class Conv2D(OpLayer):
    """Regular (groups=1) or grouped convolution. kernel: (kh, kw, in // groups, out), bias: (out,).

    x: (N, H, W, in) -> y: (N, Ho, Wo, out).
    """

    op = "conv2d"

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
        self._make_bias(out_channels, use_bias, dtype)

    def op_arguments(self, x):
        # bias None: the op's own bias slot stays unused (OpLayer adds the bias)
        return (self.kernel.data, None, self.stride, self.padding, self.groups)

    def grad_targets(self):
        return (self.kernel, None)


class DepthwiseConv2D(OpLayer):
    """One kh x kw filter per channel. depthwise_kernel: (kh, kw, C, 1). x: (N, H, W, C) -> (N, Ho, Wo, C)."""

    op = "depthwise_conv2d"

    def __init__(self, channels, kernel_size=3, stride=1, padding="same", use_bias=False,
                 name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("channels", channels)
        kh, kw = F.padding.pair(kernel_size, "kernel_size")
        self.channels, self.kernel_size, self.stride, self.padding = channels, (kh, kw), stride, padding
        self.kernel = self.add_parameter("depthwise_kernel", glorot_uniform((kh, kw, channels, 1), as_generator(rng), dtype))
        self._make_bias(channels, use_bias, dtype)

    def op_arguments(self, x):
        return (self.kernel.data, self.stride, self.padding)

    def grad_targets(self):
        return (self.kernel,)


class PointwiseConv2D(OpLayer):
    """1x1 convolution, one GEMM. pointwise_kernel: (1, 1, in, out). x: (N, H, W, in) -> (N, H, W, out)."""

    op = "pointwise_conv2d"

    def __init__(self, in_channels, out_channels, use_bias=False, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel = self.add_parameter("pointwise_kernel", glorot_uniform((1, 1, in_channels, out_channels), as_generator(rng), dtype))
        self._make_bias(out_channels, use_bias, dtype)

    def op_arguments(self, x):
        return (self.kernel.data,)

    def grad_targets(self):
        return (self.kernel,)


class SeparableConv2D(OpLayer):
    """Depthwise kh x kw, [optional ReLU/ELU], then pointwise 1x1 (Keras's SeparableConv2D).

    Parameters: ``depthwise_kernel (kh, kw, in, 1)``, ``pointwise_kernel (1, 1, in, out)``,
    and ``bias (out,)`` when ``use_bias``. x: (N, H, W, in) -> y: (N, Ho, Wo, out).
    """

    op = "separable_conv2d"

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding="same",
                 use_bias=False, intermediate=None, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        if intermediate not in INTERMEDIATES:
            raise ValueError(f"intermediate must be None, 'relu' or 'elu', got {intermediate!r}")
        kh, kw = F.padding.pair(kernel_size, "kernel_size")
        rng = as_generator(rng)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.intermediate = (kh, kw), stride, padding, intermediate
        self.depthwise_kernel = self.add_parameter("depthwise_kernel", glorot_uniform((kh, kw, in_channels, 1), rng, dtype))
        self.pointwise_kernel = self.add_parameter("pointwise_kernel", glorot_uniform((1, 1, in_channels, out_channels), rng, dtype))
        self._make_bias(out_channels, use_bias, dtype)

    def op_arguments(self, x):
        return (self.depthwise_kernel.data, self.pointwise_kernel.data, self.stride, self.padding,
                self.intermediate)

    def grad_targets(self):
        return (self.depthwise_kernel, self.pointwise_kernel)


class BatchNorm2D(OpLayer):
    """Batch norm over N, H, W per channel. gamma, beta trained; moving_mean, moving_variance buffers.

    x: (N, H, W, C) -> y: (N, H, W, C). In training mode the op updates the moving statistics
    in place.

    ``scale=False`` (Keras's option, used by Inception V3) drops gamma: the scale is fixed at 1,
    because the ReLU that follows is scale-equivariant and the next conv can absorb a scale.
    """

    op = "batchnorm"

    def __init__(self, channels, eps=1e-3, momentum=0.99, scale=True, name=None, dtype="float32"):
        super().__init__(name)
        _check_positive("channels", channels)
        self.channels, self.eps, self.momentum = channels, eps, momentum
        self.gamma = self.add_parameter("gamma", np.ones(channels, dtype), regularize=False) if scale else None
        self.beta = self.add_parameter("beta", np.zeros(channels, dtype), regularize=False)
        self.add_buffer("moving_mean", np.zeros(channels, dtype))
        self.add_buffer("moving_variance", np.ones(channels, dtype))

    @property
    def moving_mean(self):
        return self._buffers["moving_mean"]

    @property
    def moving_variance(self):
        return self._buffers["moving_variance"]

    def op_arguments(self, x):
        # without gamma (scale=False) the op sees a scale of ones and its dgamma goes nowhere
        gamma = self.gamma.data if self.gamma is not None else get_array_module(x).ones_like(self.beta.data)
        return (gamma, self.beta.data, self.moving_mean, self.moving_variance,
                self.training, self.momentum, self.eps)

    def grad_targets(self):
        return (self.gamma, self.beta)


class ReLU(OpLayer):
    """max(x, 0), element-wise; any shape."""

    op = "relu"


class ELU(OpLayer):
    """x if x > 0 else alpha * (exp(x) - 1), element-wise; any shape."""

    op = "elu"

    def __init__(self, alpha=1.0, name=None):
        super().__init__(name)
        self.alpha = alpha

    def op_arguments(self, x):
        return (self.alpha,)


class MaxPool2D(OpLayer):
    """Max over each pool_size window. x: (N, H, W, C) -> (N, Ho, Wo, C)."""

    op = "maxpool2d"

    def __init__(self, pool_size=3, stride=2, padding="same", name=None):
        super().__init__(name)
        self.pool_size, self.stride, self.padding = pool_size, stride, padding

    def op_arguments(self, x):
        return (self.pool_size, self.stride, self.padding)


class AvgPool2D(OpLayer):
    """Average pool; padding excluded from the count (Keras). x: (N, H, W, C) -> (N, Ho, Wo, C)."""

    op = "avgpool2d"

    def __init__(self, pool_size=3, stride=1, padding="same", name=None):
        super().__init__(name)
        self.pool_size, self.stride, self.padding = pool_size, stride, padding

    def op_arguments(self, x):
        return (self.pool_size, self.stride, self.padding)


class GlobalAvgPool2D(OpLayer):
    """(N, H, W, C) -> (N, C)."""

    op = "global_avgpool2d"


class Dense(OpLayer):
    """y = x @ kernel + bias. kernel: (in, out), bias: (out,). x: (N, in) -> y: (N, out)."""

    op = "dense"

    def __init__(self, in_features, out_features, use_bias=True, name=None, rng=None, dtype="float32"):
        super().__init__(name)
        _check_positive("in_features", in_features)
        _check_positive("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.kernel = self.add_parameter("kernel", glorot_uniform((in_features, out_features), as_generator(rng), dtype))
        self._make_bias(out_features, use_bias, dtype)

    def op_arguments(self, x):
        return (self.kernel.data, None)      # bias None: OpLayer adds it

    def grad_targets(self):
        return (self.kernel, None)


class Dropout(OpLayer):
    """Inverted dropout with its own seeded generators; the identity in eval mode. Any shape.

    On the CPU the mask comes from a ``numpy.random.Generator``; on the GPU from a
    counter-based generator drawn on the device (``kernels.cuda.rng.CounterRNG``), keyed
    from the host generator on first GPU use. ``rng_state()`` / ``set_rng_state()`` cover
    both, so a checkpoint resumes with exactly the masks an uninterrupted run draws.
    """

    op = "dropout"

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

    def op_arguments(self, x):
        return (self.rate, self._rng_for(x), self.training)

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


class Flatten(Module):
    """(N, ...) -> (N, prod(...)). A reshape, not an op: nothing to compute, nothing to dispatch."""

    def forward(self, x):
        y = x.reshape(x.shape[0], -1)
        self._keep(x.shape, y)
        return y

    def backward(self, dy):
        x_shape = self._take_cache(dy)       # checks dy before it is touched
        return dy.reshape(x_shape)
