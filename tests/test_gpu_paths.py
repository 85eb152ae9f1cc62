"""The paths around the GPU kernels: dropout's generator state, checkpoints across devices,
momentum across a device move, and ``--device gpu`` where there is no GPU.

The CPU-side tests run everywhere; their ``@pytest.mark.gpu`` twins run where CuPy sees a GPU.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minixception as mx
from minixception.checkpoint import read_checkpoint
from minixception.kernels.cuda.rng import CounterRNG
from minixception.train import _dropout_states, _set_dropout_states, fit

from helpers import params_of, tiny_data, tiny_model

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, progress=False)


# -- Dropout's generator state ---------------------------------------------------------------

def _masks(drop, n=3, shape=(4, 6)):
    x = np.ones(shape)
    return [drop(x) != 0 for _ in range(n)]


def test_dropout_rng_state_round_trip_on_the_host():
    a = mx.nn.Dropout(0.5, rng=3)
    _masks(a, 2)                                   # advance the generator
    state = json.loads(json.dumps(a.rng_state()))  # what a checkpoint's meta holds
    assert state["device"] is None
    expected = _masks(a)
    b = mx.nn.Dropout(0.5, rng=99)
    b.set_rng_state(state)
    for m, e in zip(_masks(b), expected):
        np.testing.assert_array_equal(m, e)


def test_dropout_rng_state_covers_the_device_generator():
    a = mx.nn.Dropout(0.5, rng=3)
    a._device_rng = CounterRNG(key=2**63 + 5, counter=1234)     # as made on first GPU use
    state = json.loads(json.dumps(a.rng_state()))
    assert state["device"] == {"key": 2**63 + 5, "counter": 1234}
    b = mx.nn.Dropout(0.5, rng=0)
    b.set_rng_state(state)
    assert b._device_rng.state() == {"key": 2**63 + 5, "counter": 1234}
    assert b._host_rng.bit_generator.state == a._host_rng.bit_generator.state
    c = mx.nn.Dropout(0.5, rng=0)
    c._device_rng = CounterRNG(1)
    c.set_rng_state(mx.nn.Dropout(0.5, rng=0).rng_state())          # a state without a device generator
    assert c._device_rng is None


def test_dropout_set_rng_state_accepts_a_bare_host_state_and_refuses_garbage():
    a = mx.nn.Dropout(0.3, rng=1)
    b = mx.nn.Dropout(0.3, rng=2)
    b.set_rng_state(a._host_rng.bit_generator.state)                # the form older checkpoints hold
    for m, e in zip(_masks(b), _masks(a)):
        np.testing.assert_array_equal(m, e)
    with pytest.raises(TypeError, match="expected the dict rng_state"):
        b.set_rng_state([1, 2])
    with pytest.raises(ValueError, match="expected keys 'host' and 'device'"):
        b.set_rng_state({"host": a._host_rng.bit_generator.state})


def test_trainer_saves_and_restores_both_generators():
    model = tiny_model(0, dropout=0.3)
    drop = [m for m in model.modules() if isinstance(m, mx.nn.Dropout)][0]
    drop._device_rng = CounterRNG(77, 500)
    states = json.loads(json.dumps(_dropout_states(model)))
    other = tiny_model(1, dropout=0.3)
    _set_dropout_states(other, states)
    d2 = [m for m in other.modules() if isinstance(m, mx.nn.Dropout)][0]
    assert d2.rng_state() == drop.rng_state()


# -- checkpoints are host arrays, device-free -----------------------------------------------

def test_checkpoint_arrays_are_host_arrays_without_device(tmp_path):
    model = tiny_model(0, dropout=0.3)
    opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    y = model(x)
    model.backward(np.random.default_rng(1).standard_normal(y.shape).astype("float32"))
    opt.step()
    drop = [m for m in model.modules() if isinstance(m, mx.nn.Dropout)][0]
    drop._device_rng = CounterRNG(9, 40)
    path = mx.save_checkpoint(tmp_path / "c.npz", model, opt, dropout_rngs=_dropout_states(model))
    with np.load(path, allow_pickle=False) as z:                     # readable without pickle
        for k in z.files:
            assert type(z[k]) is np.ndarray and z[k].dtype.kind in "fiubU", k
    model_state, optim_state, meta = read_checkpoint(path)
    assert all(type(v) is np.ndarray for v in list(model_state.values()) + list(optim_state.values()))
    assert meta["dropout_rngs"][0]["device"] == {"key": 9, "counter": 40}
    text = json.dumps(meta).lower()
    assert "cupy" not in text and "cuda" not in text                 # nothing ties it to a device
    fresh = tiny_model(5, dropout=0.3)
    fresh_opt = mx.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    mx.load_checkpoint(path, fresh, fresh_opt)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)


# -- --device gpu without a usable GPU --------------------------------------------------------

def test_train_on_gpu_without_one_says_so_and_exits_nonzero(tmp_path):
    if mx.gpu_available():
        pytest.skip("a GPU is present")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "minixception", "train", "--device", "gpu", "--epochs", "1",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    errors = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --device gpu: device 'gpu'"), r.stderr
    assert "use device='cpu'" in errors[0]
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


# -- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_resume_on_gpu_is_exact_dropout_included(tmp_path):
    """2 epochs on the GPU in one go == 1 epoch, then resume: bit-identical, dropout masks included."""
    data = tiny_data(48, 16)
    kw = dict(FAST, schedule="step", seed=3, device="gpu")
    full = tiny_model(0, dropout=0.3)
    h_full = fit(full, data, tmp_path / "full", epochs=2, **kw)
    first = tiny_model(0, dropout=0.3)
    fit(first, data, tmp_path / "split", epochs=1, **kw)
    meta = mx.checkpoint.read_meta(tmp_path / "split" / "checkpoint.npz")
    assert meta["dropout_rngs"][0]["device"] is not None             # the device generator was saved
    resumed = tiny_model(5, dropout=0.3)
    h_res = fit(resumed, data, tmp_path / "split", epochs=2, resume=tmp_path / "split" / "checkpoint.npz", **kw)
    for k, v in params_of(full).items():
        np.testing.assert_array_equal(resumed.state_dict()[k], v, err_msg=k)
    assert [r["train_loss"] for r in h_res] == [r["train_loss"] for r in h_full]


@pytest.mark.gpu
def test_dropout_masks_on_gpu_come_from_the_saved_device_state():
    import cupy
    a = mx.nn.Dropout(0.5, rng=4)
    x = cupy.ones((8, 16), dtype=cupy.float32)
    a(x)
    state = json.loads(json.dumps(a.rng_state()))
    expected = [mx.to_numpy(a(x)) for _ in range(2)]
    b = mx.nn.Dropout(0.5, rng=0)
    b.set_rng_state(state)
    for e in expected:
        np.testing.assert_array_equal(mx.to_numpy(b(x)), e)


@pytest.mark.gpu
def test_moving_the_model_between_devices_keeps_the_momentum():
    """CPU step, move to the GPU, GPU step, back to the CPU, step == three steps on the CPU (float64)."""
    def run(devices):
        r = np.random.default_rng(0)
        model = mx.nn.Sequential(mx.nn.Dense(5, 4, rng=1, dtype="float64"), mx.nn.Dense(4, 3, rng=2, dtype="float64"))
        opt = mx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        for device in devices:
            model.to(device)
            x = mx.to_device(r.standard_normal((6, 5)), device)
            y = model(x)
            model.zero_grad()
            model.backward(mx.to_device(r.standard_normal((6, 3)), device))
            opt.step()
            assert all(mx.backend.device_of(b) == device for b in opt.buffers), "momentum left behind"
        return {k: v for k, v in model.state_dict().items()}

    moved, stayed = run(["cpu", "gpu", "cpu"]), run(["cpu", "cpu", "cpu"])
    for k, v in stayed.items():
        np.testing.assert_allclose(moved[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.gpu
@pytest.mark.parametrize("first,second", [("gpu", "cpu"), ("cpu", "gpu")])
def test_checkpoint_resumes_on_the_other_device(tmp_path, first, second):
    """Epoch 1 on one device, epoch 2 resumed on the other == both epochs on one device (float tolerance)."""
    data = tiny_data(48, 16)
    kw = dict(FAST, schedule="step", seed=2)
    full = tiny_model(0)
    fit(full, data, tmp_path / "full", epochs=2, device=first, **kw)
    part = tiny_model(0)
    fit(part, data, tmp_path / "split", epochs=1, device=first, **kw)
    resumed = tiny_model(7)
    fit(resumed, data, tmp_path / "split", epochs=2, device=second, resume=tmp_path / "split" / "checkpoint.npz", **kw)
    assert all(mx.backend.device_of(p.data) == second for p in resumed.parameters())
    for k, v in params_of(full).items():
        got = resumed.state_dict()[k]
        assert mx.gradcheck.rel_error(got.astype(np.float64), v.astype(np.float64)) < 1e-3, k
