"""What the test files share, imported as ``from helpers import ...`` (pytest puts this folder on
the import path of the tests it collects; no test edits ``sys.path``).

* The tolerances, input makers and the table of functional op cases (``OP_CASES``) that drive the
  gradient checks, the float32-vs-float64 checks and the CuPy tests; the layer cases
  (``layer_cases``) and two small Xception blocks.
* ``KERAS_LAYERS``: Keras 3's ``keras.applications.Xception()`` layer table, the oracle for our
  names, shapes and weight order (``our_name`` maps Keras's auto-named shortcuts to ours).
* ``tiny_model`` / ``tiny_data`` / ``params_of``: a small conv net and dataset for the training
  and checkpoint tests, fast on a CPU and independent of ``mx.models``.
* ``CupyStandin`` / ``make_standin``: a NumPy that only knows CuPy's names, to run the CuPy code
  path's *names* on the CPU.
* ``FakeGpuArray`` / ``fake_gpu``: NumPy arrays that the package takes for GPU arrays, to test
  device checks and device moves on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass
from typing import Callable

import numpy as np

import minixception as mx
from minixception import backend, nn
from minixception import functional as F
from minixception.backend import get_array_module


# ---------------------------------------------------------------- tolerances
SMOOTH = 1e-7     # the threshold for smooth single ops
KINK = 1e-5       # ReLU / max pool (inputs off the kinks)
LOCAL, REDUCTION = 1e-4, 1e-3   # float32 vs float64 tolerances


# ---------------------------------------------------------------- input helpers
def off_kinks(rng, shape, margin=0.05):
    """Random values with |x| >= margin: a finite difference of h never crosses 0."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return sign * rng.uniform(margin, 1.5, size=shape)


def distinct(rng, shape):
    """Values spaced >= 2/size apart (no near-ties: a max pool never switches winner under h)."""
    size = int(np.prod(shape))
    return (rng.permutation(size) / size * 4.0 - 2.0).reshape(shape)


def normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


# ---------------------------------------------------------------- the op table
@dataclass
class OpCase:
    """make(rng) -> (forward, backward, inputs): ``forward(*inputs) -> (y, cache)``,
    ``backward(dy, cache) -> tuple of gradients, one per input`` (float64 host inputs)."""
    name: str
    make: Callable
    tol: float = SMOOTH          # gradient-check threshold
    f32: float = LOCAL           # float32-vs-float64 tolerance (None: not comparable)


def _conv_case(groups, stride, padding, hw, bias, kernel=(3, 3), c=4, f=6):
    def make(rng):
        kh, kw = kernel
        x = normal(rng, 2, *hw, c)
        k = normal(rng, kh, kw, c // groups, f, scale=0.5)
        inputs = [x, k] + ([normal(rng, f)] if bias else [])

        def fwd(x, k, b=None):
            return F.conv2d_forward(x, k, b, stride=stride, padding=padding, groups=groups)

        def bwd(dy, cache):
            dx, dk, db = F.conv2d_backward(dy, cache)
            return (dx, dk, db) if bias else (dx, dk)
        return fwd, bwd, inputs
    name = f"conv2d-g{groups}-s{stride}-{padding}-{hw[0]}x{hw[1]}-k{kernel[0]}{kernel[1]}-{'bias' if bias else 'nobias'}"
    return OpCase(name, make)


def _depthwise_case(stride, padding, k, hw=(6, 7)):
    def make(rng):
        x = normal(rng, 2, *hw, 3)
        kern = normal(rng, k, k, 3, 1, scale=0.5)
        return (lambda x, kern: F.depthwise_conv2d_forward(x, kern, stride, padding),
                F.depthwise_conv2d_backward, [x, kern])
    return OpCase(f"depthwise-s{stride}-{padding}-{k}x{k}-{hw[0]}x{hw[1]}", make)


def _pointwise(rng):
    return (F.pointwise_conv2d_forward, F.pointwise_conv2d_backward,
            [normal(rng, 2, 3, 4, 5), normal(rng, 1, 1, 5, 3)])


def _separable_case(intermediate, stride=1, padding="same"):
    def make(rng):
        # the intermediate activation sees the depthwise output: keep x off kinks is not
        # enough, but a seeded draw of a few hundred continuous values never lands within h of 0
        x = normal(rng, 2, 5, 6, 3)
        return (lambda x, d, p: F.separable_conv2d_forward(x, d, p, stride, padding, intermediate),
                F.separable_conv2d_backward,
                [x, normal(rng, 3, 3, 3, 1, scale=0.5), normal(rng, 1, 1, 3, 4, scale=0.5)])
    tol = KINK if intermediate == "relu" else SMOOTH
    return OpCase(f"separable-{intermediate}-s{stride}-{padding}", make, tol)


def _bn_train(rng):
    # small tensor on purpose: BN's input gradient carries finite-difference roundoff
    # that grows with the tensor (~5e-7 at h=1e-5 on big ones); here it stays < 1e-7
    x = normal(rng, 2, 3, 3, 4, scale=2.0) + 0.5

    def fwd(x, g, b):
        xp = get_array_module(x)
        return F.batchnorm_forward(x, g, b, xp.zeros(4, x.dtype), xp.ones(4, x.dtype), training=True)
    return fwd, F.batchnorm_backward, [x, rng.uniform(0.5, 1.5, 4), normal(rng, 4)]


def _bn_eval(rng):
    x = normal(rng, 2, 3, 3, 4, scale=2.0)
    mean, var = normal(rng, 4), rng.uniform(0.5, 2.0, 4)

    def fwd(x, g, b):
        xp = get_array_module(x)
        return F.batchnorm_forward(x, g, b, xp.asarray(mean, x.dtype), xp.asarray(var, x.dtype),
                                   training=False)
    return fwd, F.batchnorm_backward, [x, rng.uniform(0.5, 1.5, 4), normal(rng, 4)]


def _single(fwd, bwd):
    """Adapt a one-input op whose backward returns one array."""
    return lambda x, *a: fwd(x, *a), (lambda dy, cache: (bwd(dy, cache),))


def _relu(rng):
    return (*_single(F.relu_forward, F.relu_backward), [off_kinks(rng, (2, 3, 4, 5))])


def _elu(rng):
    return (*_single(lambda x: F.elu_forward(x, 1.3), F.elu_backward), [off_kinks(rng, (2, 3, 4, 5))])


def _maxpool_case(pool, stride, padding, hw):
    def make(rng):
        return (*_single(lambda x: F.maxpool2d_forward(x, pool, stride, padding), F.maxpool2d_backward),
                [distinct(rng, (2, *hw, 3))])
    return OpCase(f"maxpool-{pool}-s{stride}-{padding}-{hw[0]}x{hw[1]}", make, KINK)


def _avgpool_case(pool, stride, padding, hw):
    def make(rng):
        return (*_single(lambda x: F.avgpool2d_forward(x, pool, stride, padding), F.avgpool2d_backward),
                [normal(rng, 2, *hw, 3)])
    return OpCase(f"avgpool-{pool}-s{stride}-{padding}-{hw[0]}x{hw[1]}", make)


def _global_avg(rng):
    return (*_single(F.global_avgpool2d_forward, F.global_avgpool2d_backward), [normal(rng, 2, 3, 4, 5)])


def _dense(bias):
    def make(rng):
        inputs = [normal(rng, 4, 6), normal(rng, 6, 3)] + ([normal(rng, 3)] if bias else [])

        def bwd(dy, cache):
            dx, dk, db = F.dense_backward(dy, cache)
            return (dx, dk, db) if bias else (dx, dk)
        return F.dense_forward, bwd, inputs
    return make


def dropout_generator(x, seed=7):
    """A fresh generator per call, so every forward draws the same mask (NumPy or CuPy)."""
    return get_array_module(x).random.default_rng(seed)


def _dropout(training):
    def make(rng):
        return (*_single(lambda x: F.dropout_forward(x, 0.4, dropout_generator(x), training),
                         F.dropout_backward), [normal(rng, 2, 3, 4, 5)])
    return make


def _softmax_ce(rng):
    labels = np.array([0, 3, 1, 4, 3])

    def fwd(z):
        xp = get_array_module(z)
        return F.softmax_cross_entropy(z, xp.asarray(labels))   # (loss, dlogits) = (y, cache)
    return fwd, (lambda dy, dlogits: (dy * dlogits,)), [normal(rng, 5, 6, scale=2.0)]


OP_CASES = [
    # conv2d: groups 1, 2, C; stride 1, 2; valid / same / int padding; odd and even sizes
    # (an even size at stride 2 gives TF-same's asymmetric 0/1 padding); with and without bias
    _conv_case(1, 1, "valid", (5, 6), True),
    _conv_case(1, 1, "same", (5, 6), False),
    _conv_case(1, 2, "same", (6, 7), True),          # H pads 0/1, W pads 1/1
    _conv_case(1, 2, "same", (7, 8), False),
    _conv_case(1, 2, "valid", (7, 6), True),
    _conv_case(1, 1, 1, (5, 5), True),               # explicit int padding
    _conv_case(1, 1, "same", (5, 6), True, kernel=(2, 3)),   # even kernel: 0/1 padding at stride 1
    _conv_case(1, 2, "same", (6, 6), False, kernel=(1, 1)),  # the Xception shortcut conv
    _conv_case(2, 1, "same", (5, 5), True),
    _conv_case(2, 2, "valid", (7, 6), False),
    _conv_case(2, 2, 1, (6, 5), True),
    _conv_case(4, 1, "same", (5, 6), False, f=4),    # groups = C: depthwise
    _conv_case(4, 2, "same", (6, 6), True, f=8),     # groups = C, two filters per channel
    _depthwise_case(1, "same", 3),
    _depthwise_case(2, "same", 3),
    _depthwise_case(1, "valid", 3),
    _depthwise_case(2, "valid", 3, hw=(7, 8)),
    _depthwise_case(1, "same", 5),
    _depthwise_case(2, "same", 5, hw=(8, 9)),
    OpCase("pointwise", _pointwise),
    _separable_case(None),
    _separable_case("relu"),
    _separable_case("elu"),
    _separable_case(None, stride=2, padding="valid"),
    OpCase("batchnorm-train", _bn_train, f32=REDUCTION),
    OpCase("batchnorm-eval", _bn_eval),
    OpCase("relu", _relu, KINK),
    OpCase("elu", _elu),
    _maxpool_case(3, 2, "same", (6, 7)),
    _maxpool_case(3, 2, "valid", (7, 6)),
    _maxpool_case(2, 2, "valid", (6, 6)),
    _maxpool_case(3, 1, "same", (5, 4)),
    _avgpool_case(3, 1, "same", (5, 6)),
    _avgpool_case(3, 2, "same", (6, 7)),
    _avgpool_case(3, 2, "valid", (7, 6)),
    _avgpool_case(2, 1, "valid", (4, 5)),
    OpCase("global_avgpool", _global_avg),
    OpCase("dense-bias", _dense(True)),
    OpCase("dense-nobias", _dense(False)),
    # float32 and float64 generators draw different masks: not comparable across dtypes
    OpCase("dropout-train", _dropout(True), f32=None),
    OpCase("dropout-eval", _dropout(False)),
    OpCase("softmax_cross_entropy", _softmax_ce, f32=REDUCTION),
]
IDS = [c.name for c in OP_CASES]


def run_case(case, inputs, dy_seed=3):
    """Forward + backward with a fixed random dy; returns (y, grads, dy)."""
    fwd, bwd, _ = case.make(np.random.default_rng(0))
    y, cache = fwd(*inputs)
    xp = get_array_module(y)
    dy = xp.asarray(np.random.default_rng(dy_seed).standard_normal(y.shape)).astype(y.dtype)
    dy_before = dy.copy()
    grads = bwd(dy, cache)
    assert bool((dy == dy_before).all()), f"{case.name}: backward wrote into dy"
    return y, grads, dy


def case_inputs(case, dtype="float64", seed=0):
    _, _, inputs = case.make(np.random.default_rng(seed))
    return [np.ascontiguousarray(a, dtype=dtype) for a in inputs]


# ---------------------------------------------------------------- layer cases
def layer_cases():
    """(id, layer factory, input shape, threshold, input kind)."""
    d = "float64"
    return [
        ("Conv2D-g1-s2-same", lambda: mx.nn.Conv2D(4, 6, 3, 2, "same", rng=0, dtype=d), (2, 6, 7, 4), SMOOTH, "normal"),
        ("Conv2D-g2-valid-nobias", lambda: mx.nn.Conv2D(4, 6, 3, 1, "valid", groups=2, use_bias=False, rng=0, dtype=d),
         (2, 5, 5, 4), SMOOTH, "normal"),
        ("Conv2D-gC-int-pad", lambda: mx.nn.Conv2D(4, 4, 3, 1, 1, groups=4, rng=0, dtype=d), (2, 5, 5, 4), SMOOTH, "normal"),
        ("DepthwiseConv2D", lambda: mx.nn.DepthwiseConv2D(3, 3, 2, "same", rng=0, dtype=d), (2, 6, 6, 3), SMOOTH, "normal"),
        ("DepthwiseConv2D-bias-5x5", lambda: mx.nn.DepthwiseConv2D(3, 5, 1, "same", use_bias=True, rng=0, dtype=d),
         (2, 5, 6, 3), SMOOTH, "normal"),
        ("PointwiseConv2D", lambda: mx.nn.PointwiseConv2D(3, 5, rng=0, dtype=d), (2, 3, 4, 3), SMOOTH, "normal"),
        ("PointwiseConv2D-bias", lambda: mx.nn.PointwiseConv2D(3, 5, use_bias=True, rng=0, dtype=d), (2, 3, 4, 3), SMOOTH, "normal"),
        ("SeparableConv2D", lambda: mx.nn.SeparableConv2D(3, 4, rng=0, dtype=d), (2, 5, 5, 3), SMOOTH, "normal"),
        ("SeparableConv2D-relu", lambda: mx.nn.SeparableConv2D(3, 4, intermediate="relu", rng=0, dtype=d),
         (2, 5, 5, 3), KINK, "normal"),
        ("SeparableConv2D-elu-bias-s2", lambda: mx.nn.SeparableConv2D(3, 4, 3, 2, "same", use_bias=True,
                                                                       intermediate="elu", rng=0, dtype=d),
         (2, 6, 5, 3), SMOOTH, "normal"),
        ("BatchNorm2D-train", lambda: bn_layer(True), (2, 3, 3, 4), SMOOTH, "normal"),
        ("BatchNorm2D-eval", lambda: bn_layer(False), (2, 3, 3, 4), SMOOTH, "normal"),
        ("ReLU", lambda: mx.nn.ReLU(), (2, 3, 3, 4), KINK, "off_kinks"),
        ("ELU", lambda: mx.nn.ELU(0.7), (2, 3, 3, 4), SMOOTH, "off_kinks"),
        ("MaxPool2D", lambda: mx.nn.MaxPool2D(3, 2, "same"), (2, 6, 5, 3), KINK, "distinct"),
        ("AvgPool2D", lambda: mx.nn.AvgPool2D(3, 2, "same"), (2, 6, 5, 3), SMOOTH, "normal"),
        ("GlobalAvgPool2D", lambda: mx.nn.GlobalAvgPool2D(), (2, 3, 4, 5), SMOOTH, "normal"),
        ("Dense", lambda: mx.nn.Dense(6, 3, rng=0, dtype=d), (4, 6), SMOOTH, "normal"),
        ("Dropout-eval", lambda: mx.nn.Dropout(0.5, rng=0).eval(), (2, 3, 3, 4), SMOOTH, "normal"),
        ("Flatten", lambda: mx.nn.Flatten(), (2, 3, 3, 4), SMOOTH, "normal"),
        ("Sequential-head", lambda: mx.nn.Sequential(mx.nn.GlobalAvgPool2D(), mx.nn.Dense(4, 3, rng=1, dtype=d)),
         (2, 3, 3, 4), SMOOTH, "normal"),
        ("Concat", lambda: mx.nn.Concat(mx.nn.PointwiseConv2D(3, 2, rng=1, dtype=d),
                                        mx.nn.DepthwiseConv2D(3, rng=2, dtype=d),
                                        mx.nn.AvgPool2D(3, 1, "same")), (2, 4, 4, 3), SMOOTH, "normal"),
    ]


def bn_layer(training):
    bn = mx.nn.BatchNorm2D(4, dtype="float64")
    r = np.random.default_rng(9)
    bn.gamma.data[:] = r.uniform(0.5, 1.5, 4)
    bn.beta.data[:] = r.standard_normal(4)
    bn.moving_mean[:] = r.standard_normal(4)
    bn.moving_variance[:] = r.uniform(0.5, 2.0, 4)
    return bn.train(training)


INPUTS = {"normal": lambda r, s: r.standard_normal(s), "off_kinks": off_kinks, "distinct": distinct}


# ---------------------------------------------------------------- small Xception blocks
def xception_entry_block(cin=4, cout=8, first_relu=True, dtype="float64", seed=0):
    """Blocks 3/4 of Xception: ReLU-sep-BN-ReLU-sep-BN-MaxPool 3x3/2 same + (Conv 1x1/2 + BN)."""
    r = np.random.default_rng(seed)
    main = ([mx.nn.ReLU()] if first_relu else []) + [
        mx.nn.SeparableConv2D(cin, cout, name="sepconv1", rng=r, dtype=dtype),
        mx.nn.BatchNorm2D(cout, name="sepconv1_bn", dtype=dtype),
        mx.nn.ReLU(),
        mx.nn.SeparableConv2D(cout, cout, name="sepconv2", rng=r, dtype=dtype),
        mx.nn.BatchNorm2D(cout, name="sepconv2_bn", dtype=dtype),
        mx.nn.MaxPool2D(3, 2, "same", name="pool"),
    ]
    shortcut = mx.nn.Sequential(mx.nn.Conv2D(cin, cout, 1, 2, "same", use_bias=False, name="shortcut", rng=r, dtype=dtype),
                                mx.nn.BatchNorm2D(cout, name="shortcut_bn", dtype=dtype), name="")
    return mx.nn.Residual(mx.nn.Sequential(*main, name=""), shortcut, name="block")


def xception_middle_block(c=6, dtype="float64", seed=0):
    """Blocks 5-12: 3 x (ReLU, sepconv, BN), identity shortcut."""
    r = np.random.default_rng(seed)
    layers = []
    for i in (1, 2, 3):
        layers += [mx.nn.ReLU(), mx.nn.SeparableConv2D(c, c, name=f"sepconv{i}", rng=r, dtype=dtype),
                   mx.nn.BatchNorm2D(c, name=f"sepconv{i}_bn", dtype=dtype)]
    return mx.nn.Residual(mx.nn.Sequential(*layers, name=""), name="block")


def randomise_bn(model, seed=1):
    r = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data[:] = r.uniform(0.5, 1.5, p.shape)
        elif name.endswith("beta"):
            p.data[:] = r.standard_normal(p.shape) * 0.5


# ---------------------------------------------------------------- Keras's Xception, layer by layer
# (name, class, output shape without the batch, ((weight, shape), ...)), in ``model.layers`` order
KERAS_LAYERS = [
    ('input_layer', 'InputLayer', (299, 299, 3), ()),
    ('block1_conv1', 'Conv2D', (149, 149, 32), (('kernel', (3, 3, 3, 32)),)),
    ('block1_conv1_bn', 'BatchNormalization', (149, 149, 32), (('gamma', (32,)), ('beta', (32,)), ('moving_mean', (32,)), ('moving_variance', (32,)))),
    ('block1_conv1_act', 'Activation', (149, 149, 32), ()),
    ('block1_conv2', 'Conv2D', (147, 147, 64), (('kernel', (3, 3, 32, 64)),)),
    ('block1_conv2_bn', 'BatchNormalization', (147, 147, 64), (('gamma', (64,)), ('beta', (64,)), ('moving_mean', (64,)), ('moving_variance', (64,)))),
    ('block1_conv2_act', 'Activation', (147, 147, 64), ()),
    ('block2_sepconv1', 'SeparableConv2D', (147, 147, 128), (('depthwise_kernel', (3, 3, 64, 1)), ('pointwise_kernel', (1, 1, 64, 128)))),
    ('block2_sepconv1_bn', 'BatchNormalization', (147, 147, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('block2_sepconv2_act', 'Activation', (147, 147, 128), ()),
    ('block2_sepconv2', 'SeparableConv2D', (147, 147, 128), (('depthwise_kernel', (3, 3, 128, 1)), ('pointwise_kernel', (1, 1, 128, 128)))),
    ('block2_sepconv2_bn', 'BatchNormalization', (147, 147, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('conv2d', 'Conv2D', (74, 74, 128), (('kernel', (1, 1, 64, 128)),)),
    ('block2_pool', 'MaxPooling2D', (74, 74, 128), ()),
    ('batch_normalization', 'BatchNormalization', (74, 74, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('add', 'Add', (74, 74, 128), ()),
    ('block3_sepconv1_act', 'Activation', (74, 74, 128), ()),
    ('block3_sepconv1', 'SeparableConv2D', (74, 74, 256), (('depthwise_kernel', (3, 3, 128, 1)), ('pointwise_kernel', (1, 1, 128, 256)))),
    ('block3_sepconv1_bn', 'BatchNormalization', (74, 74, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('block3_sepconv2_act', 'Activation', (74, 74, 256), ()),
    ('block3_sepconv2', 'SeparableConv2D', (74, 74, 256), (('depthwise_kernel', (3, 3, 256, 1)), ('pointwise_kernel', (1, 1, 256, 256)))),
    ('block3_sepconv2_bn', 'BatchNormalization', (74, 74, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('conv2d_1', 'Conv2D', (37, 37, 256), (('kernel', (1, 1, 128, 256)),)),
    ('block3_pool', 'MaxPooling2D', (37, 37, 256), ()),
    ('batch_normalization_1', 'BatchNormalization', (37, 37, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('add_1', 'Add', (37, 37, 256), ()),
    ('block4_sepconv1_act', 'Activation', (37, 37, 256), ()),
    ('block4_sepconv1', 'SeparableConv2D', (37, 37, 728), (('depthwise_kernel', (3, 3, 256, 1)), ('pointwise_kernel', (1, 1, 256, 728)))),
    ('block4_sepconv1_bn', 'BatchNormalization', (37, 37, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block4_sepconv2_act', 'Activation', (37, 37, 728), ()),
    ('block4_sepconv2', 'SeparableConv2D', (37, 37, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block4_sepconv2_bn', 'BatchNormalization', (37, 37, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('conv2d_2', 'Conv2D', (19, 19, 728), (('kernel', (1, 1, 256, 728)),)),
    ('block4_pool', 'MaxPooling2D', (19, 19, 728), ()),
    ('batch_normalization_2', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_2', 'Add', (19, 19, 728), ()),
    ('block5_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block5_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block5_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_3', 'Add', (19, 19, 728), ()),
    ('block6_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block6_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block6_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_4', 'Add', (19, 19, 728), ()),
    ('block7_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block7_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block7_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_5', 'Add', (19, 19, 728), ()),
    ('block8_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block8_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block8_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_6', 'Add', (19, 19, 728), ()),
    ('block9_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block9_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block9_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_7', 'Add', (19, 19, 728), ()),
    ('block10_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block10_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block10_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_8', 'Add', (19, 19, 728), ()),
    ('block11_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block11_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block11_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_9', 'Add', (19, 19, 728), ()),
    ('block12_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block12_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block12_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_10', 'Add', (19, 19, 728), ()),
    ('block13_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block13_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block13_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block13_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block13_sepconv2', 'SeparableConv2D', (19, 19, 1024), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 1024)))),
    ('block13_sepconv2_bn', 'BatchNormalization', (19, 19, 1024), (('gamma', (1024,)), ('beta', (1024,)), ('moving_mean', (1024,)), ('moving_variance', (1024,)))),
    ('conv2d_3', 'Conv2D', (10, 10, 1024), (('kernel', (1, 1, 728, 1024)),)),
    ('block13_pool', 'MaxPooling2D', (10, 10, 1024), ()),
    ('batch_normalization_3', 'BatchNormalization', (10, 10, 1024), (('gamma', (1024,)), ('beta', (1024,)), ('moving_mean', (1024,)), ('moving_variance', (1024,)))),
    ('add_11', 'Add', (10, 10, 1024), ()),
    ('block14_sepconv1', 'SeparableConv2D', (10, 10, 1536), (('depthwise_kernel', (3, 3, 1024, 1)), ('pointwise_kernel', (1, 1, 1024, 1536)))),
    ('block14_sepconv1_bn', 'BatchNormalization', (10, 10, 1536), (('gamma', (1536,)), ('beta', (1536,)), ('moving_mean', (1536,)), ('moving_variance', (1536,)))),
    ('block14_sepconv1_act', 'Activation', (10, 10, 1536), ()),
    ('block14_sepconv2', 'SeparableConv2D', (10, 10, 2048), (('depthwise_kernel', (3, 3, 1536, 1)), ('pointwise_kernel', (1, 1, 1536, 2048)))),
    ('block14_sepconv2_bn', 'BatchNormalization', (10, 10, 2048), (('gamma', (2048,)), ('beta', (2048,)), ('moving_mean', (2048,)), ('moving_variance', (2048,)))),
    ('block14_sepconv2_act', 'Activation', (10, 10, 2048), ()),
    ('avg_pool', 'GlobalAveragePooling2D', (2048,), ()),
    ('predictions', 'Dense', (1000,), (('kernel', (2048, 1000)), ('bias', (1000,)))),
]

# Keras's auto-names of the shortcut layers -> ours.
SHORTCUT_NAMES = {
    "conv2d": "block2_shortcut", "batch_normalization": "block2_shortcut_bn",
    "conv2d_1": "block3_shortcut", "batch_normalization_1": "block3_shortcut_bn",
    "conv2d_2": "block4_shortcut", "batch_normalization_2": "block4_shortcut_bn",
    "conv2d_3": "block13_shortcut", "batch_normalization_3": "block13_shortcut_bn",
}
# Keras weight names -> ours (identical, BN included).
WEIGHTED = [(SHORTCUT_NAMES.get(n, n), t, w) for n, t, _, w in KERAS_LAYERS if w]


def our_name(keras_name):
    return SHORTCUT_NAMES.get(keras_name, keras_name)


# ---------------------------------------------------------------- a tiny model and dataset
def tiny_model(seed=0, width=4, dropout=0.0):
    r = np.random.default_rng(seed)
    layers = [nn.Conv2D(3, width, 3, stride=2, padding="same", use_bias=False, rng=r), nn.BatchNorm2D(width),
              nn.ReLU(), nn.SeparableConv2D(width, 2 * width, rng=r), nn.BatchNorm2D(2 * width), nn.ReLU(),
              nn.MaxPool2D(), nn.Flatten()]     # 32x32 -> 8x8x(2w); flatten: memorises fast
    if dropout:
        layers.append(nn.Dropout(dropout, rng=r))
    layers.append(nn.Dense(8 * 8 * 2 * width, 10, rng=r))
    return nn.Sequential(*layers)


def tiny_data(n_train=64, n_test=32, seed=0):
    x, y, xt, yt = mx.data.load_shapes(n_train, n_test, seed=seed)
    return dict(x_train=x, y_train=y, x_test=xt, y_test=yt)


def params_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- the CuPy stand-in
class CupyStandin(types.ModuleType):
    """A NumPy that only knows CuPy's names: runs the CuPy code path's *names* on the CPU.

    ``CupyStandin(numpy, cupy)`` behaves like the ``numpy`` module, but asking it for a
    name that ``cupy`` lacks raises AttributeError -- so a ``xp.<numpy-only name>`` in
    the package fails on a machine without a GPU, instead of on the first GPU run.
    Submodules (``xp.random``, ``xp.linalg``, ``xp.lib.stride_tricks``) are wrapped
    the same way. Every name looked up is recorded in ``accessed`` (tests check the
    stand-in was really used).

    It cannot check argument support (keywords CuPy does not take) or array methods;
    tests/test_gpu_ops.py covers those on a GPU.
    """

    def __init__(self, np_module, cp_module, accessed=None):
        super().__init__(np_module.__name__)
        object.__setattr__(self, "_np", np_module)
        object.__setattr__(self, "_cp", cp_module)
        object.__setattr__(self, "accessed", set() if accessed is None else accessed)

    def __getattr__(self, name):
        np_mod, cp_mod = object.__getattribute__(self, "_np"), object.__getattribute__(self, "_cp")
        path = f"{np_mod.__name__.replace('numpy', 'xp', 1)}.{name}"
        if not hasattr(cp_mod, name):
            raise AttributeError(f"{path}: numpy has it but cupy does not ({cp_mod.__name__}.{name} is missing); "
                                 "the GPU path would fail here")
        value = getattr(np_mod, name)          # AttributeError too when numpy lacks it
        self.accessed.add(path)
        if isinstance(value, types.ModuleType):
            return CupyStandin(value, getattr(cp_mod, name), self.accessed)
        return value

    def __repr__(self):
        return f"<CupyStandin of {object.__getattribute__(self, '_np').__name__}>"


def make_standin():
    """The stand-in for ``numpy`` (needs cupy importable; no GPU needed)."""
    import cupy
    return CupyStandin(np, cupy)


# ---------------------------------------------------------------- a pretend GPU
class FakeGpuArray(np.ndarray):
    """A NumPy array that ``fake_gpu()`` makes the package see as a GPU (CuPy) array."""

    def get(self):                     # CuPy's device -> host copy
        return np.array(self.view(np.ndarray))


@contextlib.contextmanager
def fake_gpu(monkeypatch):
    """Within this block ``FakeGpuArray`` counts as a GPU array, and ``Module.to("gpu")`` /
    ``.to("cpu")`` turn arrays into / out of it. Only device bookkeeping works on it: element-wise
    arithmetic does, the ops (which ask for the array module) do not."""
    def to_device(a, device):
        if device == "gpu":
            return a if isinstance(a, FakeGpuArray) else np.array(a).view(FakeGpuArray)
        return a.get() if isinstance(a, FakeGpuArray) else np.asarray(a)

    with monkeypatch.context() as m:
        m.setattr(backend, "is_gpu_array", lambda x: isinstance(x, FakeGpuArray))
        m.setattr(mx.nn.module, "check_device", lambda device: device)
        m.setattr(mx.nn.module, "to_device", to_device)
        yield
