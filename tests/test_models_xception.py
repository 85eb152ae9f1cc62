"""Xception and mini_xception: exact counts, options for the ablations, training-step mechanics.

Keras's names, weight shapes, layer order and every output shape at 299x299 are checked in
``test_keras_reference.py``; here: the paper's counts, the ablation switches, forward/backward on
small inputs, caches freed after backward, none kept in inference mode.
"""
import numpy as np
import pytest

import minixception as mx
from minixception.models import Xception, mini_xception


@pytest.fixture(scope="module")
def full():
    return Xception(rng=0)


def test_exact_parameter_counts(full):
    assert mx.count_params(full) == 22_855_952                       # the paper's Table 3
    assert mx.count_params(full, include_buffers=True) == 22_910_480  # + BN moving statistics (Keras)
    notop = Xception(include_top=False, rng=0)
    assert mx.count_params(notop, include_buffers=True) == 20_861_480
    assert "predictions/kernel" not in notop.state_dict()


def test_state_dict_keys_are_flat_keras_names(full):
    sd = full.state_dict()
    assert "block2_sepconv1/depthwise_kernel" in sd
    assert "block13_shortcut_bn/moving_variance" in sd
    assert "predictions/bias" in sd
    assert all(k.count("/") == 1 for k in sd)          # transparent blocks: "layer/weight" only
    assert sd["block14_sepconv2/pointwise_kernel"].shape == (1, 1, 1536, 2048)


def test_num_classes_and_notop_output(rng):
    m = Xception(num_classes=7, input_shape=(71, 71, 3), width=0.0625, middle_blocks=1, rng=0)
    x = rng.standard_normal((2, 71, 71, 3)).astype("float32")
    assert m(x).shape == (2, 7)
    m = Xception(include_top=False, input_shape=(71, 71, 3), width=0.0625, middle_blocks=1, rng=0)
    assert m(x).shape == (2, 3, 3, 128)                  # 71 -> 35 -> 33 -> 17 -> 9 -> 5 -> 3


def test_forward_backward_frees_caches_and_inference_keeps_none(rng):
    m = Xception(num_classes=5, input_shape=(71, 71, 3), width=0.0625, middle_blocks=2, rng=0)
    x = rng.standard_normal((2, 71, 71, 3)).astype("float32")
    y = m(x)
    assert any(l.holds_cache for l in m.modules())
    dx = m.backward(rng.standard_normal(y.shape).astype("float32"))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert all(not l.holds_cache for l in m.modules()), "backward must free every cache"
    assert all(np.abs(p.grad).sum() > 0 for p in m.parameters())
    m.eval()
    with mx.nn.inference_mode():
        y2 = m(x)
    assert all(not l.holds_cache for l in m.modules())
    assert y2.shape == (2, 5)
    with pytest.raises(RuntimeError, match="backward"):
        m.backward(np.ones_like(y2))


def test_residual_false_drops_every_shortcut(full):
    plain = Xception(residual=False, rng=0)
    assert not any(isinstance(l, mx.nn.Residual) for l in plain.modules())
    assert sum(isinstance(l, mx.nn.Residual) for l in full.modules()) == 12     # 4 conv + 8 identity
    shortcut = sum(int(np.prod(v.shape)) for k, v in full.state_dict().items() if "_shortcut" in k)
    assert mx.count_params(full, True) - mx.count_params(plain, True) == shortcut
    assert not any("_shortcut" in k for k in plain.state_dict())


def test_residual_is_used_in_the_forward(rng):
    """Same weights, with and without residual connections: different outputs."""
    kw = dict(num_classes=3, input_shape=(71, 71, 3), width=0.0625, middle_blocks=1)
    a, b = Xception(**kw, rng=0), Xception(**kw, residual=False, rng=0)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "_shortcut" not in k})
    x = rng.standard_normal((2, 71, 71, 3)).astype("float32")
    a.eval(); b.eval()
    assert not np.allclose(a(x), b(x))


@pytest.mark.parametrize("intermediate", ["relu", "elu"])
def test_intermediate_activation_option(intermediate, rng):
    kw = dict(num_classes=3, input_shape=(71, 71, 3), width=0.0625, middle_blocks=1)
    m = Xception(**kw, intermediate=intermediate, rng=0)
    seps = [l for l in m.modules() if isinstance(l, mx.nn.SeparableConv2D)]
    assert len(seps) == 34 - 7 * 3 and all(s.intermediate == intermediate for s in seps)
    base = Xception(**kw, rng=0)
    x = rng.standard_normal((2, 71, 71, 3)).astype("float32")
    m.eval(); base.eval()
    assert not np.allclose(m(x), base(x))             # same weights (same seed), another function
    with pytest.raises(ValueError, match="intermediate"):
        Xception(**kw, intermediate="tanh")


def test_middle_blocks_width_and_dropout():
    m = Xception(middle_blocks=2, width=0.5, dropout=0.5, rng=0)
    names = [n for n, _ in m.leaf_layers()]
    assert "block6_sepconv3" in names and "block7_sepconv3" not in names    # 2 middle blocks: 5, 6
    assert "block7_shortcut" in names and "block8_sepconv2" in names         # then exit block 7, final 8
    assert names[-3:] == ["avg_pool", "dropout", "predictions"]
    assert m.state_dict()["block4_sepconv2/pointwise_kernel"].shape == (1, 1, 364, 364)
    assert m.state_dict()["predictions/kernel"].shape == (1024, 1000)
    # dropout adds no weights
    assert set(Xception(middle_blocks=2, width=0.5, rng=0).state_dict()) == set(m.state_dict())


def test_small_input_stem_keeps_32x32(rng):
    m = Xception(num_classes=10, input_shape=(32, 32, 3), small_input=True, width=0.0625,
                 middle_blocks=1, include_top=False, rng=0)
    x = rng.standard_normal((1, 32, 32, 3)).astype("float32")
    assert m(x).shape == (1, 2, 2, 128)                  # 32 -> 16 -> 8 -> 4 -> 2
    full_small = Xception(num_classes=10, input_shape=(32, 32, 3), small_input=True, rng=0)
    # same layers as Keras's, only the stem strides/padding change (and the 10-way head)
    assert mx.count_params(full_small) == 22_855_952 - 2049000 + 2048 * 10 + 10


def test_mini_xception_keywords_shapes_and_training_step(rng):
    m = mini_xception(num_classes=10, width=0.5, middle_blocks=1, residual=True, intermediate=None,
                      dropout=0.2, rng=0, dtype="float32")
    x = rng.standard_normal((4, 32, 32, 3)).astype("float32")
    y = m(x)
    assert y.shape == (4, 10) and y.dtype == np.float32
    loss, dlogits = mx.losses.softmax_cross_entropy(y, np.arange(4) % 10)
    m.zero_grad()
    dx = m.backward(dlogits)
    assert dx.shape == x.shape
    assert all(not l.holds_cache for l in m.modules())
    names = [n for n, _ in m.leaf_layers()]
    assert names[:2] == ["block1_conv1", "block1_conv1_bn"]
    assert m.leaf_layers()[0][1].stride == 1            # stride-1 stem for 32x32 inputs
    assert "block2_shortcut" in names and names[-1] == "predictions"
    assert mx.count_params(mini_xception(width=1.0, rng=0)) > mx.count_params(m)


def test_mini_xception_float64_and_determinism(rng):
    a = mini_xception(width=0.25, middle_blocks=1, rng=3, dtype="float64")
    b = mini_xception(width=0.25, middle_blocks=1, rng=3, dtype="float64")
    assert all(p.data.dtype == np.float64 for p in a.parameters())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert mini_xception(width=0.25, middle_blocks=0, residual=False, rng=0)(
        rng.standard_normal((2, 32, 32, 3)).astype("float32")).shape == (2, 10)


def test_whole_mini_model_gradcheck(rng):
    """Sampled central differences through the whole network (float64, tiny width)."""
    m = mini_xception(num_classes=3, width=0.25, middle_blocks=1, rng=0, dtype="float64",
                      input_shape=(16, 16, 3))
    # 16x16 keeps >= 8 values per channel in the last batch norms (with 2 the gradients vanish
    # to rounding noise and relative errors mean nothing)
    x = rng.standard_normal((2, 16, 16, 3))
    # h = 1e-6 rather than the usual 1e-5: through 30 ReLUs and 4 max pools a step of 1e-5 on an
    # early weight moves some downstream ReLU/max-pool input across its kink (errors ~1e-2);
    # 1e-6 stays clear of them and float64 still leaves ~1e-9 of rounding error.
    errors = mx.gradcheck.check_layer(m, x, seed=1, samples=4, h=1e-6)
    assert max(errors.values()) < 1e-5, {k: v for k, v in errors.items() if v >= 1e-5}


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_shape"):
        Xception(input_shape=(299, 299))
    with pytest.raises(ValueError, match="middle_blocks"):
        Xception(middle_blocks=-1)
    with pytest.raises(ValueError, match="dropout"):
        Xception(dropout=1.0)
    with pytest.raises(ValueError, match="num_classes=1000"):
        Xception(num_classes=10, weights="imagenet")
    m = mini_xception(width=0.25, middle_blocks=0, rng=0)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        m(np.zeros((2, 3, 32, 32), dtype="float32"))


@pytest.mark.gpu
def test_mini_xception_on_gpu_matches_cpu(rng):
    """The same model on CuPy: logits, input gradient and parameter gradients as on NumPy."""
    cpu = mini_xception(width=0.5, middle_blocks=1, rng=0)
    gpu = mini_xception(width=0.5, middle_blocks=1, rng=0).to("gpu")
    x = rng.standard_normal((4, 32, 32, 3)).astype("float32")
    y_cpu, y_gpu = cpu(x), gpu(mx.to_device(x, "gpu"))
    np.testing.assert_allclose(mx.to_numpy(y_gpu), y_cpu, rtol=1e-3, atol=1e-4)
    dy = rng.standard_normal(y_cpu.shape).astype("float32")
    dx_cpu, dx_gpu = cpu.backward(dy), gpu.backward(mx.to_device(dy, "gpu"))
    np.testing.assert_allclose(mx.to_numpy(dx_gpu), dx_cpu, rtol=1e-3, atol=1e-4)
    for (k, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters()):
        scale = max(1e-6, float(np.abs(p.grad).max()))
        assert float(np.abs(mx.to_numpy(q.grad) - p.grad).max()) / scale < 1e-3, k
    assert "Total params" in mx.summary(gpu, (32, 32, 3), file=__import__("io").StringIO())
