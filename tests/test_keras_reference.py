"""Keras's Xception, layer by layer, against ours: names, weight shapes, order, output shapes.

``KERAS_LAYERS`` is Keras 3's ``keras.applications.Xception()`` (weights=None, 299x299x3) written
out from ``model.layers``: (name, class, output shape without the batch, ((weight, shape), ...)).
It is the independent oracle here (written out once, with Keras, and kept in this file), and
the layer order that Keras's legacy HDF5 weight files follow. Keras auto-names the four shortcut
convolutions and their BNs; ours are ``block{2,3,4,13}_shortcut`` / ``_shortcut_bn``.
"""
import numpy as np
import pytest

import minixception as mx
from minixception.summary import trace_shapes

from helpers import KERAS_LAYERS, WEIGHTED, our_name


@pytest.fixture(scope="module")
def xception():
    return mx.models.Xception(rng=0)


def test_reference_table_itself():
    assert len(KERAS_LAYERS) == 134
    assert len(WEIGHTED) == 81          # 36 convs + 4 shortcuts, a BN after each, the dense
    total = sum(int(np.prod(s)) for _, _, w in WEIGHTED for _, s in w)
    assert total == 22_910_480


def test_state_dict_keys_and_shapes_are_keras(xception):
    sd = xception.state_dict()
    expected = {f"{name}/{w}": shape for name, _, ws in WEIGHTED for w, shape in ws}
    assert set(sd) == set(expected)
    bad = {k: (sd[k].shape, s) for k, s in expected.items() if sd[k].shape != s}
    assert not bad


def test_weighted_layer_order_is_keras_order(xception):
    """The HDF5 loader matches by position: our forward order must be Keras's model.layers order."""
    from minixception.models.keras_weights import keras_weight_order
    order = keras_weight_order(xception)
    assert [p for p, _ in order] == [n for n, _, _ in WEIGHTED]
    for (path, keys), (name, _, ws) in zip(order, WEIGHTED):
        assert keys == [f"{name}/{w}" for w, _ in ws]


def test_layer_types_and_keras_settings(xception):
    layers = dict(xception.leaf_layers())
    kinds = {"Conv2D": mx.nn.Conv2D, "SeparableConv2D": mx.nn.SeparableConv2D,
             "BatchNormalization": mx.nn.BatchNorm2D, "Dense": mx.nn.Dense}
    for name, typ, _ in WEIGHTED:
        m = layers[name]
        assert isinstance(m, kinds[typ]), name
        if isinstance(m, mx.nn.BatchNorm2D):
            assert (m.eps, m.momentum) == (1e-3, 0.99)
        if isinstance(m, (mx.nn.Conv2D, mx.nn.SeparableConv2D)):
            assert m.bias is None, f"{name} must have no bias (Keras use_bias=False)"
        if isinstance(m, mx.nn.SeparableConv2D):
            assert (m.kernel_size, m.stride, m.padding, m.intermediate) == ((3, 3), 1, "same", None)
    assert (layers["block1_conv1"].stride, layers["block1_conv1"].padding) == (2, "valid")
    assert layers["block1_conv2"].padding == "valid"
    for b in (2, 3, 4, 13):
        sc = layers[f"block{b}_shortcut"]
        assert (sc.kernel_size, sc.stride, sc.padding) == ((1, 1), 2, "same")


def test_counts_of_the_paper(xception):
    layers = xception.leaf_layers()
    convs = [n for n, m in layers if isinstance(m, (mx.nn.Conv2D, mx.nn.SeparableConv2D))
             and not n.endswith("_shortcut")]
    shortcuts = [n for n, m in layers if n.endswith("_shortcut")]
    assert len(convs) == 36
    assert sorted(shortcuts) == sorted(f"block{b}_shortcut" for b in (2, 3, 4, 13))
    assert len({n.split("_")[0] for n in convs}) == 14          # 14 modules: block1 .. block14


def test_every_output_shape_at_299_matches_keras(xception):
    """One batch-1 forward pass in inference mode (about a second) checks all 133 layer outputs."""
    records, out = trace_shapes(xception, (299, 299, 3))
    ours = {name: s[1:] for name, _, _, s in records}
    for name, typ, shape, _ in KERAS_LAYERS:
        if typ in ("InputLayer", "Add"):
            continue                       # no leaf layer of ours: the input, the Residual's add
        if typ == "Activation":
            assert ours[name] == shape, name
            continue
        assert ours[our_name(name)] == shape, name
    assert ours["block14_sepconv2_act"] == (10, 10, 2048)
    assert out == (1, 1000)
    assert all(not m.holds_cache for m in xception.modules())     # inference_mode kept nothing
