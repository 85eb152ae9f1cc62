"""SGD step by step against torch.optim.SGD, learning-rate schedules, optimizer state."""
import math

import numpy as np
import pytest

import minixception as mx
from minixception.optim import SGD, Constant, Cosine, StepDecay, make_schedule

from helpers import FakeGpuArray, fake_gpu


def model(seed=0):
    r = np.random.default_rng(seed)
    return mx.nn.Sequential(mx.nn.Conv2D(2, 3, 3, name="conv", rng=r, dtype="float64"),
                            mx.nn.BatchNorm2D(3, name="bn", dtype="float64"),
                            mx.nn.GlobalAvgPool2D(),
                            mx.nn.Dense(3, 2, name="fc", rng=r, dtype="float64"))


def random_grads(m, rng):
    for p in m.parameters():
        p.grad[...] = rng.standard_normal(p.shape)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                                                  (0.9, False, 1e-2), (0.9, True, 1e-2), (0.5, True, 0.0)])
def test_sgd_matches_torch_step_by_step(momentum, nesterov, wd):
    torch = pytest.importorskip("torch")
    m = model()
    params = m.parameters()
    # give biases / BN non-trivial values so "no decay" on them is visible
    init = np.random.default_rng(1)
    for p in params:
        p.data[...] = init.standard_normal(p.shape)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    # weight decay on kernels only: two torch parameter groups
    decay = [t for t, p in zip(tparams, params) if p.regularize]
    no_decay = [t for t, p in zip(tparams, params) if not p.regularize]
    assert len(decay) == 2 and len(no_decay) == 4        # conv/fc kernels vs conv/fc biases, gamma, beta
    topt = torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=0.1, momentum=momentum, nesterov=nesterov)
    opt = SGD(params, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    rng = np.random.default_rng(2)
    for step in range(6):
        lr = 0.1 * 0.5 ** (step // 3)                 # a schedule changes lr between steps
        opt.lr = lr
        for g in topt.param_groups:
            g["lr"] = lr
        random_grads(m, rng)
        for t, p in zip(tparams, params):
            t.grad = torch.tensor(p.grad.copy())
        opt.step()
        topt.step()
        for (name, p), t in zip(m.named_parameters(), tparams):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=f"step {step}, {name}")
    assert opt.steps == 6


def test_weight_decay_only_on_kernels():
    m = model()
    for p in m.parameters():
        p.data[...] = 1.0
    m.zero_grad()
    SGD(m.parameters(), lr=0.5, weight_decay=0.1).step()  # zero gradients: only the decay moves things
    for name, p in m.named_parameters():
        expected = 1.0 - 0.5 * 0.1 if name.endswith("kernel") else 1.0
        np.testing.assert_allclose(p.data, expected, err_msg=name)


def test_sgd_does_not_touch_grads(rng):
    m = model()
    random_grads(m, rng)
    before = [p.grad.copy() for p in m.parameters()]
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    opt.step()
    opt.step()
    for p, g in zip(m.parameters(), before):
        np.testing.assert_array_equal(p.grad, g)
    opt.zero_grad()
    assert all(np.all(p.grad == 0) for p in m.parameters())


def test_optimizer_state_dict_round_trip():
    """Stop after 3 steps, restore into a fresh optimizer: the next steps equal an uninterrupted run."""
    a, b = model(), model()
    opt_a = SGD(a.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    grads = np.random.default_rng(3)
    seq = []
    for _ in range(6):
        seq.append([grads.standard_normal(p.shape) for p in a.parameters()])

    def step(m, opt, gs):
        for p, g in zip(m.parameters(), gs):
            p.grad[...] = g
        opt.step()

    for gs in seq[:3]:
        step(a, opt_a, gs)
    sd = opt_a.state_dict()
    assert sd["steps"] == 3 and all(type(v) is np.ndarray for k, v in sd.items() if k.startswith("momentum/"))
    b.load_state_dict(a.state_dict())
    opt_b = SGD(b.parameters(), lr=1.0, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt_b.load_state_dict(sd)
    assert opt_b.lr == 0.05 and opt_b.steps == 3
    sd["momentum/0"][...] = 0                          # the restored optimizer holds its own copies
    for gs in seq[3:]:
        step(a, opt_a, gs)
        step(b, opt_b, gs)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)


def test_optimizer_state_dict_mismatch_refused():
    m = model()
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
    random_grads(m, np.random.default_rng(0))
    opt.step()
    sd = opt.state_dict()
    sd["momentum/0"] = np.zeros((1, 2))
    with pytest.raises(ValueError, match="expected shape"):
        SGD(m.parameters(), lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(KeyError, match="99"):
        SGD(m.parameters(), lr=0.1, momentum=0.9).load_state_dict({"momentum/99": np.zeros(3)})


def test_sgd_bad_arguments():
    m = model()
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(m.parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        SGD(m.parameters(), lr=-1.0)


# ---------------------------------------------------------------- schedules
def test_step_decay_is_the_papers_schedule():
    s = StepDecay(0.045)
    for k in range(6):
        for epoch in (2 * k, 2 * k + 0.5, 2 * k + 1, 2 * k + 1.999):
            assert math.isclose(s(epoch), 0.045 * 0.94 ** k, rel_tol=1e-12), epoch
    assert s(0) == 0.045 and s(2) < s(1.99)


def test_cosine_endpoints_and_shape():
    c = Cosine(0.1, total_epochs=10, min_lr=0.001)
    assert math.isclose(c(0), 0.1) and math.isclose(c(10), 0.001)
    assert math.isclose(c(5), (0.1 + 0.001) / 2)
    assert math.isclose(c(12), 0.001) and math.isclose(c(-1), 0.1)     # clamped outside [0, total]
    values = [c(e / 4) for e in range(41)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        Cosine(0.1, total_epochs=0)


def test_make_schedule():
    assert make_schedule("constant", 0.3)(17) == 0.3 and isinstance(make_schedule("constant", 0.3), Constant)
    assert math.isclose(make_schedule("step", 0.045)(4.5), 0.045 * 0.94 ** 2)
    assert math.isclose(make_schedule("cosine", 0.2, total_epochs=4)(4), 0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 0.1)


# ---------------------------------------------------------------- momentum follows the model
def _momentum_run(m, steps, seed=5):
    opt = SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    g = np.random.default_rng(seed)
    for _ in range(steps):
        random_grads(m, g)
        opt.step()
    return opt, g


def test_momentum_is_cast_with_the_model_and_kept():
    """Train in float32, cast the model to float64: the momentum is cast exactly, not reset, and
    the next step is the float64 step from those buffers."""
    m = model().to(dtype="float32")
    opt, g = _momentum_run(m, 3)
    before = [b.copy() for b in opt.buffers]
    assert all(b.dtype == np.float32 for b in before)
    m.to(dtype="float64")
    for p, b, b0 in zip(m.parameters(), opt.buffers, before):
        assert b.dtype == np.float64 == p.data.dtype
        np.testing.assert_array_equal(b, b0.astype(np.float64))          # exact: float32 -> float64
    # one more step, checked against the update rule by hand
    random_grads(m, g)
    expect = []
    for p, b in zip(m.parameters(), opt.buffers):
        grad = p.grad + (1e-3 * p.data if p.regularize else 0)
        expect.append(p.data - 0.05 * (0.9 * b + grad))
    opt.step()
    for (name, p), e in zip(m.named_parameters(), expect):
        assert p.data.dtype == np.float64
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=0, err_msg=name)


def test_momentum_moves_with_the_model_to_another_device(monkeypatch):
    """Through a pretend GPU (tests/helpers.fake_gpu): the buffers move with the parameters and
    the momentum survives the round trip and a step on the other device."""
    m, twin = model(), model()
    opt, g = _momentum_run(m, 3)
    twin_opt, _ = _momentum_run(twin, 3)
    with fake_gpu(monkeypatch):
        m.to("gpu")
        assert all(isinstance(b, FakeGpuArray) for b in opt.buffers)
        assert all(isinstance(p.data, FakeGpuArray) for p in m.parameters())
        grads = [np.random.default_rng(9).standard_normal(p.shape) for p in m.parameters()]
        for p, t, gr in zip(m.parameters(), twin.parameters(), grads):
            p.grad[...] = gr
            t.grad[...] = gr
        opt.step()                      # on the "GPU"
        twin_opt.step()                 # on the CPU
        m.to("cpu")
    for (name, p), t, b, tb in zip(m.named_parameters(), twin.parameters(), opt.buffers, twin_opt.buffers):
        assert type(p.data) is np.ndarray and type(b) is np.ndarray
        np.testing.assert_array_equal(p.data, t.data, err_msg=name)
        np.testing.assert_array_equal(b, tb, err_msg=name)


def test_a_buffer_left_behind_is_refused_not_reset():
    m = model()
    opt, g = _momentum_run(m, 2)
    p = m.parameters()[0]
    p.data = p.data.astype(np.float32)        # changed behind the model's back, not through .to()
    p.grad = p.grad.astype(np.float32)
    with pytest.raises(RuntimeError, match="momentum buffer of parameter 0.*float64.*float32.*model.to"):
        opt.step()


@pytest.mark.gpu
def test_momentum_moves_with_the_model_to_the_gpu_and_back():
    m, twin = model(), model()
    opt, g = _momentum_run(m, 3)
    twin_opt, _ = _momentum_run(twin, 3)
    m.to("gpu")
    assert all(mx.backend.device_of(b) == "gpu" for b in opt.buffers)
    grads = [np.random.default_rng(9).standard_normal(p.shape) for p in m.parameters()]
    for p, t, gr in zip(m.parameters(), twin.parameters(), grads):
        p.grad[...] = mx.backend.to_device(gr, "gpu")
        t.grad[...] = gr
    opt.step()
    twin_opt.step()
    m.to("cpu")
    for (name, p), t, b, tb in zip(m.named_parameters(), twin.parameters(), opt.buffers, twin_opt.buffers):
        np.testing.assert_allclose(p.data, t.data, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(b, tb, rtol=1e-12, err_msg=name)
