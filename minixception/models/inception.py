"""The Inception family of the paper's Figures 1-4, from the V3 module to "extreme" Inception.

All modules are NHWC, trainable (forward and backward), built from ``mx.nn`` layers:

* ``InceptionV3Module``    Figure 1: the canonical 35x35 module of Inception V3 (torchvision's
                           ``InceptionA``): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avgpool -> 1x1.
* ``SimplifiedInception``  Figure 2: only 3x3 towers, each 1x1 -> 3x3, no pooling tower.
* ``ReformulatedInception`` Figure 3: one large 1x1 conv, then a 3x3 conv on each of ``segments``
                           non-overlapping groups of its output channels (a grouped convolution).
                           With ``segments = towers`` it computes exactly what the simplified module
                           computes (``simplified_to_reformulated`` maps the weights).
* ``ExtremeInception``     Figure 4: one 3x3 per channel of the 1x1's output (``segments = C``).
* ``DepthwiseSeparable``   the depthwise separable convolution it is compared with: the same two
                           operations in the other order (3x3 per channel first, then 1x1) and,
                           as in Xception, no nonlinearity between them.

Every convolution here is a "conv unit" ``conv (no bias) -> BN (eps 1e-3) -> ReLU``, Inception style
(``batchnorm=False`` drops the BN, which makes parameter counts easier to read).

The segment spectrum (``segment_spectrum``): a 1x1 conv C_in -> C then a 3x3 conv C -> C in
``s`` groups costs ``C_in*C + 9*C*C/s`` weights; s = 1 is a regular 3x3 conv, s = C a depthwise one.
"""
from __future__ import annotations

from .. import nn
from ..nn.init import as_generator


# ---------------------------------------------------------------------------------------------
# building block
# ---------------------------------------------------------------------------------------------
class ConvUnit(nn.Sequential):
    """``Conv2D (no bias, "same") -> [BatchNorm2D] -> [ReLU]``; keys ``"<name>/conv/kernel"``, ``"<name>/bn/gamma"``.

    x: (N, H, W, in_channels) -> (N, H', W', out_channels).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="same", groups=1,
                 batchnorm=True, relu=True, name=None, rng=None, dtype="float32"):
        layers = [nn.Conv2D(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                            groups=groups, use_bias=False, name="conv", rng=rng, dtype=dtype)]
        if batchnorm:
            layers.append(nn.BatchNorm2D(out_channels, eps=1e-3, name="bn", dtype=dtype))
        if relu:
            layers.append(nn.ReLU(name="relu"))
        super().__init__(*layers, name=name)
        self.in_channels, self.out_channels = in_channels, out_channels

    @property
    def conv(self):
        return self[0]

    @property
    def bn(self):
        return self[1] if len(self) > 1 and isinstance(self[1], nn.BatchNorm2D) else None


def _branch(*units):
    """A transparent Sequential: the units' own names become the keys (``branch5x5_1/conv/kernel``)."""
    return nn.Sequential(*units, name="")


# ---------------------------------------------------------------------------------------------
# Figure 1: the canonical Inception V3 module
# ---------------------------------------------------------------------------------------------
class InceptionV3Module(nn.Concat):
    """Inception V3's 35x35 module (torchvision ``InceptionA``), concatenated in this order:

    branch1x1     1x1 64
    branch5x5     1x1 48 -> 5x5 64
    branch3x3dbl  1x1 64 -> 3x3 96 -> 3x3 96
    branch_pool   3x3/1 average pool -> 1x1 ``pool_features``

    x: (N, H, W, in_channels) -> (N, H, W, 64 + 64 + 96 + pool_features) (= 256 for 32, 288 for 64).
    """

    def __init__(self, in_channels=192, pool_features=32, batchnorm=True, name=None, rng=None,
                 dtype="float32"):
        rng = as_generator(rng)

        def unit(cin, cout, k, nm):
            return ConvUnit(cin, cout, k, batchnorm=batchnorm, name=nm, rng=rng, dtype=dtype)

        super().__init__(
            _branch(unit(in_channels, 64, 1, "branch1x1")),
            _branch(unit(in_channels, 48, 1, "branch5x5_1"), unit(48, 64, 5, "branch5x5_2")),
            _branch(unit(in_channels, 64, 1, "branch3x3dbl_1"), unit(64, 96, 3, "branch3x3dbl_2"),
                    unit(96, 96, 3, "branch3x3dbl_3")),
            _branch(nn.AvgPool2D(3, stride=1, padding="same", name="branch_pool_avg"),
                    unit(in_channels, pool_features, 1, "branch_pool")),
            name=name)
        self.in_channels = in_channels
        self.out_channels = 64 + 64 + 96 + pool_features


# ---------------------------------------------------------------------------------------------
# Figure 2: the simplified module (3x3 towers only)
# ---------------------------------------------------------------------------------------------
class SimplifiedInception(nn.Concat):
    """``towers`` parallel towers, each ``1x1 (in -> mid) -> 3x3 (mid -> out)``, concatenated.

    x: (N, H, W, in_channels) -> (N, H, W, towers * out_channels).
    Tower t's units are named ``tower{t}_1x1`` and ``tower{t}_3x3``.
    """

    def __init__(self, in_channels, mid_channels, out_channels, towers=3, batchnorm=True, name=None,
                 rng=None, dtype="float32"):
        if not isinstance(towers, int) or towers < 1:
            raise ValueError(f"towers must be a positive int, got {towers!r}")
        rng = as_generator(rng)
        super().__init__(*[
            _branch(ConvUnit(in_channels, mid_channels, 1, batchnorm=batchnorm, name=f"tower{t}_1x1",
                             rng=rng, dtype=dtype),
                    ConvUnit(mid_channels, out_channels, 3, batchnorm=batchnorm, name=f"tower{t}_3x3",
                             rng=rng, dtype=dtype))
            for t in range(towers)], name=name)
        self.in_channels, self.mid_channels, self.out_channels_per_tower = in_channels, mid_channels, out_channels
        self.towers = towers
        self.out_channels = towers * out_channels


# ---------------------------------------------------------------------------------------------
# Figure 3: the strict reformulation (one big 1x1, grouped 3x3)
# ---------------------------------------------------------------------------------------------
class ReformulatedInception(nn.Sequential):
    """``1x1 (in -> hidden)`` then a 3x3 conv ``hidden -> out`` split into ``segments`` groups.

    Group g of the 3x3 sees only hidden channels ``[g*hidden/s, (g+1)*hidden/s)`` and writes only
    output channels ``[g*out/s, (g+1)*out/s)``. ``segments=1``: a regular 3x3 conv after the 1x1;
    ``segments=hidden`` (with ``out=hidden``): the extreme module of Figure 4.
    x: (N, H, W, in_channels) -> (N, H, W, out_channels). Units named ``pointwise`` and ``grouped3x3``.
    """

    def __init__(self, in_channels, hidden_channels, out_channels, segments, batchnorm=True, name=None,
                 rng=None, dtype="float32"):
        if not isinstance(segments, int) or segments < 1:
            raise ValueError(f"segments must be a positive int, got {segments!r}")
        if hidden_channels % segments or out_channels % segments:
            raise ValueError(f"segments={segments} must divide hidden_channels={hidden_channels} "
                             f"and out_channels={out_channels}")
        rng = as_generator(rng)
        super().__init__(
            ConvUnit(in_channels, hidden_channels, 1, batchnorm=batchnorm, name="pointwise", rng=rng, dtype=dtype),
            ConvUnit(hidden_channels, out_channels, 3, groups=segments, batchnorm=batchnorm, name="grouped3x3",
                     rng=rng, dtype=dtype),
            name=name)
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.segments = segments


def simplified_to_reformulated(simplified, reformulated=None):
    """The weights of a ``SimplifiedInception`` laid out for the equivalent ``ReformulatedInception``.

    The big 1x1 kernel is the towers' 1x1 kernels side by side on the output axis; the grouped
    3x3 kernel ``(3, 3, mid, towers*out)`` is the towers' 3x3 kernels side by side on the output
    axis (group t reads hidden channels of tower t and writes tower t's outputs); BN parameters
    and moving statistics are concatenated the same way. Returns a state dict; when
    ``reformulated`` is given it is also loaded into it.
    """
    import numpy as np

    sd = simplified.state_dict()
    towers = simplified.towers
    out = {}
    for src, dst in (("1x1", "pointwise"), ("3x3", "grouped3x3")):
        keys = [k.split("/", 1)[1] for k in sd if k.startswith(f"tower0_{src}/")]
        axis_of = {"conv/kernel": -1}
        for k in keys:
            parts = [sd[f"tower{t}_{src}/{k}"] for t in range(towers)]
            out[f"{dst}/{k}"] = np.concatenate(parts, axis=axis_of.get(k, 0))
    if reformulated is not None:
        reformulated.load_state_dict(out)
    return out


# ---------------------------------------------------------------------------------------------
# Figure 4: the extreme module, and the depthwise separable convolution beside it
# ---------------------------------------------------------------------------------------------
class ExtremeInception(nn.Sequential):
    """1x1 conv ``in -> C`` + BN + ReLU, then one 3x3 filter per channel (depthwise) + BN + ReLU.

    = ``ReformulatedInception(in, C, C, segments=C)``, written with the depthwise layer.
    Weights: ``in*C`` (pointwise) + ``9*C`` (depthwise). x: (N, H, W, in) -> (N, H, W, C).
    """

    def __init__(self, in_channels, channels, kernel_size=3, batchnorm=True, name=None, rng=None,
                 dtype="float32"):
        rng = as_generator(rng)
        layers = [nn.PointwiseConv2D(in_channels, channels, name="pointwise", rng=rng, dtype=dtype)]
        if batchnorm:
            layers.append(nn.BatchNorm2D(channels, name="pointwise_bn", dtype=dtype))
        layers.append(nn.ReLU(name="pointwise_relu"))          # the nonlinearity separable convs lack
        layers.append(nn.DepthwiseConv2D(channels, kernel_size, name="depthwise", rng=rng, dtype=dtype))
        if batchnorm:
            layers.append(nn.BatchNorm2D(channels, name="depthwise_bn", dtype=dtype))
        layers.append(nn.ReLU(name="depthwise_relu"))
        super().__init__(*layers, name=name)
        self.in_channels, self.out_channels = in_channels, channels


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 on the ``in`` channels, then pointwise ``in -> out`` (Keras SeparableConv2D),
    optionally + BN + ReLU after it (as in Xception). No nonlinearity in between unless
    ``intermediate`` is "relu"/"elu". Weights: ``9*in`` + ``in*out``.
    x: (N, H, W, in) -> (N, H, W, out).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, intermediate=None, batchnorm=True,
                 relu=True, name=None, rng=None, dtype="float32"):
        layers = [nn.SeparableConv2D(in_channels, out_channels, kernel_size, intermediate=intermediate,
                                     name="sepconv", rng=rng, dtype=dtype)]
        if batchnorm:
            layers.append(nn.BatchNorm2D(out_channels, name="sepconv_bn", dtype=dtype))
        if relu:
            layers.append(nn.ReLU(name="sepconv_relu"))
        super().__init__(*layers, name=name)
        self.in_channels, self.out_channels = in_channels, out_channels


# ---------------------------------------------------------------------------------------------
# counting along the spectrum
# ---------------------------------------------------------------------------------------------
def segment_params(in_channels, channels, segments, kernel_size=3):
    """Weights (no BN) of ``1x1 in -> C`` followed by a ``k x k`` conv ``C -> C`` in ``segments`` groups."""
    if channels % segments:
        raise ValueError(f"segments={segments} must divide channels={channels}")
    return in_channels * channels + kernel_size * kernel_size * (channels // segments) * channels


def segment_flops(in_channels, channels, segments, height, width, kernel_size=3):
    """Multiply-adds of the same on an ``height x width`` map (stride 1, "same" padding)."""
    return height * width * segment_params(in_channels, channels, segments, kernel_size)


def segment_spectrum(in_channels, channels, height=1, width=1, kernel_size=3):
    """One row per valid number of segments (the divisors of ``channels``), 1 .. C.

    Each row: ``{"segments", "channels_per_segment", "params", "flops", "kind"}`` where kind is
    "regular conv" (1 segment), "Inception-like" (in between) or "extreme / depthwise" (C segments).
    The separable conv's own count (``k*k*in + in*C``) is given by ``separable_params``.
    """
    rows = []
    for s in range(1, channels + 1):
        if channels % s:
            continue
        kind = "regular conv" if s == 1 else ("extreme / depthwise" if s == channels else "Inception-like")
        rows.append({"segments": s, "channels_per_segment": channels // s,
                     "params": segment_params(in_channels, channels, s, kernel_size),
                     "flops": segment_flops(in_channels, channels, s, height, width, kernel_size),
                     "kind": kind})
    return rows


def extreme_params(in_channels, channels, kernel_size=3):
    """Weights (no BN) of the extreme module: ``in*C + k*k*C``."""
    return in_channels * channels + kernel_size * kernel_size * channels


def separable_params(in_channels, out_channels, kernel_size=3):
    """Weights (no BN) of a depthwise separable conv: ``k*k*in + in*out``."""
    return kernel_size * kernel_size * in_channels + in_channels * out_channels


__all__ = ["ConvUnit", "InceptionV3Module", "SimplifiedInception", "ReformulatedInception",
           "simplified_to_reformulated", "ExtremeInception", "DepthwiseSeparable", "segment_params",
           "segment_flops", "segment_spectrum", "extreme_params", "separable_params"]
