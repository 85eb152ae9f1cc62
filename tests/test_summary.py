"""mx.count_params and mx.summary: counts by hand for small models, the Xception totals."""
import io
import re

import numpy as np
import pytest

import minixception as mx


def _number(text, label):
    m = re.search(re.escape(label) + r"\s*([\d,]+)", text)
    assert m, f"{label!r} not in summary"
    return int(m.group(1).replace(",", ""))


def _row(text, name):
    for line in text.splitlines():
        if line.split() and line.split()[0] == name:
            return line.split()
    raise AssertionError(f"no row for {name}")


def test_count_params_by_hand():
    m = mx.nn.Sequential(mx.nn.Conv2D(3, 4, 3, name="c"), mx.nn.BatchNorm2D(4, name="bn"),
                         mx.nn.Dense(4, 2, name="d"))
    assert mx.count_params(m) == 3 * 3 * 3 * 4 + 4 + 2 * 4 + 4 * 2 + 2
    assert mx.count_params(m, include_buffers=True) == mx.count_params(m) + 2 * 4


def test_separable_conv_split_is_exact():
    h, w, c, f = 6, 5, 8, 16
    m = mx.nn.Sequential(mx.nn.SeparableConv2D(c, f, name="sep"), mx.nn.BatchNorm2D(f, name="sep_bn"),
                         mx.nn.ReLU(name="act"), name="tiny")
    out = io.StringIO()
    text = mx.summary(m, (h, w, c), file=out)
    assert out.getvalue().rstrip("\n") == text                 # printed to file, and returned
    row = _row(text, "sep")
    assert row[1] == "SeparableConv2D" and " ".join(row[2:6]) == "(None, 6, 5, 16)"
    assert int(row[-2].replace(",", "")) == 9 * c + c * f
    assert int(row[-1].replace(",", "")) == h * w * (9 * c + c * f)
    dw = re.search(r"depthwise.*?\s([\d,]+)\s+[\d.]+%\s+([\d,]+)", text)
    pw = re.search(r"pointwise.*?\s([\d,]+)\s+[\d.]+%\s+([\d,]+)", text)
    assert (int(dw.group(1).replace(",", "")), int(dw.group(2).replace(",", ""))) == (9 * c, h * w * 9 * c)
    assert (int(pw.group(1).replace(",", "")), int(pw.group(2).replace(",", ""))) == (c * f, h * w * c * f)
    assert _number(text, "Total params:") == 9 * c + c * f + 4 * f
    assert _number(text, "Trainable params:") == 9 * c + c * f + 2 * f


def test_summary_restores_modes_and_keeps_no_cache():
    m = mx.models.mini_xception(width=0.25, middle_blocks=1, rng=0)
    m.train()
    mx.summary(m, (32, 32, 3), file=io.StringIO())
    assert all(l.training for l in m.modules())
    assert all(not l.holds_cache for l in m.modules())
    assert all("forward" not in vars(l) for l in m.modules())   # the shape hooks are gone
    x = np.zeros((2, 32, 32, 3), np.float32)
    m.backward(np.ones_like(m(x)))                                # and the model still trains


def test_summary_of_xception_at_299():
    m = mx.models.Xception(rng=0)
    text = mx.summary(m, (299, 299, 3), file=io.StringIO())
    assert _number(text, "Total params:") == 22_910_480
    assert _number(text, "Trainable params:") == 22_855_952
    assert _number(text, "Non-trainable params:") == 54_528
    assert "(None, 10, 10, 2048)" in " ".join(_row(text, "block14_sepconv2_act"))
    assert _row(text, "block13_shortcut")[1] == "Conv2D"
    macs = _number(text, "Mult-adds per image:")
    assert 8.3e9 < macs < 8.4e9                                   # the often-quoted ~8.4 G for Xception
    # the paper's point: almost everything is in the pointwise convolutions
    pw = re.search(r"pointwise.*?\s([\d,]+)\s+([\d.]+)%\s+([\d,]+)\s+([\d.]+)%", text)
    assert float(pw.group(2)) > 80 and float(pw.group(4)) > 85
    assert len([l for l in text.splitlines() if "SeparableConv2D" in l]) == 34


def test_summary_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        mx.summary(mx.nn.ReLU(), "299")
