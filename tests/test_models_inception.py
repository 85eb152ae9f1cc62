"""The Inception family of Figures 1-4: shapes, counts, and the identities that link them.

* Figure 2 == Figure 3: the simplified module (towers of 1x1 -> 3x3) and its reformulation (one
  big 1x1, a grouped 3x3) compute the same function -- outputs, input gradients and (mapped)
  weight gradients -- once the weights are laid out by ``simplified_to_reformulated``.
* Figure 4: the extreme module is the reformulation with one segment per channel.
* Parameter counts of the extreme module vs the depthwise separable convolution, and along the
  segment spectrum 1..C.
"""
import io

import numpy as np
import pytest

import minixception as mx
from minixception.models import inception as inc


def _x(rng, shape):
    return rng.standard_normal(shape)


def _tower_grads_as_reformulated(simp):
    """The simplified module's parameter gradients laid out like the reformulated module's."""
    grads = {}
    for src, dst in (("1x1", "pointwise"), ("3x3", "grouped3x3")):
        for sub in ("conv/kernel", "bn/gamma", "bn/beta"):
            parts = [dict(simp.named_parameters())[f"tower{t}_{src}/{sub}"].grad for t in range(simp.towers)]
            grads[f"{dst}/{sub}"] = np.concatenate(parts, axis=-1 if sub == "conv/kernel" else 0)
    return grads


@pytest.mark.parametrize("towers", [1, 3, 4])
def test_simplified_equals_reformulation_forward_and_backward(rng, towers):
    simp = inc.SimplifiedInception(5, 3, 4, towers=towers, rng=1, dtype="float64")
    ref = inc.ReformulatedInception(5, 3 * towers, 4 * towers, segments=towers, rng=2, dtype="float64")
    x = _x(rng, (2, 6, 7, 5))
    with pytest.raises(AssertionError):      # different weights: different functions (the test can fail)
        np.testing.assert_allclose(simp(x), ref(x), atol=1e-6)
    simp.clear_caches(); ref.clear_caches()
    inc.simplified_to_reformulated(simp, ref)

    y1, y2 = simp(x), ref(x)                 # training mode: batch statistics per channel
    assert y1.shape == y2.shape == (2, 6, 7, 4 * towers)
    np.testing.assert_allclose(y1, y2, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y1.shape)
    simp.zero_grad(); ref.zero_grad()
    np.testing.assert_allclose(simp.backward(dy), ref.backward(dy), rtol=1e-10, atol=1e-12)
    ref_grads = dict(ref.named_parameters())
    for k, g in _tower_grads_as_reformulated(simp).items():
        np.testing.assert_allclose(ref_grads[k].grad, g, rtol=1e-10, atol=1e-12, err_msg=k)

    # the moving statistics were updated identically; eval mode agrees too
    sd1 = inc.simplified_to_reformulated(simp)
    sd2 = ref.state_dict()
    for k in sd1:
        np.testing.assert_allclose(sd1[k], sd2[k], rtol=1e-12, err_msg=k)
    simp.eval(); ref.eval()
    with mx.nn.inference_mode():
        np.testing.assert_allclose(simp(x), ref(x), rtol=1e-12, atol=1e-12)


def test_extreme_module_is_reformulation_with_one_segment_per_channel(rng):
    c_in, c = 3, 6
    ext = inc.ExtremeInception(c_in, c, rng=1, dtype="float64")
    ref = inc.ReformulatedInception(c_in, c, c, segments=c, rng=2, dtype="float64")
    sd = ext.state_dict()
    ref.load_state_dict({
        "pointwise/conv/kernel": sd["pointwise/pointwise_kernel"],
        "grouped3x3/conv/kernel": sd["depthwise/depthwise_kernel"].transpose(0, 1, 3, 2),  # (3,3,C,1)->(3,3,1,C)
        **{f"pointwise/bn/{w}": sd[f"pointwise_bn/{w}"] for w in ("gamma", "beta", "moving_mean", "moving_variance")},
        **{f"grouped3x3/bn/{w}": sd[f"depthwise_bn/{w}"] for w in ("gamma", "beta", "moving_mean", "moving_variance")},
    })
    x = _x(rng, (2, 5, 5, c_in))
    np.testing.assert_allclose(ext(x), ref(x), rtol=1e-12, atol=1e-12)


def test_extreme_vs_separable_parameter_counts():
    c_in, c = 16, 32
    ext = inc.ExtremeInception(c_in, c, batchnorm=False, rng=0)
    sep = inc.DepthwiseSeparable(c_in, c, batchnorm=False, relu=False, rng=0)
    assert mx.count_params(ext) == c_in * c + 9 * c == inc.extreme_params(c_in, c) == 800
    assert mx.count_params(sep) == 9 * c_in + c_in * c == inc.separable_params(c_in, c) == 656
    # the same two operations in the other order: only the 3x3 part differs (it sees C or C_in channels)
    assert mx.count_params(ext) - mx.count_params(sep) == 9 * (c - c_in)
    # with BN: the extreme module normalises twice (after the 1x1 and after the 3x3)
    assert mx.count_params(inc.ExtremeInception(c_in, c, rng=0)) == 800 + 2 * (2 * c)
    assert mx.count_params(inc.DepthwiseSeparable(c_in, c, rng=0)) == 656 + 2 * c


def test_extreme_and_separable_differ_in_order_and_nonlinearity():
    ext = inc.ExtremeInception(4, 8, batchnorm=False, rng=0)
    sep = inc.DepthwiseSeparable(4, 8, batchnorm=False, relu=False, rng=0)
    assert [type(m).__name__ for m in ext] == ["PointwiseConv2D", "ReLU", "DepthwiseConv2D", "ReLU"]
    assert [type(m).__name__ for m in sep] == ["SeparableConv2D"]
    assert sep[0].intermediate is None            # no nonlinearity between depthwise and pointwise


def test_segment_spectrum_counts_match_the_modules():
    c_in, c, h, w = 8, 12, 5, 5
    rows = inc.segment_spectrum(c_in, c, h, w)
    assert [r["segments"] for r in rows] == [1, 2, 3, 4, 6, 12]
    assert rows[0]["kind"] == "regular conv" and rows[-1]["kind"] == "extreme / depthwise"
    for r in rows:
        m = inc.ReformulatedInception(c_in, c, c, segments=r["segments"], batchnorm=False, rng=0)
        assert mx.count_params(m) == r["params"]
        assert r["flops"] == h * w * r["params"]
    params = [r["params"] for r in rows]
    assert params == sorted(params, reverse=True)
    assert rows[0]["params"] == c_in * c + 9 * c * c          # 1 segment: a full 3x3 conv
    assert rows[-1]["params"] == inc.extreme_params(c_in, c)  # C segments: the extreme module
    with pytest.raises(ValueError, match="divide"):
        inc.segment_params(c_in, c, 5)


def test_segment_flops_match_the_summary():
    m = inc.ReformulatedInception(8, 12, 12, segments=4, batchnorm=False, rng=0)
    text = mx.summary(m, (5, 5, 8), file=io.StringIO())
    total = int(text.split("Mult-adds per image: ")[1].split()[0].replace(",", ""))
    assert total == inc.segment_flops(8, 12, 4, 5, 5)


def test_inception_v3_module_shapes_and_counts(rng):
    m = inc.InceptionV3Module(192, pool_features=32, rng=0)
    x = rng.standard_normal((1, 35, 35, 192)).astype("float32")
    y = m(x)
    assert y.shape == (1, 35, 35, 256) and m.out_channels == 256
    conv_weights = (192 * 64) + (192 * 48 + 25 * 48 * 64) + (192 * 64 + 9 * 64 * 96 + 9 * 96 * 96) + 192 * 32
    bn = 2 * (64 + 48 + 64 + 64 + 96 + 96 + 32)
    assert mx.count_params(m) == conv_weights + bn
    keys = set(m.state_dict())
    for k in ("branch1x1/conv/kernel", "branch5x5_2/conv/kernel", "branch3x3dbl_3/bn/gamma",
              "branch_pool/conv/kernel"):
        assert k in keys
    assert m.state_dict()["branch5x5_2/conv/kernel"].shape == (5, 5, 48, 64)
    dx = m.backward(rng.standard_normal(y.shape).astype("float32"))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert inc.InceptionV3Module(192, pool_features=64, rng=0).out_channels == 288


@pytest.mark.parametrize("build", [
    lambda: inc.SimplifiedInception(3, 2, 2, towers=2, rng=0, dtype="float64"),
    lambda: inc.ReformulatedInception(3, 4, 4, segments=2, rng=0, dtype="float64"),
    lambda: inc.ExtremeInception(3, 4, rng=0, dtype="float64"),
])
def test_modules_gradcheck(rng, build):
    m = build()
    x = rng.standard_normal((2, 4, 4, 3))
    errors = mx.gradcheck.check_layer(m, x, seed=0, samples=12)
    assert max(errors.values()) < 1e-5, errors


def test_bad_arguments():
    with pytest.raises(ValueError, match="segments"):
        inc.ReformulatedInception(4, 6, 6, segments=4)
    with pytest.raises(ValueError, match="towers"):
        inc.SimplifiedInception(4, 2, 2, towers=0)
