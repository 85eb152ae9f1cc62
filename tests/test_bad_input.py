"""Bad input fails early, with the right exception type and a message naming expected vs got."""
import numpy as np
import pytest

import minixception as mx
from minixception import functional as F
from minixception.backend import gpu_available


def nhwc_layers(c=3, dtype="float32"):
    """Layers whose input must be NHWC with ``c`` channels."""
    return [mx.nn.Conv2D(c, 4, 3, rng=0, dtype=dtype), mx.nn.DepthwiseConv2D(c, rng=0, dtype=dtype),
            mx.nn.PointwiseConv2D(c, 4, rng=0, dtype=dtype), mx.nn.SeparableConv2D(c, 4, rng=0, dtype=dtype),
            mx.nn.BatchNorm2D(c, dtype=dtype)]


def any_nhwc_layers():
    """Layers that take any channel count but need a 4-D float array."""
    return [mx.nn.MaxPool2D(), mx.nn.AvgPool2D(), mx.nn.GlobalAvgPool2D()]


LAYER_IDS = ["Conv2D", "DepthwiseConv2D", "PointwiseConv2D", "SeparableConv2D", "BatchNorm2D"]


# ---------------------------------------------------------------- shapes and layouts
@pytest.mark.parametrize("i", range(5), ids=LAYER_IDS)
def test_wrong_rank(i):
    layer = nhwc_layers()[i]
    with pytest.raises(ValueError, match=r"4-D.*\(8, 8, 3\)"):
        layer(np.zeros((8, 8, 3), "float32"))


@pytest.mark.parametrize("layer", any_nhwc_layers(), ids=["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"])
def test_wrong_rank_pools(layer):
    with pytest.raises(ValueError, match="4-D"):
        layer(np.zeros((8, 8, 3), "float32"))


def test_dense_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 6\).*\(2, 5\)"):
        mx.nn.Dense(6, 3)(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        mx.nn.Dense(6, 3)(np.zeros((2, 1, 1, 6), "float32"))


@pytest.mark.parametrize("i", range(5), ids=LAYER_IDS)
def test_wrong_channel_count(i):
    layer = nhwc_layers()[i]
    with pytest.raises(ValueError, match=r"3 channels.*\(2, 8, 8, 5\)") as err:
        layer(np.zeros((2, 8, 8, 5), "float32"))
    assert "NCHW" not in str(err.value)


@pytest.mark.parametrize("i", range(5), ids=LAYER_IDS)
def test_nchw_passed_for_nhwc(i):
    layer = nhwc_layers()[i]
    with pytest.raises(ValueError, match="NCHW") as err:
        layer(np.zeros((2, 3, 8, 8), "float32"))
    assert "(2, 3, 8, 8)" in str(err.value)


def test_window_larger_than_input():
    with pytest.raises(ValueError, match="does not fit"):
        mx.nn.MaxPool2D(3, 2, "valid")(np.zeros((1, 2, 2, 1), "float32"))
    with pytest.raises(ValueError, match="does not fit"):
        mx.nn.Conv2D(1, 1, 5)(np.zeros((1, 4, 4, 1), "float32"))


# ---------------------------------------------------------------- dtypes
INT = np.zeros((2, 5, 5, 3), dtype=np.int64)


@pytest.mark.parametrize("layer", nhwc_layers() + any_nhwc_layers() + [mx.nn.ReLU(), mx.nn.ELU()],
                         ids=LAYER_IDS + ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "ReLU", "ELU"])
def test_int_input_refused(layer):
    with pytest.raises(TypeError, match="int64"):
        layer(INT)


def test_int_input_dense_and_loss():
    with pytest.raises(TypeError, match="int64"):
        mx.nn.Dense(3, 2)(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="float"):
        F.softmax_cross_entropy(np.zeros((2, 3), np.int64), np.array([0, 1]))


@pytest.mark.parametrize("i", range(5), ids=LAYER_IDS)
def test_mixed_dtype_input_vs_params(i):
    layer = nhwc_layers(dtype="float64")[i]
    with pytest.raises(TypeError, match="float32.*float64"):
        layer(np.zeros((2, 5, 5, 3), "float32"))


def test_mixed_dtype_dense():
    with pytest.raises(TypeError, match="float32.*float64"):
        mx.nn.Dense(3, 2, dtype="float64")(np.zeros((2, 3), "float32"))


# ---------------------------------------------------------------- call order
def test_backward_before_forward_names_the_layer():
    layer = mx.nn.SeparableConv2D(3, 4, name="block2_sepconv1")
    with pytest.raises(RuntimeError, match=r"SeparableConv2D\('block2_sepconv1'\).*before forward"):
        layer.backward(np.zeros((1, 4, 4, 4), "float32"))


@pytest.mark.parametrize("layer", nhwc_layers() + any_nhwc_layers() + [mx.nn.ReLU(), mx.nn.ELU(), mx.nn.Dropout(0.5)],
                         ids=LAYER_IDS + ["MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "ReLU", "ELU", "Dropout"])
def test_backward_twice_refused(layer):
    y = layer(np.random.default_rng(0).standard_normal((2, 5, 5, 3)).astype("float32"))
    layer.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=type(layer).__name__):
        layer.backward(np.ones_like(y))


def test_backward_of_a_container_before_forward():
    model = mx.nn.Sequential(mx.nn.Dense(3, 2, name="fc"), name="head")
    with pytest.raises(RuntimeError, match="Sequential.'head'.*before forward"):
        model.backward(np.zeros((1, 2), "float32"))


# ---------------------------------------------------------------- labels
def test_labels_out_of_range():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"\[0, 4\).*0 to 4"):
        F.softmax_cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*-1"):
        mx.losses.softmax_cross_entropy(z, np.array([0, -1, 1]))


def test_labels_wrong_shape_or_type():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 1\)"):
        F.softmax_cross_entropy(z, np.zeros((3, 1), int))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        F.softmax_cross_entropy(z, np.array([0, 1]))
    with pytest.raises(ValueError, match="float64"):
        F.softmax_cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        F.softmax_cross_entropy(np.zeros(4), np.array([0]))


# ---------------------------------------------------------------- state dicts
def model():
    r = np.random.default_rng(0)
    return mx.nn.Sequential(mx.nn.Conv2D(3, 4, 3, name="conv", rng=r), mx.nn.BatchNorm2D(4, name="bn"),
                            mx.nn.Dense(4, 2, name="fc", rng=r))


def _snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def _assert_unchanged(m, before):
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed by a refused load")


def _other_state():
    """A valid state dict whose values all differ from model()'s (a half-load would show)."""
    return {k: v + 1.0 for k, v in model().state_dict().items()}


def test_state_dict_missing_key_changes_nothing():
    m = model()
    before = _snapshot(m)
    sd = _other_state()
    del sd["bn/moving_variance"]
    with pytest.raises(KeyError, match="missing.*bn/moving_variance"):
        m.load_state_dict(sd)
    _assert_unchanged(m, before)


def test_state_dict_unexpected_key_changes_nothing():
    m = model()
    before = _snapshot(m)
    sd = _other_state()
    sd["fc/extra"] = np.zeros(3)
    with pytest.raises(KeyError, match="unexpected.*fc/extra"):
        m.load_state_dict(sd)
    _assert_unchanged(m, before)


def test_state_dict_missing_and_unexpected_named_together():
    m = model()
    sd = _other_state()
    sd["conv/kernal"] = sd.pop("conv/kernel")
    with pytest.raises(KeyError) as err:
        m.load_state_dict(sd)
    assert "conv/kernel" in str(err.value) and "conv/kernal" in str(err.value)


def test_state_dict_misshaped_names_key_and_shapes_changes_nothing():
    m = model()
    before = _snapshot(m)
    sd = _other_state()
    sd["fc/kernel"] = np.zeros((2, 4))                  # transposed
    sd["bn/gamma"] = np.zeros(5)
    with pytest.raises(ValueError) as err:
        m.load_state_dict(sd)
    msg = str(err.value)
    assert "fc/kernel" in msg and "(4, 2)" in msg and "(2, 4)" in msg
    assert "bn/gamma" in msg and "(4,)" in msg and "(5,)" in msg
    _assert_unchanged(m, before)


def test_state_dict_non_numeric_changes_nothing():
    m = model()
    before = _snapshot(m)
    sd = _other_state()
    sd["fc/bias"] = np.array(["a", "b"])
    with pytest.raises(TypeError, match="fc/bias"):
        m.load_state_dict(sd)
    _assert_unchanged(m, before)


# ---------------------------------------------------------------- construction
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="groups"):
        mx.nn.Conv2D(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="intermediate"):
        mx.nn.SeparableConv2D(3, 4, intermediate="tanh")
    with pytest.raises(ValueError, match="rate"):
        mx.nn.Dropout(1.0)
    with pytest.raises(ValueError, match="positive"):
        mx.nn.BatchNorm2D(0)
    with pytest.raises(ValueError, match="padding"):
        mx.nn.Conv2D(3, 4, 3, padding="full")(np.zeros((1, 5, 5, 3), "float32"))


# ---------------------------------------------------------------- devices
@pytest.mark.skipif(gpu_available(), reason="a GPU is present: .to('gpu') is expected to work")
def test_to_gpu_without_gpu_is_a_clear_error():
    layer = mx.nn.Conv2D(3, 4, 3)
    before = layer.kernel.data.copy()
    with pytest.raises(RuntimeError, match="gpu.*(CuPy|cupy)"):
        layer.to("gpu")
    np.testing.assert_array_equal(layer.kernel.data, before)
    assert isinstance(layer.kernel.data, np.ndarray)
    with pytest.raises(RuntimeError, match="gpu"):
        mx.to_device(np.zeros(3), "gpu")


@pytest.mark.gpu
def test_mixed_numpy_cupy_arrays_refused():
    import cupy as cp
    x = cp.zeros((1, 5, 5, 3), "float32")
    with pytest.raises(TypeError, match="mixed NumPy"):
        F.conv2d_forward(x, np.zeros((3, 3, 3, 4), "float32"))
    with pytest.raises(TypeError, match="mixed NumPy"):
        mx.get_array_module(np.zeros(2), cp.zeros(2))
    layer = mx.nn.SeparableConv2D(3, 4)                 # parameters on the host
    with pytest.raises(TypeError, match="expected an input on the cpu"):
        layer(x)
    layer.to("gpu")
    with pytest.raises(TypeError, match="expected an input on the gpu"):
        layer(np.zeros((1, 5, 5, 3), "float32"))


# ---------------------------------------------------------------- gradcheck
def test_gradcheck_refuses_a_backward_with_the_wrong_number_of_gradients():
    r = np.random.default_rng(0)
    x, k = r.standard_normal((1, 4, 4, 2)), r.standard_normal((3, 3, 2, 1))
    fwd = lambda x, k: F.depthwise_conv2d_forward(x, k, 1, "same")          # noqa: E731
    with pytest.raises(ValueError, match=r"backward returned 1 gradient\(s\) for 2 input\(s\)"):
        mx.gradcheck.check_function(fwd, lambda dy, c: F.depthwise_conv2d_backward(dy, c)[0], [x, k])
    with pytest.raises(ValueError, match=r"backward returned 3 gradient\(s\) for 2 input\(s\)"):
        mx.gradcheck.check_function(fwd, lambda dy, c: F.depthwise_conv2d_backward(dy, c) + (None,), [x, k])
    errors = mx.gradcheck.check_function(fwd, F.depthwise_conv2d_backward, [x, k])
    assert len(errors) == 2 and max(errors) < 1e-7


@pytest.mark.parametrize("impl", ["reference", "numba", "cuda"])
def test_separable_op_refuses_kernels_that_do_not_chain_and_unknown_activations(impl):
    """Every implementation of the separable op checks its arguments the same way (one shared check)."""
    if impl == "reference":
        forward = F.separable_conv2d_forward
    elif impl == "numba":
        pytest.importorskip("numba")
        from minixception.kernels.cpu.depthwise import separable_conv2d_forward as forward
    else:
        pytest.importorskip("cupy")
        from minixception.kernels.cuda.separable import separable_forward as forward
    x = np.zeros((1, 5, 5, 3), "float32")
    dk, pk = np.zeros((3, 3, 3, 1), "float32"), np.zeros((1, 1, 4, 6), "float32")
    with pytest.raises(ValueError, match=r"gives 3 channels but the pointwise kernel \(1, 1, 4, 6\) expects 4"):
        forward(x, dk, pk)
    with pytest.raises(ValueError, match="intermediate must be None, 'relu' or 'elu', got 'tanh'"):
        forward(x, dk, np.zeros((1, 1, 3, 6), "float32"), intermediate="tanh")
