"""Framework-free oracles: identities that must hold between the ops, and the padding rules.

* depthwise conv == conv2d with groups=C == a block-diagonal regular conv;
* separable conv without intermediate activation == a regular conv with kernel
  K[i, j, c, o] = D[i, j, c] * P[c, o]  (forward and, by the chain rule, gradients);
* grouped conv == concatenation of per-group regular convs;
* conv2d == a naive loop over output pixels (the definition itself);
* TensorFlow "same" padding amounts, and Keras's average pool excluding padding.
"""
import numpy as np
import pytest

from minixception import functional as F
from minixception.functional.padding import conv_geometry, pad_amounts

TOL = dict(rtol=1e-10, atol=1e-12)


def naive_conv2d(x, k, stride, pads):
    """The definition: y[n,i,j,o] = sum_{di,dj,c} xpad[n, i*s+di, j*s+dj, c] * k[di,dj,c,o]."""
    (t, b), (l, r) = pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    kh, kw, _, f = k.shape
    oh = (xp.shape[1] - kh) // stride + 1
    ow = (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            y[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return y


@pytest.mark.parametrize("hw,stride,padding", [((6, 7), 2, "same"), ((5, 5), 1, "same"),
                                               ((7, 6), 2, "valid"), ((5, 6), 1, 1),
                                               ((74, 5), 2, "same")])
def test_conv2d_equals_naive_definition(rng, hw, stride, padding):
    x = rng.standard_normal((2, *hw, 3))
    k = rng.standard_normal((3, 3, 3, 4))
    y, _ = F.conv2d_forward(x, k, None, stride, padding)
    pads, _ = conv_geometry(hw[0], hw[1], 3, stride, padding)
    np.testing.assert_allclose(y, naive_conv2d(x, k, stride, pads), **TOL)


def test_conv2d_same_stride2_even_pads_bottom_right(rng):
    """TF same, 3x3/2 on 6: 0 rows before, 1 after -> y[0,0] sees x[0:3, 0:3] (not x[-1:2])."""
    x = rng.standard_normal((1, 6, 6, 2))
    k = rng.standard_normal((3, 3, 2, 1))
    y, _ = F.conv2d_forward(x, k, None, 2, "same")
    assert y.shape == (1, 3, 3, 1)
    np.testing.assert_allclose(y[0, 0, 0, 0], np.sum(x[0, 0:3, 0:3, :] * k[..., 0]), **TOL)
    # the last output sees rows 4, 5 and one row of zero padding
    np.testing.assert_allclose(y[0, 2, 2, 0], np.sum(x[0, 4:6, 4:6, :] * k[0:2, 0:2, :, 0]), **TOL)


@pytest.mark.parametrize("stride,padding,k", [(1, "same", 3), (2, "same", 3), (2, "valid", 5), (1, 2, 5)])
def test_depthwise_equals_grouped_conv(rng, stride, padding, k):
    x = rng.standard_normal((2, 7, 6, 5))
    d = rng.standard_normal((k, k, 5, 1))
    dy_shape = F.depthwise_conv2d_forward(x, d, stride, padding)[0].shape
    dy = rng.standard_normal(dy_shape)
    y1, c1 = F.depthwise_conv2d_forward(x, d, stride, padding)
    kg = d.transpose(0, 1, 3, 2)                          # (k, k, 1, C): groups=C layout
    y2, c2 = F.conv2d_forward(x, kg, None, stride, padding, groups=5)
    np.testing.assert_allclose(y1, y2, **TOL)
    dx1, dd = F.depthwise_conv2d_backward(dy, c1)
    dx2, dkg, _ = F.conv2d_backward(dy, c2)
    np.testing.assert_allclose(dx1, dx2, **TOL)
    np.testing.assert_allclose(dd, dkg.transpose(0, 1, 3, 2), **TOL)


@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, "same"), (1, "valid")])
def test_depthwise_equals_block_diagonal_full_conv(rng, stride, padding):
    c = 4
    x = rng.standard_normal((2, 6, 6, c))
    d = rng.standard_normal((3, 3, c, 1))
    full = np.zeros((3, 3, c, c))
    for ch in range(c):
        full[:, :, ch, ch] = d[:, :, ch, 0]               # zero off the diagonal: channels never mix
    y1, c1 = F.depthwise_conv2d_forward(x, d, stride, padding)
    y2, c2 = F.conv2d_forward(x, full, None, stride, padding)
    np.testing.assert_allclose(y1, y2, **TOL)
    dy = rng.standard_normal(y1.shape)
    dx1, dd = F.depthwise_conv2d_backward(dy, c1)
    dx2, dfull, _ = F.conv2d_backward(dy, c2)
    np.testing.assert_allclose(dx1, dx2, **TOL)
    np.testing.assert_allclose(dd[:, :, :, 0], np.einsum("ijcc->ijc", dfull), **TOL)


@pytest.mark.parametrize("stride,padding,hw", [(1, "same", (5, 6)), (2, "same", (6, 7)), (1, "valid", (5, 5))])
def test_separable_equals_full_conv_with_product_kernel(rng, stride, padding, hw):
    c, f = 3, 5
    x = rng.standard_normal((2, *hw, c))
    d = rng.standard_normal((3, 3, c, 1))
    p = rng.standard_normal((1, 1, c, f))
    k = d[:, :, :, 0, None] * p[0, 0][None, None]         # K[i,j,c,o] = D[i,j,c] * P[c,o]
    y1, c1 = F.separable_conv2d_forward(x, d, p, stride, padding, intermediate=None)
    y2, c2 = F.conv2d_forward(x, k, None, stride, padding)
    np.testing.assert_allclose(y1, y2, **TOL)
    dy = rng.standard_normal(y1.shape)
    dx1, dd, dp = F.separable_conv2d_backward(dy, c1)
    dx2, dk, _ = F.conv2d_backward(dy, c2)
    np.testing.assert_allclose(dx1, dx2, **TOL)
    # chain rule through K = D * P
    np.testing.assert_allclose(dd[:, :, :, 0], np.einsum("ijco,co->ijc", dk, p[0, 0]), **TOL)
    np.testing.assert_allclose(dp[0, 0], np.einsum("ijco,ijc->co", dk, d[:, :, :, 0]), **TOL)


def test_separable_with_activation_is_not_a_single_conv(rng):
    """Guard for the identity above: with an intermediate ReLU it must fail (the test can fail)."""
    x = rng.standard_normal((1, 5, 5, 3))
    d, p = rng.standard_normal((3, 3, 3, 1)), rng.standard_normal((1, 1, 3, 4))
    y1, _ = F.separable_conv2d_forward(x, d, p, intermediate="relu")
    y2, _ = F.conv2d_forward(x, d[:, :, :, 0, None] * p[0, 0][None, None], None, 1, "same")
    assert not np.allclose(y1, y2)


@pytest.mark.parametrize("groups,stride,padding", [(2, 1, "same"), (3, 2, "same"), (6, 2, "valid")])
def test_grouped_conv_equals_concat_of_per_group_convs(rng, groups, stride, padding):
    c, f = 6, 12
    cg, fg = c // groups, f // groups
    x = rng.standard_normal((2, 7, 6, c))
    k = rng.standard_normal((3, 3, cg, f))
    b = rng.standard_normal(f)
    y, cache = F.conv2d_forward(x, k, b, stride, padding, groups)
    dy = rng.standard_normal(y.shape)
    dx, dk, db = F.conv2d_backward(dy, cache)
    ys, dxs, dks, dbs = [], [], [], []
    for g in range(groups):
        xs, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
        yg, cg_cache = F.conv2d_forward(np.ascontiguousarray(x[..., xs]), np.ascontiguousarray(k[..., fs]),
                                        b[fs], stride, padding)
        dxg, dkg, dbg = F.conv2d_backward(np.ascontiguousarray(dy[..., fs]), cg_cache)
        ys.append(yg), dxs.append(dxg), dks.append(dkg), dbs.append(dbg)
    np.testing.assert_allclose(y, np.concatenate(ys, -1), **TOL)
    np.testing.assert_allclose(dx, np.concatenate(dxs, -1), **TOL)
    np.testing.assert_allclose(dk, np.concatenate(dks, -1), **TOL)
    np.testing.assert_allclose(db, np.concatenate(dbs), **TOL)


# ---------------------------------------------------------------- TF "same" padding
@pytest.mark.parametrize("n,expected", [(74, (0, 1)), (147, (1, 1)), (37, (1, 1)), (19, (1, 1))])
def test_xception_pool_padding_amounts(n, expected):
    """The 3x3/2 max pools of Xception at 299: 147 -> 74 -> 37 -> 19 -> 10."""
    assert pad_amounts(n, 3, 2, "same") == expected
    pads, (oh, ow) = conv_geometry(n, n, 3, 2, "same")
    assert pads == (expected, expected)
    assert oh == ow == -(-n // 2)


def test_same_padding_general_rule():
    for n in range(1, 40):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                before, after = pad_amounts(n, k, s, "same")
                total = max((-(-n // s) - 1) * s + k - n, 0)
                assert (before, after) == (total // 2, total - total // 2)
                _, (oh, _) = conv_geometry(n, n, k, s, "same")
                assert oh == -(-n // s)                         # ceil(n / s)
    assert pad_amounts(10, 3, 1, "valid") == (0, 0)
    assert pad_amounts(10, 3, 1, 2) == (2, 2)


def test_stem_valid_sizes():
    """block1_conv1: 3x3/2 valid 299 -> 149; block1_conv2: 3x3 valid -> 147."""
    assert conv_geometry(299, 299, 3, 2, "valid")[1] == (149, 149)
    assert conv_geometry(149, 149, 3, 1, "valid")[1] == (147, 147)


def test_pool_on_74_pads_after_only(rng):
    """Average pool 3x3/2 same on 74: the first window is rows 0..2 (no padding before),
    the last is rows 72, 73 plus one padded row (excluded from the mean)."""
    x = rng.standard_normal((1, 74, 1, 1))
    y, _ = F.avgpool2d_forward(x, (3, 1), (2, 1), "same")
    assert y.shape == (1, 37, 1, 1)
    np.testing.assert_allclose(y[0, 0, 0, 0], x[0, 0:3, 0, 0].mean(), **TOL)
    np.testing.assert_allclose(y[0, 36, 0, 0], x[0, 72:74, 0, 0].mean(), **TOL)
    ym, _ = F.maxpool2d_forward(-np.abs(x) - 1, (3, 1), (2, 1), "same")
    np.testing.assert_allclose(ym[0, 36, 0, 0], (-np.abs(x) - 1)[0, 72:74, 0, 0].max(), **TOL)


def test_keras_avgpool_excludes_padding(rng):
    x = rng.standard_normal((2, 5, 6, 3))
    y, _ = F.avgpool2d_forward(x, 3, 1, "same")
    np.testing.assert_allclose(y[:, 0, 0], x[:, 0:2, 0:2].mean(axis=(1, 2)), **TOL)   # corner: mean of 4
    np.testing.assert_allclose(y[:, 0, 2], x[:, 0:2, 1:4].mean(axis=(1, 2)), **TOL)   # edge: mean of 6
    np.testing.assert_allclose(y[:, 2, 2], x[:, 1:4, 1:4].mean(axis=(1, 2)), **TOL)   # inside: mean of 9
    ones, _ = F.avgpool2d_forward(np.ones((1, 5, 6, 2)), 3, 2, "same")
    np.testing.assert_allclose(ones, 1.0, **TOL)       # padding counted would give 4/9 in the corner


def test_maxpool_padding_never_wins():
    x = -np.arange(1.0, 1 + 2 * 6 * 6 * 2).reshape(2, 6, 6, 2)     # all negative
    y, _ = F.maxpool2d_forward(x, 3, 2, "same")
    assert np.all(y < 0)                                  # zero padding would give 0 at the border
    np.testing.assert_allclose(y[:, -1, -1], x[:, 4:6, 4:6].max(axis=(1, 2)), **TOL)


def test_maxpool_ties_route_gradient_once():
    x = np.zeros((1, 3, 3, 1))
    y, cache = F.maxpool2d_forward(x, 3, 1, "valid")
    dx = F.maxpool2d_backward(np.ones_like(y), cache)
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0     # the first maximum (row-major) wins
