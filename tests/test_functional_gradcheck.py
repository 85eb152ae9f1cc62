"""Every functional op and every layer, proven by central differences (float64).

Conventions: h = 1e-5, a random upstream gradient dy, loss sum(y * dy), relative
error max|a-n| / max(1e-8, |a|+|n|): below 1e-7 for smooth ops, below 1e-5 for ReLU /
max pool with inputs kept off their kinks, sampled coordinates for whole residual blocks.

The table of op cases (``OP_CASES``, in helpers.py) also drives the float32-vs-float64
comparison, the dtype and "dy is never written into" checks here, and the CuPy
tests in test_gpu_ops.py / test_cupy_api.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import minixception as mx
from minixception import functional as F
from minixception.gradcheck import check_function, check_layer, rel_error

from helpers import (IDS, INPUTS, KINK, OP_CASES, REDUCTION, case_inputs, layer_cases, normal, off_kinks,
                     randomise_bn, run_case, xception_entry_block, xception_middle_block)


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
@pytest.mark.parametrize("lid,factory,shape,tol,kind", layer_cases(), ids=[l[0] for l in layer_cases()])
def test_gradcheck_layer(lid, factory, shape, tol, kind):
    layer = factory()
    x = INPUTS[kind](np.random.default_rng(4), shape)
    errors = check_layer(layer, x, seed=2)
    assert set(errors) == {"input"} | {n for n, _ in layer.named_parameters()}
    assert max(errors.values()) < tol, f"{lid}: {errors}"


@pytest.mark.parametrize("lid,factory,shape,tol,kind", layer_cases(), ids=[l[0] for l in layer_cases()])
def test_layer_never_writes_dy(lid, factory, shape, tol, kind):
    layer = factory()
    x = INPUTS[kind](np.random.default_rng(4), shape)
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
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block", ["entry", "middle"])
def test_gradcheck_xception_block(block, training):
    if block == "entry":
        model, x = xception_entry_block(), np.random.default_rng(3).standard_normal((2, 6, 6, 4))
    else:
        model, x = xception_middle_block(), np.random.default_rng(3).standard_normal((2, 5, 5, 6))
    randomise_bn(model)
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
        randomise_bn(model)
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
