"""The side-by-side table, and the command line for Inception V3, --polyak and --fc-layers."""
import io
import subprocess
import sys

import numpy as np
import pytest

import minixception as mx
from minixception import nn
from minixception.cli import main
from minixception.compare import compare
from minixception.models.inception_v3 import UpsampleNearest
from minixception.runs import build_model
from minixception.train import read_metrics

TINY = ["--subset", "48", "--batch-size", "16", "--width", "0.25", "--middle-blocks", "1", "--no-progress"]


def test_compare_counts_at_299_without_timing():
    out = io.StringIO()
    rows = compare(timing=False, file=out)
    x, i = rows["Xception"], rows["Inception V3"]
    assert (x["params"], i["params"]) == (22_855_952, 23_817_352)
    assert (x["params_with_bn_stats"], i["params_with_bn_stats"]) == (22_910_480, 23_851_784)
    assert 8.3e9 < x["mult_adds"] < 8.4e9 and 5.6e9 < i["mult_adds"] < 5.8e9
    assert x["fc_params"] == i["fc_params"] == 27_222_016
    text = out.getvalue()
    assert "23,626,728" in text and "22,855,952" in text and "8.36 G" in text and "5.71 G" in text
    assert x["forward_s"] is None and "not measured" in text


def test_compare_timing_small_input_names_the_machine():
    out = io.StringIO()
    rows = compare(input_size=75, batch_size=2, repeats=1, fc_layers=(), file=out)
    for name in ("Xception", "Inception V3"):
        assert rows[name]["forward_s"] > 0 and rows[name]["train_step_s"] > 0
        assert "fc_params" not in rows[name]
    text = out.getvalue()
    assert "logical CPUs" in text and rows["machine"] in text and " ms" in text
    with pytest.raises(ValueError, match="input_size must be an int >= 75"):
        compare(input_size=32, timing=False)


def test_upsample_nearest_forward_and_gradient(rng):
    up = UpsampleNearest(3)
    x = rng.normal(size=(2, 2, 3, 4))
    y = up(x)
    assert y.shape == (2, 6, 9, 4)
    np.testing.assert_array_equal(y[:, 3:6, 6:9], np.broadcast_to(x[:, 1:2, 2:3], (2, 3, 3, 4)))
    dy = rng.normal(size=y.shape)
    dx = up.backward(dy)
    h, num = 1e-5, np.zeros_like(x)       # float64 central differences of sum(y * dy)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        a = np.sum(up(x) * dy)
        x[idx] = old - h
        b = np.sum(up(x) * dy)
        x[idx] = old
        num[idx] = (a - b) / (2 * h)
    assert np.abs(num - dx).max() / (np.abs(num).max() + np.abs(dx).max()) < 1e-7


def test_build_model_inceptionv3_trains_on_32x32():
    m = build_model(dict(model="inceptionv3", seed=0, dropout=0.5), num_classes=10, input_shape=(32, 32, 3))
    assert isinstance(m[0], UpsampleNearest) and m[0].factor == 3
    assert mx.count_params(m) == 23_817_352 - 2048 * 990 - 990        # 10 classes
    assert "conv2d/kernel" in m.state_dict() and "dropout" in [x.name for x in m.modules()]
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    y = m(x)
    assert y.shape == (2, 10)
    assert m.backward(np.ones_like(y) / 2).shape == x.shape


def test_summary_inceptionv3(capsys):
    assert main(["summary", "--model", "inceptionv3"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "(None, 149, 149, 32)" in rows["conv2d"] and "(None, 8, 8, 192)" in rows["conv2d_93"]
    assert "Total params: 23,851,784" in out and "Trainable params: 23,817,352" in out


def test_train_polyak_and_fc_layers_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--polyak", "0.99", "--fc-layers", "8", "8", "--out", str(out),
                 *TINY]) == 0
    rows = read_metrics(out / "metrics.csv")
    assert 0.0 <= rows[0]["polyak_test_acc"] <= 1.0 and rows[0]["polyak_test_loss"] > 0
    assert "Polyak test loss" in capsys.readouterr().out
    s = mx.checkpoint.read_meta(out / "checkpoint.npz")["settings"]
    assert s["polyak"] == 0.99 and s["fc_layers"] == [8, 8]
    m = build_model(s)
    assert [x.out_features for x in m.modules() if isinstance(x, nn.Dense)] == [8, 8, 10]
    # the resume rebuilds the same model and keeps averaging
    assert main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert mx.checkpoint.read_meta(out / "checkpoint.npz")["polyak"]["updates"] == 2 * 3   # 48 images / 16


def test_help_shows_the_new_features():
    top = subprocess.run([sys.executable, "-m", "minixception", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert top.returncode == 0 and "compare" in top.stdout
    train = subprocess.run([sys.executable, "-m", "minixception", "train", "--help"], capture_output=True,
                           text=True, timeout=120)
    for flag in ("--polyak", "--fc-layers", "inceptionv3", "slow on a CPU"):
        assert flag in " ".join(train.stdout.split()), flag
    comp = subprocess.run([sys.executable, "-m", "minixception", "compare", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert "--no-timing" in comp.stdout and "--batch-size" in comp.stdout
