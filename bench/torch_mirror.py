"""Build a PyTorch network that mirrors a minixception model layer by layer, weights copied.

Used by the benchmarks (same network, same weights, two implementations, one run)
and usable as an oracle for whole models. Torch runs NCHW; the mirror takes NHWC
input like minixception and permutes once at the start. TF "same" padding is
reproduced with torch's own (free) padding where it is symmetric and an explicit
``F.pad`` only where TF pads asymmetrically (stride 2 on an even size), so the
baseline pays no more for padding than a native PyTorch model would.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF

import minixception as mx
from minixception.functional.padding import conv_geometry, pair


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(mx.to_numpy(a)))


class _TFConv(tnn.Module):
    """A torch conv with TF "same" padding: native (free) when symmetric, an explicit pad when not."""

    def __init__(self, conv, kernel_size, stride, padding):
        super().__init__()
        self.conv, self.k, self.s, self.padding = conv, pair(kernel_size), pair(stride), padding

    def forward(self, x):
        (t, b), (l, r) = conv_geometry(x.shape[2], x.shape[3], self.k, self.s, self.padding)[0]
        c = self.conv
        if t == b and l == r:
            return TF.conv2d(x, c.weight, c.bias, c.stride, (t, l), 1, c.groups)
        return c(TF.pad(x, (l, r, t, b)))


class _TFMaxPool(tnn.Module):
    def __init__(self, pool_size, stride, padding):
        super().__init__()
        self.k, self.s, self.padding = pair(pool_size), pair(stride), padding

    def forward(self, x):
        (t, b), (l, r) = conv_geometry(x.shape[2], x.shape[3], self.k, self.s, self.padding)[0]
        if t == b and l == r:
            return TF.max_pool2d(x, self.k, self.s, (t, l))
        return TF.max_pool2d(TF.pad(x, (l, r, t, b), value=float("-inf")), self.k, self.s)


class _Residual(tnn.Module):
    def __init__(self, main, shortcut):
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x):
        return self.main(x) + (x if self.shortcut is None else self.shortcut(x))


class _Concat(tnn.Module):
    def __init__(self, branches):
        super().__init__()
        self.branches = tnn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


class _GlobalAvg(tnn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class _NHWCtoNCHW(tnn.Module):
    def forward(self, x):
        return x.permute(0, 3, 1, 2)


def _conv(cin, cout, k, stride, padding, groups, weight, bias):
    conv = tnn.Conv2d(cin, cout, k, stride=pair(stride), padding=0, groups=groups, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(_t(bias))
    return _TFConv(conv, k, stride, padding)


def mirror(module):
    """The torch equivalent of a minixception Module (weights and BN statistics copied)."""
    nn = mx.nn
    if isinstance(module, nn.Sequential):
        return tnn.Sequential(*[mirror(m) for m in module])
    if isinstance(module, nn.Residual):
        return _Residual(mirror(module.main), None if module.shortcut is None else mirror(module.shortcut))
    if isinstance(module, nn.Concat):
        return _Concat([mirror(m) for m in module.children()])
    if isinstance(module, nn.Conv2D):
        k = module.kernel.data
        return _conv(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                     module.padding, module.groups, _t(k).permute(3, 2, 0, 1),
                     module.bias.data if module.bias is not None else None)
    if isinstance(module, nn.DepthwiseConv2D):
        c = module.channels
        return _conv(c, c, module.kernel_size, module.stride, module.padding, c,
                     _t(module.kernel.data).permute(2, 3, 0, 1),
                     module.bias.data if module.bias is not None else None)
    if isinstance(module, nn.PointwiseConv2D):
        return _conv(module.in_channels, module.out_channels, 1, 1, "valid", 1,
                     _t(module.kernel.data).permute(3, 2, 0, 1),
                     module.bias.data if module.bias is not None else None)
    if isinstance(module, nn.SeparableConv2D):
        c, f = module.in_channels, module.out_channels
        parts = [_conv(c, c, module.kernel_size, module.stride, module.padding, c,
                       _t(module.depthwise_kernel.data).permute(2, 3, 0, 1), None)]
        if module.intermediate == "relu":
            parts.append(tnn.ReLU())
        elif module.intermediate == "elu":
            parts.append(tnn.ELU())
        parts.append(_conv(c, f, 1, 1, "valid", 1, _t(module.pointwise_kernel.data).permute(3, 2, 0, 1),
                           module.bias.data if module.bias is not None else None))
        return tnn.Sequential(*parts)
    if isinstance(module, nn.BatchNorm2D):
        bn = tnn.BatchNorm2d(module.channels, eps=module.eps, momentum=1.0 - module.momentum)
        with torch.no_grad():
            bn.weight.copy_(_t(module.gamma.data))
            bn.bias.copy_(_t(module.beta.data))
            bn.running_mean.copy_(_t(module.moving_mean))
            bn.running_var.copy_(_t(module.moving_variance))
        return bn
    if isinstance(module, nn.ReLU):
        return tnn.ReLU()
    if isinstance(module, nn.ELU):
        return tnn.ELU(module.alpha)
    if isinstance(module, nn.MaxPool2D):
        return _TFMaxPool(module.pool_size, module.stride, module.padding)
    if isinstance(module, nn.GlobalAvgPool2D):
        return _GlobalAvg()
    if isinstance(module, nn.Dense):
        lin = tnn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(_t(module.kernel.data).T)
            if module.bias is not None:
                lin.bias.copy_(_t(module.bias.data))
        return lin
    if isinstance(module, nn.Dropout):
        return tnn.Dropout(module.rate)
    if isinstance(module, nn.Flatten):
        return tnn.Flatten()
    # a model class: mirror its children in order (models are Sequential-like by construction)
    if module.children() and not module.named_parameters(recurse=False):
        return tnn.Sequential(*[mirror(m) for m in module.children()])
    raise TypeError(f"no torch mirror for {type(module).__name__}")


def mirror_model(model, dtype=torch.float32):
    """NHWC-input torch model equal to ``model`` (call ``.train()``/``.eval()`` to match modes)."""
    net = tnn.Sequential(_NHWCtoNCHW(), mirror(model)).to(dtype)
    net.train(model.training)
    return net
