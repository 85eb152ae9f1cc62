"""The one path every layer runs through, and the dy checks on it.

* Each layer asks the kernel table for its op (``kernels.select``), runs that implementation's
  forward, and its backward calls the *same* implementation's backward with the forward's cache
  -- even when the kernels in force change in between.
* Every backward (layers and containers) checks ``dy`` against the forward's output -- shape,
  dtype, device -- and refuses a wrong one before computing anything, naming the layer, what it
  expected and what came; the refused call changes nothing, so a corrected call still works.
"""
import numpy as np
import pytest

import minixception as mx
from minixception import kernels
from minixception.kernels import Kernel

from helpers import FakeGpuArray, fake_gpu


F32 = "float32"


def op_layers():
    """(id, factory, input shape, op name) for every layer that runs an op."""
    r = 0
    return [
        ("Conv2D-bias", lambda: mx.nn.Conv2D(3, 4, 3, 2, "same", rng=r), (2, 5, 6, 3), "conv2d"),
        ("DepthwiseConv2D-bias", lambda: mx.nn.DepthwiseConv2D(3, use_bias=True, rng=r), (2, 5, 5, 3), "depthwise_conv2d"),
        ("PointwiseConv2D-bias", lambda: mx.nn.PointwiseConv2D(3, 4, use_bias=True, rng=r), (2, 5, 5, 3), "pointwise_conv2d"),
        ("SeparableConv2D", lambda: mx.nn.SeparableConv2D(3, 4, rng=r), (2, 5, 5, 3), "separable_conv2d"),
        ("SeparableConv2D-elu-bias", lambda: mx.nn.SeparableConv2D(3, 4, use_bias=True, intermediate="elu", rng=r),
         (2, 5, 5, 3), "separable_conv2d"),
        ("BatchNorm2D", lambda: mx.nn.BatchNorm2D(3), (2, 5, 5, 3), "batchnorm"),
        ("ReLU", lambda: mx.nn.ReLU(), (2, 5, 5, 3), "relu"),
        ("ELU", lambda: mx.nn.ELU(0.5), (2, 5, 5, 3), "elu"),
        ("MaxPool2D", lambda: mx.nn.MaxPool2D(), (2, 5, 5, 3), "maxpool2d"),
        ("AvgPool2D", lambda: mx.nn.AvgPool2D(), (2, 5, 5, 3), "avgpool2d"),
        ("GlobalAvgPool2D", lambda: mx.nn.GlobalAvgPool2D(), (2, 5, 5, 3), "global_avgpool2d"),
        ("Dense-bias", lambda: mx.nn.Dense(3, 4, rng=r), (2, 3), "dense"),
        ("Dropout", lambda: mx.nn.Dropout(0.5, rng=r), (2, 5, 5, 3), "dropout"),
    ]


def all_layers():
    """(id, factory, input shape) for every layer and container (the dy checks cover them all)."""
    r = 0
    return [(lid, f, s) for lid, f, s, _ in op_layers()] + [
        ("Flatten", lambda: mx.nn.Flatten(), (2, 5, 5, 3)),
        ("Sequential", lambda: mx.nn.Sequential(mx.nn.PointwiseConv2D(3, 4, rng=r), mx.nn.ReLU(), name="seq"),
         (2, 5, 5, 3)),
        ("Residual", lambda: mx.nn.Residual(mx.nn.PointwiseConv2D(3, 3, rng=r), name="res"), (2, 5, 5, 3)),
        ("Concat", lambda: mx.nn.Concat(mx.nn.ReLU(), mx.nn.PointwiseConv2D(3, 2, rng=r), name="cat"), (2, 5, 5, 3)),
    ]


OP_IDS = [l[0] for l in op_layers()]
ALL_IDS = [l[0] for l in all_layers()]


class Spy:
    """Stands in for ``kernels.select``: hands out a recording wrapper of the real choice."""

    def __init__(self):
        self.ops, self.forward_caches, self.backward_caches = [], [], []

    def __call__(self, op, x, *args, **kwargs):
        real = kernels.reference(op)
        self.ops.append(op)

        def forward(*a, **k):
            y, cache = real.forward(*a, **k)
            self.forward_caches.append(cache)
            return y, cache

        def backward(dy, cache):
            self.backward_caches.append(cache)
            return real.backward(dy, cache)
        return Kernel("spy", forward, backward)


def _grads(layer):
    return {k: p.grad.copy() for k, p in layer.named_parameters()}


@pytest.mark.parametrize("lid,factory,shape,op", op_layers(), ids=OP_IDS)
def test_layer_runs_its_op_through_the_table_and_backward_uses_the_same_kernel(lid, factory, shape, op, monkeypatch):
    x = np.random.default_rng(1).standard_normal(shape).astype(F32)
    dy_rng = np.random.default_rng(2)
    ref = factory()
    with mx.use_kernels("reference"):
        y_ref = ref(x)
        dy = dy_rng.standard_normal(y_ref.shape).astype(F32)
        dx_ref = ref.backward(dy)

    layer = factory()
    spy = Spy()
    with monkeypatch.context() as m:
        m.setattr(kernels, "select", spy)
        y = layer(x)
    # select() is back to normal and the kernels in force changed: the backward must still run
    # the kernel the forward chose, with the forward's cache
    with mx.use_kernels("reference"):
        dx = layer.backward(dy)
    assert spy.ops == [op]
    assert len(spy.forward_caches) == 1 and len(spy.backward_caches) == 1
    assert spy.backward_caches[0] is spy.forward_caches[0]
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    got, want = _grads(layer), _grads(ref)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bias_is_added_and_its_gradient_summed_by_the_shared_path(rng):
    """y = op(x) + b and db = sum of dy over every axis but the last, for each layer with a bias."""
    x = rng.standard_normal((2, 5, 5, 3)).astype(F32)
    for with_bias, without in [
        (mx.nn.Conv2D(3, 4, 3, 1, "same", rng=0), mx.nn.Conv2D(3, 4, 3, 1, "same", use_bias=False, rng=0)),
        (mx.nn.DepthwiseConv2D(3, use_bias=True, rng=0), mx.nn.DepthwiseConv2D(3, rng=0)),
        (mx.nn.PointwiseConv2D(3, 4, use_bias=True, rng=0), mx.nn.PointwiseConv2D(3, 4, rng=0)),
        (mx.nn.SeparableConv2D(3, 4, use_bias=True, rng=0), mx.nn.SeparableConv2D(3, 4, rng=0)),
    ]:
        with_bias.bias.data[:] = rng.standard_normal(with_bias.bias.shape)
        y, y0 = with_bias(x), without(x)
        np.testing.assert_allclose(y, y0 + with_bias.bias.data, rtol=1e-6)
        dy = rng.standard_normal(y.shape).astype(F32)
        with_bias.backward(dy)
        np.testing.assert_allclose(with_bias.bias.grad, dy.sum(axis=(0, 1, 2)), rtol=1e-5)


# ---------------------------------------------------------------- dy checks
def _forward(factory, shape, dtype=F32):
    layer = factory()
    if dtype != F32:
        layer.to(dtype=dtype)
    x = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    return layer, layer(x)


def _refused_changes_nothing(layer, y):
    """After a refused backward: no gradient touched, and the right dy is still accepted."""
    for k, p in layer.named_parameters():
        assert not p.grad.any(), f"{k}: a refused backward changed the gradient"
    layer.backward(np.ones_like(y))


@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_refuses_a_float64_dy_into_a_float32_layer(lid, factory, shape):
    layer, y = _forward(factory, shape)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*float32.*got dtype float64"):
        layer.backward(np.ones(y.shape, "float64"))
    _refused_changes_nothing(layer, y)


@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_refuses_a_float32_dy_into_a_float64_layer(lid, factory, shape):
    layer, y = _forward(factory, shape, "float64")
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*float64.*got dtype float32"):
        layer.backward(np.ones(y.shape, "float32"))
    _refused_changes_nothing(layer, y)


@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_refuses_a_wrong_shaped_dy(lid, factory, shape):
    layer, y = _forward(factory, shape)
    bad = y.shape[:-1] + (y.shape[-1] + 1,)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}.*shape {re_tuple(y.shape)}.*got shape {re_tuple(bad)}"):
        layer.backward(np.ones(bad, F32))
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer.backward(np.ones((1,) + y.shape, F32))         # broadcastable is still wrong
    _refused_changes_nothing(layer, y)


@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_refuses_a_dy_on_the_other_device(lid, factory, shape, monkeypatch):
    layer, y = _forward(factory, shape)
    with fake_gpu(monkeypatch):
        with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*NumPy \(CPU\).*got a CuPy \(GPU\) array"):
            layer.backward(np.ones_like(y).view(FakeGpuArray))
    _refused_changes_nothing(layer, y)


@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_refuses_a_dy_that_is_not_an_array(lid, factory, shape):
    layer, y = _forward(factory, shape)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*got list"):
        layer.backward(np.ones_like(y).tolist())
    _refused_changes_nothing(layer, y)


def test_dy_error_names_the_layer(rng):
    model = mx.nn.Sequential(mx.nn.Dense(3, 2, name="fc"), name="head")
    y = model(rng.standard_normal((4, 3)).astype(F32))
    with pytest.raises(TypeError, match=r"Sequential\('head'\)\.backward: expected dy like the forward's output, "
                                        r"a NumPy \(CPU\) float32 array of shape \(4, 2\); got dtype float64"):
        model.backward(np.ones(y.shape))


def re_tuple(shape):
    return r"\(" + r",\s*".join(str(s) for s in shape) + r",?\)"


def test_a_whole_model_refuses_a_wrong_dy_before_any_layer_runs(rng):
    model = mx.models.mini_xception(num_classes=3, width=0.25, rng=0)
    logits = model(rng.standard_normal((2, 32, 32, 3)).astype(F32))
    with pytest.raises(TypeError, match=r"mini_xception.*float32.*got dtype float64"):
        model.backward(np.ones(logits.shape))
    with pytest.raises(ValueError, match=r"mini_xception.*shape \(2, 3\).*got shape \(2, 4\)"):
        model.backward(np.ones((2, 4), F32))
    assert all(not p.grad.any() for p in model.parameters())
    assert all(m.holds_cache for m in model.modules() if m.children() or m.named_parameters(recurse=False))
    model.backward(np.ones_like(logits))           # the right dy still goes through
    assert not any(m.holds_cache for m in model.modules())


@pytest.mark.gpu
@pytest.mark.parametrize("lid,factory,shape", all_layers(), ids=ALL_IDS)
def test_backward_on_the_gpu_refuses_a_host_or_float64_dy(lid, factory, shape):
    import cupy as cp
    layer = factory().to("gpu")
    y = layer(cp.asarray(np.random.default_rng(3).standard_normal(shape).astype(F32)))
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*CuPy \(GPU\).*got a NumPy \(CPU\) array"):
        layer.backward(np.ones(y.shape, F32))
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}.*got dtype float64"):
        layer.backward(cp.ones(y.shape, "float64"))
    with pytest.raises(ValueError, match=type(layer).__name__):
        layer.backward(cp.ones(y.shape[:-1] + (y.shape[-1] + 1,), F32))
    for k, p in layer.named_parameters():
        assert not p.grad.any(), k
    layer.backward(cp.ones_like(y))
