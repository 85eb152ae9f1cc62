"""Checkpoints: round trip, atomic write, refusal of truncated / foreign / pickled / mismatched files."""
import os

import numpy as np
import pytest

import minixception as mx
from minixception.checkpoint import MARKER, CheckpointError, read_meta, rng_from_state

from helpers import params_of, tiny_model


def _trained(seed=0):
    """A model and optimiser after two steps: non-trivial weights, BN statistics and momentum."""
    m = tiny_model(seed)
    opt = mx.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = np.random.default_rng(seed).standard_normal((8, 32, 32, 3)).astype(np.float32)
    y = np.arange(8) % 10
    for _ in range(2):
        opt.zero_grad()
        _, d = mx.losses.softmax_cross_entropy(m(x), y)
        m.backward(d)
        opt.step()
    return m, opt


def test_round_trip_model_optimizer_meta(tmp_path):
    m, opt = _trained(0)
    gen = np.random.default_rng(7)
    gen.random(3)
    path = mx.save_checkpoint(tmp_path / "c.npz", m, opt, epoch=3, rng=gen.bit_generator.state,
                              settings={"lr": 0.1, "model": "tiny"})
    m2, _ = _trained(1)                        # different weights, same architecture
    opt2 = mx.optim.SGD(m2.parameters(), lr=0.5, momentum=0.9)
    meta = mx.load_checkpoint(path, m2, opt2)
    for k, v in params_of(m).items():
        np.testing.assert_array_equal(m2.state_dict()[k], v)
    assert any("moving_mean" in k for k in m.state_dict())          # BN buffers are in there
    for b, b2 in zip(opt.buffers, opt2.buffers):
        np.testing.assert_array_equal(b, b2)
    assert opt2.steps == 2 and opt2.lr == 0.1
    assert meta["epoch"] == 3 and meta["settings"] == {"lr": 0.1, "model": "tiny"}
    restored = rng_from_state(meta["rng"])
    np.testing.assert_array_equal(restored.random(4), gen.random(4))
    assert read_meta(path)["epoch"] == 3


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    m, opt = _trained(0)
    path = tmp_path / "c.npz"
    mx.save_checkpoint(path, m, opt, epoch=1)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        mx.save_checkpoint(path, m, opt, epoch=2)
    assert path.read_bytes() == before                               # the old checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]                 # no temporary file left
    monkeypatch.undo()
    mx.save_checkpoint(tmp_path / "new.npz", m, epoch=0)
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        mx.save_checkpoint(tmp_path / "other.npz", m, epoch=0)
    assert not (tmp_path / "other.npz").exists()


def test_refuses_truncated_file(tmp_path):
    m, opt = _trained(0)
    path = tmp_path / "c.npz"
    mx.save_checkpoint(path, m, opt, epoch=1)
    data = path.read_bytes()
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(data[: len(data) // 2])
    before = params_of(m)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        mx.load_checkpoint(bad, m, opt)
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v)


def test_refuses_foreign_npz(tmp_path):
    m = tiny_model(0)
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minixception checkpoint"):
        mx.load_checkpoint(tmp_path / "foreign.npz", m)


def test_refuses_pickle_bearing_file(tmp_path):
    m = tiny_model(0)
    evil = np.empty(1, dtype=object)
    evil[0] = {"anything": "a pickle could run code"}
    np.savez(tmp_path / "evil.npz", **{MARKER: np.array(1), "meta": np.array("{}"), "model/x": evil})
    with pytest.raises(CheckpointError, match="pickle"):
        mx.load_checkpoint(tmp_path / "evil.npz", m)


def test_refuses_other_architecture_and_changes_nothing(tmp_path):
    m, opt = _trained(0)
    path = mx.save_checkpoint(tmp_path / "c.npz", m, opt, epoch=1)
    other = tiny_model(0, width=6)
    before = params_of(other)
    with pytest.raises(CheckpointError, match="does not fit"):
        mx.load_checkpoint(path, other)
    for k, v in before.items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        mx.load_checkpoint(tmp_path / "nope.npz", tiny_model(0))
