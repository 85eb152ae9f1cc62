"""Every functional op and every layer, proven by central differences (float64).

Conventions (DESIGN.md, "Testing conventions"): h = 1e-5, a random upstream
gradient dy, loss sum(y * dy), relative error max|a-n| / max(1e-8, |a|+|n|):
below 1e-7 for smooth ops, below 1e-5 for ReLU / max pool with inputs kept off
their kinks, sampled coordinates for whole residual blocks.

The same table of op cases (``OP_CASES``) also drives the float32-vs-float64
comparison, the dtype and "dy is never written into" checks here, and the CuPy
tests in test_gpu_ops.py / test_cupy_api.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import minixception as mx
from minixception import functional as F
from minixception.backend import get_array_module
from minixception.gradcheck import check_function, check_layer, rel_error

SMOOTH = 1e-7     # DESIGN.md threshold for smooth single ops
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


# ---------------------------------------------------------------- functional tests
@pytest.mark.parametrize("case", OP_CASES, ids=IDS)
def test_gradcheck_op(case):
    fwd, bwd, inputs = case.make(np.random.default_rng(0))
    errors = check_function(fwd, bwd, inputs, seed=1)
    assert len(errors) == len(inputs)
    assert max(errors) < case.tol, f"{case.name}: relative errors {errors}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", OP_CASES, ids=IDS)
def test_op_keeps_dtype_and_never_writes_dy(case, dtype):
    inputs = case_inputs(case, dtype)
    y, grads, _ = run_case(case, inputs)          # run_case asserts dy was not written into
    assert y.dtype == np.dtype(dtype), f"{case.name}: output dtype {y.dtype}"
    for g, a in zip(grads, inputs):
        assert g.dtype == np.dtype(dtype), f"{case.name}: gradient dtype {g.dtype}"
        assert g.shape == a.shape


@pytest.mark.parametrize("case", [c for c in OP_CASES if c.f32], ids=[c.name for c in OP_CASES if c.f32])
def test_float32_matches_float64(case):
    y64, g64, _ = run_case(case, case_inputs(case, "float64"))
    y32, g32, _ = run_case(case, case_inputs(case, "float32"))
    for a, b in zip([y32, *g32], [y64, *g64]):
        assert rel_error(a, b) < case.f32, case.name


def test_dy_unchanged_by_backward_in_place_candidates(rng):
    """The ops whose backward could be tempted to scale dy in place: check dy bit for bit."""
    x = normal(rng, 2, 4, 4, 3)
    for fwd, bwd in [(F.relu_forward, F.relu_backward), (F.elu_forward, F.elu_backward),
                     (lambda x: F.dropout_forward(x, 0.5, np.random.default_rng(0)), F.dropout_backward),
                     (lambda x: F.dropout_forward(x, 0.5, None, training=False), F.dropout_backward),
                     (lambda x: F.avgpool2d_forward(x, 3, 1, "same"), F.avgpool2d_backward)]:
        y, cache = fwd(x)
        dy = normal(rng, *y.shape)
        before = dy.copy()
        dx = bwd(dy, cache)
        np.testing.assert_array_equal(dy, before)
        assert not np.shares_memory(dx, dy), "a gradient aliasing dy lets a later in-place add corrupt it"


def test_dropout_mask_semantics(rng):
    x = normal(rng, 4, 8, 8, 16)
    y, mask = F.dropout_forward(x, 0.25, np.random.default_rng(5))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-12)
    assert abs(1 - kept.mean() - 0.25) < 0.03
    y2, _ = F.dropout_forward(x, 0.25, np.random.default_rng(5))
    np.testing.assert_array_equal(y, y2)                  # same seed, same mask
    dy = normal(rng, *x.shape)
    np.testing.assert_allclose(F.dropout_backward(dy, mask), dy * kept / 0.75, rtol=1e-12)
    ye, _ = F.dropout_forward(x, 0.25, np.random.default_rng(5), training=False)
    np.testing.assert_array_equal(ye, x)                  # eval: the identity


def test_softmax_ce_extreme_logits_finite():
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]])
    for dtype in ("float32", "float64"):
        loss, dz = F.softmax_cross_entropy(z.astype(dtype), np.array([0, 2]))
        assert np.isfinite(loss) and np.all(np.isfinite(dz))
        # row 0: label wins by 1000 -> ~0; row 1: label 999 vs 1000 -> log(1 + e) ~ 1.3133
        expected = (0.0 + np.log1p(np.e)) / 2
        assert abs(float(loss) - expected) < 1e-4
        assert loss.dtype == np.dtype(dtype) and dz.dtype == np.dtype(dtype)
    loss, _ = F.softmax_cross_entropy(np.array([[1000.0, -1000.0]]), np.array([1]))
    assert np.isfinite(loss) and abs(float(loss) - 2000.0) < 1e-9


def test_softmax_ce_value_against_direct_formula(rng):
    z = normal(rng, 6, 5)
    labels = rng.integers(0, 5, 6)
    loss, dz = F.softmax_cross_entropy(z, labels)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert abs(float(loss) + np.mean(np.log(p[np.arange(6), labels]))) < 1e-12
    onehot = np.eye(5)[labels]
    np.testing.assert_allclose(dz, (p - onehot) / 6, atol=1e-14)


# ---------------------------------------------------------------- layer gradient checks
def _layers():
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
        ("BatchNorm2D-train", lambda: _bn_layer(True), (2, 3, 3, 4), SMOOTH, "normal"),
        ("BatchNorm2D-eval", lambda: _bn_layer(False), (2, 3, 3, 4), SMOOTH, "normal"),
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


def _bn_layer(training):
    bn = mx.nn.BatchNorm2D(4, dtype="float64")
    r = np.random.default_rng(9)
    bn.gamma.data[:] = r.uniform(0.5, 1.5, 4)
    bn.beta.data[:] = r.standard_normal(4)
    bn.moving_mean[:] = r.standard_normal(4)
    bn.moving_variance[:] = r.uniform(0.5, 2.0, 4)
    return bn.train(training)


_INPUTS = {"normal": lambda r, s: r.standard_normal(s), "off_kinks": off_kinks, "distinct": distinct}


@pytest.mark.parametrize("lid,factory,shape,tol,kind", _layers(), ids=[l[0] for l in _layers()])
def test_gradcheck_layer(lid, factory, shape, tol, kind):
    layer = factory()
    x = _INPUTS[kind](np.random.default_rng(4), shape)
    errors = check_layer(layer, x, seed=2)
    assert set(errors) == {"input"} | {n for n, _ in layer.named_parameters()}
    assert max(errors.values()) < tol, f"{lid}: {errors}"


@pytest.mark.parametrize("lid,factory,shape,tol,kind", _layers(), ids=[l[0] for l in _layers()])
def test_layer_never_writes_dy(lid, factory, shape, tol, kind):
    layer = factory()
    x = _INPUTS[kind](np.random.default_rng(4), shape)
    y = layer(x)
    dy = np.random.default_rng(5).standard_normal(y.shape)
    before = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, before)
    assert dx.shape == x.shape and dx.dtype == x.dtype


def test_dropout_layer_train_backward_is_the_mask(rng):
    layer = mx.nn.Dropout(0.3, rng=11)
    x = off_kinks(rng, (2, 4, 4, 5))
    y = layer(x)
    mask = y / x                                   # 0 or 1/0.7 per element
    assert set(np.round(np.unique(mask), 12)) <= {0.0, round(1 / 0.7, 12)}
    dy = normal(rng, *x.shape)
    np.testing.assert_allclose(layer.backward(dy), dy * mask, rtol=1e-12)


# ---------------------------------------------------------------- whole Xception blocks
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


def _randomise_bn(model, seed=1):
    r = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data[:] = r.uniform(0.5, 1.5, p.shape)
        elif name.endswith("beta"):
            p.data[:] = r.standard_normal(p.shape) * 0.5


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block", ["entry", "middle"])
def test_gradcheck_xception_block(block, training):
    if block == "entry":
        model, x = xception_entry_block(), np.random.default_rng(3).standard_normal((2, 6, 6, 4))
    else:
        model, x = xception_middle_block(), np.random.default_rng(3).standard_normal((2, 5, 5, 6))
    _randomise_bn(model)
    model.train(training)
    errors = check_layer(model, x, seed=5, samples=25)
    assert len(errors) == 1 + len(model.parameters())
    assert max(errors.values()) < KINK, errors


def test_block_float32_matches_float64():
    """A whole entry block in float32 against the float64 analytic result (reductions: 1e-3)."""
    x = np.random.default_rng(3).standard_normal((2, 6, 6, 4))
    dy = None
    results = {}
    for dtype in ("float64", "float32"):
        model = xception_entry_block(dtype="float64")
        _randomise_bn(model)
        model.to(dtype=dtype)
        y = model(x.astype(dtype))
        if dy is None:
            dy = np.random.default_rng(6).standard_normal(y.shape)
        dx = model.backward(dy.astype(dtype))
        results[dtype] = [y, dx] + [p.grad for p in model.parameters()]
        assert all(a.dtype == np.dtype(dtype) for a in results[dtype])
    for a, b in zip(results["float32"], results["float64"]):
        assert rel_error(a, b) < REDUCTION


def test_maxpool_window_of_more_than_256_taps():
    """A 17x17 window has 289 taps: the winner map must number them all (uint8 stops at 255)."""
    r = np.random.default_rng(0)
    x = r.uniform(0, 1, (1, 17, 18, 2))
    x[0, 16, 8, :] = [5.0, 6.0]          # the maximum of both windows, at taps 16*17+8 and 16*17+7
    y, cache = F.maxpool2d_forward(x, pool_size=17, stride=1, padding="valid")
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y[0, 0], [[5.0, 6.0], [5.0, 6.0]])
    dy = r.standard_normal(y.shape)
    dx = F.maxpool2d_backward(dy, cache)
    expected = np.zeros_like(x)
    expected[0, 16, 8, :] = dy[0, 0, 0] + dy[0, 0, 1]      # both windows' maxima sit on the same input
    np.testing.assert_array_equal(dx, expected)
