"""The nn API: names, state dicts, modes, gradient accumulation, containers, caches, dtypes."""
import sys
import threading

import numpy as np
import pytest

import minixception as mx
from minixception.nn import inference_mode
from minixception.nn.module import caching_enabled


class Scale(mx.nn.Module):
    """y = a * x; records the dy it is handed (to see what a container passes down)."""

    def __init__(self, a, name=None):
        super().__init__(name)
        self.a, self.seen = a, []

    def forward(self, x):
        y = self.a * x
        self._keep(None, y)
        return y

    def backward(self, dy):
        self._take_cache(dy)
        self.seen.append(dy.copy())
        return self.a * dy


def small_model(seed=0, dtype="float32"):
    r = np.random.default_rng(seed)
    return mx.nn.Sequential(
        mx.nn.Conv2D(3, 4, 3, padding="same", name="conv", rng=r, dtype=dtype),
        mx.nn.BatchNorm2D(4, name="conv_bn", dtype=dtype),
        mx.nn.ReLU(name="act"),
        mx.nn.Sequential(mx.nn.SeparableConv2D(4, 5, name="sep", rng=r, dtype=dtype),
                         mx.nn.BatchNorm2D(5, name="sep_bn", dtype=dtype), name="block"),
        mx.nn.GlobalAvgPool2D(),
        mx.nn.Dense(5, 2, name="predictions", rng=r, dtype=dtype),
    )


# ---------------------------------------------------------------- names and state dicts
def test_layer_parameter_names():
    assert [n for n, _ in mx.nn.Conv2D(3, 4, 3).named_parameters()] == ["kernel", "bias"]
    assert [n for n, _ in mx.nn.Conv2D(3, 4, 3, use_bias=False).named_parameters()] == ["kernel"]
    assert [n for n, _ in mx.nn.DepthwiseConv2D(3).named_parameters()] == ["depthwise_kernel"]
    assert [n for n, _ in mx.nn.PointwiseConv2D(3, 4).named_parameters()] == ["pointwise_kernel"]
    assert [n for n, _ in mx.nn.SeparableConv2D(3, 4).named_parameters()] == ["depthwise_kernel", "pointwise_kernel"]
    assert [n for n, _ in mx.nn.BatchNorm2D(3).named_parameters()] == ["gamma", "beta"]
    assert [n for n, _ in mx.nn.Dense(3, 4).named_parameters()] == ["kernel", "bias"]
    assert list(mx.nn.ReLU().named_parameters()) == []


def test_keras_weight_shapes():
    assert mx.nn.Conv2D(6, 8, 3, groups=2).kernel.shape == (3, 3, 3, 8)
    sep = mx.nn.SeparableConv2D(6, 8, kernel_size=5)
    assert sep.depthwise_kernel.shape == (5, 5, 6, 1) and sep.pointwise_kernel.shape == (1, 1, 6, 8)
    assert mx.nn.Dense(6, 8).kernel.shape == (6, 8)


def test_container_qualified_names_and_regularize_flags():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["conv/kernel", "conv/bias", "conv_bn/gamma", "conv_bn/beta",
                     "block/sep/depthwise_kernel", "block/sep/pointwise_kernel",
                     "block/sep_bn/gamma", "block/sep_bn/beta",
                     "predictions/kernel", "predictions/bias"]
    assert [p.regularize for p in model.parameters()] == [True, False, False, False, True, True,
                                                          False, False, True, False]
    # unnamed children use their index; a container named "" is transparent
    seq = mx.nn.Sequential(mx.nn.ReLU(), mx.nn.Dense(2, 3), mx.nn.Sequential(mx.nn.Dense(3, 1, name="d"), name=""))
    assert [n for n, _ in seq.named_parameters()] == ["1/kernel", "1/bias", "d/kernel", "d/bias"]


def test_state_dict_has_buffers_and_is_host_copies():
    model = small_model()
    sd = model.state_dict()
    assert set(sd) == {n for n, _ in model.named_parameters()} | {
        "conv_bn/moving_mean", "conv_bn/moving_variance", "block/sep_bn/moving_mean", "block/sep_bn/moving_variance"}
    assert all(type(v) is np.ndarray for v in sd.values())
    np.testing.assert_array_equal(sd["conv_bn/moving_variance"], np.ones(4))
    # copies: changing the dict does not change the model, and vice versa
    k = model[0].kernel.data
    before = k.copy()
    sd["conv/kernel"][...] = 123.0
    np.testing.assert_array_equal(k, before)
    k += 1.0
    assert not np.array_equal(sd["conv/kernel"], k)
    assert not np.shares_memory(sd["conv_bn/moving_mean"], model[1].moving_mean)


def test_load_state_dict_round_trip(rng):
    a, b = small_model(seed=1), small_model(seed=2)
    x = rng.standard_normal((2, 5, 5, 3)).astype("float32")
    a(x)                                               # training forward: moves the BN statistics
    a.eval(), b.eval()
    assert not np.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x), b(x))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    # loading does not alias the given arrays
    sd = a.state_dict()
    b.load_state_dict(sd)
    sd["conv/kernel"][...] = 0
    assert not np.all(b[0].kernel.data == 0)


def test_load_state_dict_casts_to_the_layer_dtype():
    m32 = small_model(dtype="float32")
    m32.load_state_dict({k: v.astype("float64") for k, v in small_model(seed=5).state_dict().items()})
    assert all(p.data.dtype == np.float32 for p in m32.parameters())
    assert m32[1].moving_mean.dtype == np.float32


# ---------------------------------------------------------------- modes, grads
def test_train_eval_propagate_to_every_module(rng):
    model = small_model()
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    # and it matters: in eval BN uses the moving statistics (identity-ish at init), in train the batch's
    x = rng.standard_normal((2, 5, 5, 3)).astype("float32") * 3 + 2
    bn = mx.nn.BatchNorm2D(3)
    y_train = bn(x)
    np.testing.assert_allclose(y_train.reshape(-1, 3).mean(0), 0, atol=1e-5)
    mm = bn.moving_mean.copy()
    bn.eval()
    y_eval = bn(x)
    np.testing.assert_array_equal(bn.moving_mean, mm)    # eval never updates the statistics
    np.testing.assert_allclose(y_eval, (x - mm) / np.sqrt(bn.moving_variance + 1e-3), rtol=1e-5)


def test_backward_adds_into_grad_and_zero_grad(rng):
    model = small_model(dtype="float64")
    x = rng.standard_normal((2, 5, 5, 3))
    dy = rng.standard_normal((2, 2))
    model(x)
    model.backward(dy)
    first = [p.grad.copy() for p in model.parameters()]
    assert all(np.any(g != 0) for g in first)
    model(x)
    model.backward(dy)                                 # same x, same dy: gradients double
    for p, g in zip(model.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12, atol=1e-14)
    model.zero_grad()
    assert all(np.all(p.grad == 0) for p in model.parameters())


def test_moving_statistics_update_rule(rng):
    bn = mx.nn.BatchNorm2D(3, momentum=0.9, dtype="float64")
    x = rng.standard_normal((4, 3, 3, 3)) * 2 + 1
    bn(x)
    np.testing.assert_allclose(bn.moving_mean, 0.1 * x.reshape(-1, 3).mean(0), rtol=1e-12)
    np.testing.assert_allclose(bn.moving_variance, 0.9 + 0.1 * x.reshape(-1, 3).var(0), rtol=1e-12)


# ---------------------------------------------------------------- containers
def test_residual_gives_same_dy_to_both_paths_and_sums(rng):
    main, short = Scale(2.0), Scale(3.0)
    res = mx.nn.Residual(main, short)
    x = rng.standard_normal((2, 3, 3, 4))
    np.testing.assert_allclose(res(x), 5 * x)
    dy = rng.standard_normal(x.shape)
    dx = res.backward(dy)
    np.testing.assert_array_equal(main.seen[0], dy)
    np.testing.assert_array_equal(short.seen[0], dy)
    np.testing.assert_allclose(dx, 5 * dy)


def test_residual_identity_shortcut(rng):
    res = mx.nn.Residual(Scale(-0.5))
    x = rng.standard_normal((2, 3, 3, 4))
    np.testing.assert_allclose(res(x), 0.5 * x)
    dy = rng.standard_normal(x.shape)
    before = dy.copy()
    dx = res.backward(dy)
    np.testing.assert_allclose(dx, 0.5 * dy)
    np.testing.assert_array_equal(dy, before)
    assert not np.shares_memory(dx, dy)


def test_residual_shape_mismatch_is_refused(rng):
    res = mx.nn.Residual(mx.nn.MaxPool2D(3, 2, "same"))
    with pytest.raises(ValueError, match="shortcut"):
        res(rng.standard_normal((1, 4, 4, 2)))


def test_concat_joins_channels_and_slices_dy(rng):
    a, b = Scale(2.0), mx.nn.PointwiseConv2D(3, 2, rng=0, dtype="float64")
    cat = mx.nn.Concat(a, b)
    x = rng.standard_normal((2, 3, 3, 3))
    y = cat(x)
    assert y.shape == (2, 3, 3, 5)
    np.testing.assert_allclose(y[..., :3], 2 * x)
    np.testing.assert_allclose(y[..., 3:], x @ b.kernel.data[0, 0])
    dy = rng.standard_normal(y.shape)
    dx = cat.backward(dy)
    np.testing.assert_array_equal(a.seen[0], dy[..., :3])
    np.testing.assert_allclose(dx, 2 * dy[..., :3] + dy[..., 3:] @ b.kernel.data[0, 0].T)
    np.testing.assert_allclose(b.kernel.grad[0, 0], x.reshape(-1, 3).T @ dy[..., 3:].reshape(-1, 2))


def test_sequential_runs_in_order_and_backward_in_reverse(rng):
    seq = mx.nn.Sequential(Scale(2.0), Scale(3.0))
    assert len(seq) == 2 and isinstance(seq[1], Scale)
    x = rng.standard_normal((1, 2, 2, 1))
    np.testing.assert_allclose(seq(x), 6 * x)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(seq.backward(dy), 6 * dy)
    np.testing.assert_allclose(seq[0].seen[0], 3 * dy)         # the first layer saw the second's dx


# ---------------------------------------------------------------- caches, dtype, device
def test_inference_mode_keeps_no_cache(rng):
    model = small_model()
    x = rng.standard_normal((2, 5, 5, 3)).astype("float32")
    model.eval()
    y_ref = model(x)
    model.clear_caches()
    with inference_mode():
        y = model(x)
    np.testing.assert_array_equal(y, y_ref)
    assert all(not m.holds_cache for m in model.modules())
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((2, 2), "float32"))
    # caching is back on after the block
    model(x)
    assert model[0].holds_cache


def test_inference_mode_nests_and_restores_after_an_exception():
    assert caching_enabled()
    with inference_mode():
        with inference_mode():
            assert not caching_enabled()
        assert not caching_enabled()            # leaving the inner block keeps the outer one's value
    assert caching_enabled()
    with pytest.raises(KeyError):
        with inference_mode():
            raise KeyError("inside")
    assert caching_enabled()                    # an exception inside still switches caching back on
    with inference_mode():
        with pytest.raises(KeyError):
            with inference_mode():
                raise KeyError("inside")
        assert not caching_enabled()            # ... to the value from before the inner block


def _in_thread(target):
    """Start ``target`` in a thread; return (thread, list that collects its exception)."""
    errors = []

    def run():
        try:
            target()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread to re-raise
            errors.append(e)
    t = threading.Thread(target=run)
    t.start()
    return t, errors


def _train_step(layer, x, rng):
    y = layer(x)
    assert layer.holds_cache
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    dx = layer.backward(dy)
    assert dx.shape == x.shape


def test_inference_mode_in_one_thread_leaves_another_thread_caching(rng):
    layer = mx.nn.Dense(3, 2, rng=np.random.default_rng(0))
    x = rng.standard_normal((4, 3)).astype("float32")
    inside, leave = threading.Event(), threading.Event()
    seen = []

    def evaluate():                             # thread A holds inference_mode open ...
        with inference_mode():
            seen.append(caching_enabled())
            inside.set()
            assert leave.wait(30), "the main thread never let go"

    t, errors = _in_thread(evaluate)
    try:
        assert inside.wait(30), "the thread never entered inference_mode"
        assert caching_enabled()                # ... while the main thread still caches
        _train_step(layer, x, rng)              # forward + backward work here
    finally:
        leave.set()
        t.join(30)
    assert not errors, errors
    assert seen == [False]                      # the thread itself did run without caches


def test_inference_mode_in_the_main_thread_leaves_a_worker_caching(rng):
    layer = mx.nn.Dense(3, 2, rng=np.random.default_rng(0))
    x = rng.standard_normal((4, 3)).astype("float32")
    with inference_mode():
        # a thread started from inside the block gets a fresh context, where caching is on
        # (a copy of this one only where Python sets sys.flags.thread_inherit_context)
        inherits = bool(getattr(sys.flags, "thread_inherit_context", False))
        seen = []
        t, errors = _in_thread(lambda: seen.append(caching_enabled()))
        t.join(30)
        assert not errors, errors
        assert seen == [not inherits]
        if not inherits:
            t, errors = _in_thread(lambda: _train_step(layer, x, np.random.default_rng(1)))
            t.join(30)
            assert not errors, errors
        assert not caching_enabled()            # the workers changed nothing here
        layer(x)
        assert not layer.holds_cache


def test_to_float64_casts_params_grads_buffers(rng):
    model = small_model()
    assert model.to(dtype="float64") is model
    for p in model.parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64
    assert model[1].moving_variance.dtype == np.float64
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    x = rng.standard_normal((2, 5, 5, 3))
    y = model(x)
    assert y.dtype == np.float64
    assert model.backward(np.ones_like(y)).dtype == np.float64
    model.to("cpu", dtype="float32")
    assert model(x.astype("float32")).dtype == np.float32


def test_to_unknown_device_is_refused():
    with pytest.raises(ValueError, match="cpu"):
        small_model().to("tpu")


def test_call_equals_forward(rng):
    layer = mx.nn.SeparableConv2D(3, 4, rng=0)
    x = rng.standard_normal((1, 4, 4, 3)).astype("float32")
    np.testing.assert_array_equal(layer(x), layer.forward(x))


def test_same_seed_same_weights():
    a, b = small_model(seed=7), small_model(seed=7)
    for (_, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb)
    c = small_model(seed=8)
    assert not np.array_equal(a.state_dict()["conv/kernel"], c.state_dict()["conv/kernel"])


# ---------------------------------------------------------------- duplicate names
def test_duplicate_sibling_names_are_refused_at_build():
    conv = lambda: mx.nn.Conv2D(3, 3, 1, name="a", rng=0)        # noqa: E731
    with pytest.raises(ValueError, match="second layer named 'a'"):
        mx.nn.Sequential(conv(), mx.nn.ReLU(), conv())
    seq = mx.nn.Sequential(conv(), name="block")
    with pytest.raises(ValueError, match=r"Sequential\('block'\).*'a'"):
        seq.append(conv())
    assert len(seq) == 1                     # the refused layer was not added


def test_duplicate_paths_through_transparent_containers_are_refused():
    """A transparent ("") container merges its children into its parent's names: a collision
    there is only visible from the top, and must not silently merge two state-dict entries."""
    conv = lambda: mx.nn.Conv2D(3, 3, 1, name="a", rng=0)        # noqa: E731
    model = mx.nn.Sequential(mx.nn.Sequential(conv(), name=""), conv(), name="model")
    for call in (model.state_dict, model.named_parameters, model.parameters, model.named_buffers,
                 model.named_modules, lambda: model.load_state_dict({})):
        with pytest.raises(ValueError, match="'a'.*duplicate layer name"):
            call()
    # unnamed ("") leaves with weights collide on the weight name itself
    leaves = mx.nn.Sequential(mx.nn.Sequential(mx.nn.Dense(2, 2, name="", rng=0), name=""),
                              mx.nn.Dense(2, 2, name="", rng=1))
    with pytest.raises(ValueError, match="'kernel'.*duplicate layer name"):
        leaves.state_dict()
    # weightless layers with one name are still two layers at one path
    acts = mx.nn.Sequential(mx.nn.Sequential(mx.nn.ReLU(name="act"), name=""), mx.nn.ReLU(name="act"))
    with pytest.raises(ValueError, match="'act'"):
        acts.named_modules()


def test_unique_names_and_reused_names_at_other_paths_are_fine():
    model = mx.nn.Sequential(mx.nn.Sequential(mx.nn.Dense(2, 2, name="fc", rng=0), name="b1"),
                             mx.nn.Sequential(mx.nn.Dense(2, 2, name="fc", rng=1), name="b2"))
    assert set(model.state_dict()) == {"b1/fc/kernel", "b1/fc/bias", "b2/fc/kernel", "b2/fc/bias"}
    relu = mx.nn.ReLU(name="act")             # one layer object at two indices is not a duplicate name
    assert len(mx.nn.Sequential(mx.nn.Sequential(relu), mx.nn.Sequential(relu)).named_modules()) == 5
