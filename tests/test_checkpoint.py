"""Checkpoints: round trip, atomic write, refusal of truncated / foreign / pickled / mismatched files."""
import json
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


def test_missing_file_is_both_a_checkpoint_error_and_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        mx.load_checkpoint(tmp_path / "nope.npz", tiny_model(0))
    with pytest.raises(CheckpointError):
        mx.load_checkpoint(tmp_path / "nope.npz", tiny_model(0))


# -- the reader trusts nothing: only CheckpointError leaves load_checkpoint, and it changes nothing

def _write(path, entries):
    np.savez(path, **entries)
    return path


def _good_entries():
    m, opt = _trained(0)
    return {MARKER: np.array(1), "meta": np.array(json.dumps({"epoch": 1, "_optimizer": {
        "steps": 2, "lr": 0.1, "n_params": len(opt.params)}})),
        **{f"model/{k}": v for k, v in m.state_dict().items()},
        **{f"optim/momentum/{i}": b for i, b in enumerate(opt.buffers)}}


@pytest.mark.parametrize("case,match", [
    ("marker_text", "marker"), ("marker_shape", "marker"),
    ("meta_bad_json", "meta"), ("meta_not_object", "meta"), ("meta_missing", "meta"),
    ("optim_abc", "abc"), ("optim_999", "999"), ("optim_minus_one", "-1"), ("optim_meta_missing", "optimiser"),
    ("optim_meta_bad", "n_params"), ("entry_unexpected", "unexpected"),
])
def test_malformed_files_raise_only_checkpoint_error_and_change_nothing(tmp_path, case, match):
    e = _good_entries()
    if case == "marker_text":
        e[MARKER] = np.array("one")
    elif case == "marker_shape":
        e[MARKER] = np.array([1, 1])
    elif case == "meta_bad_json":
        e["meta"] = np.array("{not json")
    elif case == "meta_not_object":
        e["meta"] = np.array("[1, 2]")
    elif case == "meta_missing":
        del e["meta"]
    elif case == "optim_abc":
        e["optim/momentum/abc"] = e.pop("optim/momentum/0")
    elif case == "optim_999":
        e["optim/momentum/999"] = e.pop("optim/momentum/0")
    elif case == "optim_minus_one":
        e["optim/momentum/-1"] = e.pop(f"optim/momentum/{len([k for k in e if k.startswith('optim/')]) - 1}")
    elif case == "optim_meta_missing":
        e["meta"] = np.array(json.dumps({"epoch": 1}))
    elif case == "optim_meta_bad":
        e["meta"] = np.array(json.dumps({"_optimizer": {"steps": 2, "lr": 0.1, "n_params": "many"}}))
    elif case == "entry_unexpected":
        e["weights/x"] = np.zeros(2)
    path = _write(tmp_path / "c.npz", e)
    m, opt = _trained(1)
    before, bufs = params_of(m), [b.copy() for b in opt.buffers]
    with pytest.raises(CheckpointError, match=match):
        mx.load_checkpoint(path, m, opt)
    for k, v in before.items():
        np.testing.assert_array_equal(m.state_dict()[k], v, err_msg=k)
    for b, b0 in zip(opt.buffers, bufs):
        np.testing.assert_array_equal(b, b0)


def test_a_directory_and_a_random_file_get_exact_messages(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        mx.load_checkpoint(tmp_path, tiny_model(0))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="not a checkpoint") as e:
        mx.load_checkpoint(junk, tiny_model(0))
    assert "pickle" not in str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        mx.load_checkpoint(tmp_path / "nope.npz", tiny_model(0))


def test_a_bad_generator_state_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="bit_generator"):
        rng_from_state({"bit_generator": "seed", "state": {}})
    with pytest.raises(CheckpointError, match="state"):
        rng_from_state({"bit_generator": "PCG64", "state": "garbage"})
    with pytest.raises(CheckpointError):
        rng_from_state([1, 2])


def test_a_model_mismatch_names_a_few_keys_and_a_count(tmp_path):
    m, opt = _trained(0)
    path = mx.save_checkpoint(tmp_path / "c.npz", m, opt, epoch=1)
    other = mx.models.mini_xception(10, width=0.25, middle_blocks=1)
    with pytest.raises(CheckpointError, match=r"missing.*\d+ more") as e:
        mx.load_checkpoint(path, other)
    assert len(str(e.value)) < 600, str(e.value)


def test_checkpoints_get_the_file_mode_of_the_other_run_files(tmp_path):
    m, opt = _trained(0)
    old = os.umask(0o022)
    try:
        mx.save_checkpoint(tmp_path / "c.npz", m, opt, epoch=1)
        (tmp_path / "other.csv").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / "c.npz") == mode(tmp_path / "other.csv") == 0o644
