"""mx.optim.PolyakAverage: the closed form in float64, exact restoration, state round trip, devices."""
import numpy as np
import pytest

import minixception as mx
from minixception.optim import SGD, PolyakAverage


def model(seed=0, dtype="float64"):
    r = np.random.default_rng(seed)
    return mx.nn.Sequential(mx.nn.Conv2D(2, 3, 3, name="conv", rng=r, dtype=dtype),
                            mx.nn.BatchNorm2D(3, name="bn", dtype=dtype),
                            mx.nn.ReLU(),
                            mx.nn.GlobalAvgPool2D(),
                            mx.nn.Dense(3, 2, name="fc", rng=r, dtype=dtype))


def snapshot(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
def test_closed_form_over_several_steps(decay):
    """a_n = d^n w_0 + (1 - d) * sum_k d^(n-k) w_k, the weights set in place as an optimiser does."""
    m = model()
    rng = np.random.default_rng(1)
    avg = PolyakAverage(m, decay)
    names = [n for n, _ in m.named_parameters()]
    w0 = {n: p.data.copy() for n, p in m.named_parameters()}
    history = []
    for _ in range(7):
        for p in m.parameters():
            p.data[...] = rng.normal(size=p.shape)
        history.append({n: p.data.copy() for n, p in m.named_parameters()})
        avg.update()
    n = len(history)
    for i, name in enumerate(names):
        expected = decay ** n * w0[name] + (1 - decay) * sum(
            decay ** (n - k) * w[name] for k, w in enumerate(history, start=1))
        np.testing.assert_allclose(avg.averages[i], expected, rtol=1e-13, atol=1e-15, err_msg=name)
    assert avg.updates == 7


def test_averages_start_at_the_weights_at_creation_and_are_copies():
    m = model()
    before = {n: p.data.copy() for n, p in m.named_parameters()}
    avg = PolyakAverage(m, 0.9)
    for p in m.parameters():
        p.data += 1.0                     # in place, as SGD does: must not move the averages
    for (n, _), a in zip(m.named_parameters(), avg.averages):
        np.testing.assert_array_equal(a, before[n])
    assert avg.names == ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "fc/kernel", "fc/bias"]


def test_applied_swaps_in_the_averages_and_restores_exactly():
    m = model()
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2))
    avg = PolyakAverage(m, 0.5)
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):                    # a few real steps so weights and averages differ
        opt.zero_grad()
        y = m(x)
        m.backward(np.random.default_rng(3).normal(size=y.shape))
        opt.step()
        avg.update()
    trained = snapshot(m)
    arrays = [p.data for p in m.parameters()]
    buffers = {k: v for k, v in m.named_buffers()}
    m.eval()
    with avg.applied():
        for p, a in zip(m.parameters(), avg.averages):
            np.testing.assert_array_equal(p.data, a)
            p.data[...] = 123.0               # spoiling the model inside must not spoil the averages
        for k, v in m.named_buffers():
            assert v is buffers[k]            # BN moving statistics are not averaged
    assert all(p.data is a for p, a in zip(m.parameters(), arrays))
    for k, v in snapshot(m).items():
        np.testing.assert_array_equal(v, trained[k], err_msg=k)
    assert not any((a == 123.0).all() for a in avg.averages)
    # the averaged model computes what a model loaded with the averages computes
    other = model(seed=5)
    other.load_state_dict({**trained, **dict(zip(avg.names, avg.averages))})
    other.eval()
    with avg.applied():
        np.testing.assert_array_equal(m(x), other(x))
    assert not np.array_equal(m(x), other(x))


def test_applied_restores_on_exception_and_refuses_nesting_and_updates():
    m = model()
    avg = PolyakAverage(m, 0.9)
    for p in m.parameters():
        p.data += 1.0
    trained = snapshot(m)
    arrays = [p.data for p in m.parameters()]
    with pytest.raises(ZeroDivisionError):
        with avg.applied():
            1 / 0
    assert all(p.data is a for p, a in zip(m.parameters(), arrays))
    for k, v in snapshot(m).items():
        np.testing.assert_array_equal(v, trained[k])
    with avg.applied():
        with pytest.raises(RuntimeError, match="does not nest"):
            with avg.applied():
                pass
        with pytest.raises(RuntimeError, match="inside applied"):
            avg.update()
    assert all(p.data is a for p, a in zip(m.parameters(), arrays))
    avg.update()                           # usable again after the block


def test_state_round_trip_and_refusals():
    m = model()
    avg = PolyakAverage(m, 0.9)
    rng = np.random.default_rng(4)
    for _ in range(3):
        for p in m.parameters():
            p.data[...] = rng.normal(size=p.shape)
        avg.update()
    sd = avg.state_dict()
    assert sd["decay"] == 0.9 and sd["updates"] == 3 and set(sd["averages"]) == set(avg.names)
    m2 = model(seed=9)
    avg2 = PolyakAverage(m2, 0.5)
    avg2.load_state_dict(sd)
    assert avg2.decay == 0.9 and avg2.updates == 3
    for a, b in zip(avg.averages, avg2.averages):
        np.testing.assert_array_equal(a, b)
    m2.load_state_dict(m.state_dict())
    avg.update()
    avg2.update()                          # both continue identically
    for a, b in zip(avg.averages, avg2.averages):
        np.testing.assert_array_equal(a, b)
    keep = [a.copy() for a in avg2.averages]
    bad = {**sd, "averages": {**sd["averages"], "fc/kernel": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match="fc/kernel"):
        avg2.load_state_dict(bad)
    with pytest.raises(KeyError, match="conv/bias"):
        avg2.load_state_dict({**sd, "averages": {k: v for k, v in sd["averages"].items() if k != "conv/bias"}})
    for a, b in zip(avg2.averages, keep):   # refusals change nothing
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("decay", [1.0, -0.1, "0.9", None, True])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
        PolyakAverage(model(), decay)


def test_float32_keeps_dtype():
    m = model(dtype="float32")
    avg = PolyakAverage(m, np.float32(0.99))          # NumPy scalars are numbers too
    avg.update()
    assert all(a.dtype == np.float32 for a in avg.averages)


@pytest.mark.gpu
def test_cupy_follows_the_parameters_device():
    import cupy as cp
    cpu, gpu = model(), model()
    a_cpu, a_gpu = PolyakAverage(cpu, 0.8), PolyakAverage(gpu, 0.8)
    gpu.to("gpu")
    rng = np.random.default_rng(6)
    for _ in range(3):
        for pc, pg in zip(cpu.parameters(), gpu.parameters()):
            w = rng.normal(size=pc.shape)
            pc.data[...] = w
            pg.data[...] = cp.asarray(w)
        a_cpu.update()
        a_gpu.update()
    assert all(isinstance(a, cp.ndarray) for a in a_gpu.averages)
    for a, b in zip(a_cpu.averages, a_gpu.averages):
        np.testing.assert_allclose(cp.asnumpy(b), a, rtol=1e-12)
    arrays = [p.data for p in gpu.parameters()]
    with a_gpu.applied():
        assert all(isinstance(p.data, cp.ndarray) for p in gpu.parameters())
    assert all(p.data is a for p, a in zip(gpu.parameters(), arrays))
    sd = a_gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd["averages"].values())


# ---------------------------------------------------------------------------------------------
# the trainer: --polyak evaluates both, writes its columns, checkpoints the averages, resumes exactly
# ---------------------------------------------------------------------------------------------
def test_fit_with_polyak_columns_and_exact_resume(tmp_path):
    import csv
    from minixception.checkpoint import read_checkpoint
    from minixception.train import fit, read_metrics
    from helpers import params_of, tiny_data, tiny_model

    data = tiny_data(64, 16)
    kw = dict(batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, progress=False, verbose=False,
              schedule="step", seed=1, polyak=0.9)
    full = tiny_model(0)
    h_full = fit(full, data, tmp_path / "full", epochs=2, **kw)
    with open(tmp_path / "full" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["polyak_test_loss", "polyak_test_acc"]
    rows = read_metrics(tmp_path / "full" / "metrics.csv")
    assert [r["polyak_test_acc"] for r in rows] == [r["polyak_test_acc"] for r in h_full]
    assert all(r["polyak_test_loss"] != r["test_loss"] for r in rows)    # other weights, other loss
    _, _, meta = read_checkpoint(tmp_path / "full" / "checkpoint.npz")
    assert meta["polyak"] == {"decay": 0.9, "updates": 8}               # 4 steps per epoch
    saved = {k[len("polyak/"):]: v for k, v in meta["_extra"].items()}
    assert set(saved) == {n for n, _ in full.named_parameters()}

    # the averaged evaluation equals evaluating a model that holds the saved averages
    from minixception.data.iterator import channel_stats
    from minixception.train import evaluate
    probe = tiny_model(0)
    probe.load_state_dict({**full.state_dict(), **saved})
    mean, std = channel_stats(data["x_train"])
    loss, acc = evaluate(probe, data["x_test"], np.asarray(data["y_test"], dtype=np.int64), 16, mean, std)
    assert (loss, acc) == pytest.approx((rows[-1]["polyak_test_loss"], rows[-1]["polyak_test_acc"]), rel=1e-6)

    # interrupted mid-epoch 2, resumed: weights, averages and metrics identical
    part = tiny_model(0)
    with pytest.raises(KeyboardInterrupt):
        fit(part, data, tmp_path / "cut", epochs=2, interrupt_after_steps=6, **kw)
    resumed = tiny_model(7)
    h_res = fit(resumed, data, tmp_path / "cut", epochs=2, resume=tmp_path / "cut" / "checkpoint.npz", **kw)
    for k, v in params_of(full).items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    _, _, meta2 = read_checkpoint(tmp_path / "cut" / "checkpoint.npz")
    assert meta2["polyak"] == meta["polyak"]
    for k, v in meta["_extra"].items():
        np.testing.assert_array_equal(meta2["_extra"][k], v, err_msg=k)
    assert [r["polyak_test_loss"] for r in h_res] == [r["polyak_test_loss"] for r in h_full]
    assert (tmp_path / "cut" / "curves.png").stat().st_size > 1000


def test_fit_without_polyak_keeps_the_plain_columns(tmp_path):
    from minixception.train import FIELDS, fit
    from helpers import tiny_data, tiny_model
    hist = fit(tiny_model(0), tiny_data(32, 16), tmp_path, epochs=1, batch_size=16, progress=False, verbose=False)
    assert set(hist[0]) == set(FIELDS)
    assert "polyak" not in mx.checkpoint.read_meta(tmp_path / "checkpoint.npz")


def test_load_polyak_reads_the_average_a_run_kept(tmp_path):
    from minixception.checkpoint import CheckpointError, read_checkpoint
    from minixception.train import fit, load_polyak
    from helpers import tiny_data, tiny_model

    model = tiny_model(0)
    fit(model, tiny_data(32, 16), tmp_path / "avg", epochs=1, batch_size=16, progress=False, verbose=False,
        polyak=0.9)
    avg = load_polyak(tmp_path / "avg" / "checkpoint.npz", model)
    _, _, meta = read_checkpoint(tmp_path / "avg" / "checkpoint.npz")
    assert avg.decay == 0.9 and avg.updates == meta["polyak"]["updates"] == 2
    trained = {n: p.data for n, p in model.named_parameters()}
    with avg.applied():
        for n, p in model.named_parameters():
            np.testing.assert_array_equal(p.data, meta["_extra"]["polyak/" + n], err_msg=n)
    assert all(p.data is trained[n] for n, p in model.named_parameters())

    fit(tiny_model(0), tiny_data(32, 16), tmp_path / "plain", epochs=1, batch_size=16, progress=False, verbose=False)
    with pytest.raises(CheckpointError, match="no Polyak average"):
        load_polyak(tmp_path / "plain" / "checkpoint.npz", tiny_model(0))
