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

KERAS_LAYERS = [
    ('input_layer', 'InputLayer', (299, 299, 3), ()),
    ('block1_conv1', 'Conv2D', (149, 149, 32), (('kernel', (3, 3, 3, 32)),)),
    ('block1_conv1_bn', 'BatchNormalization', (149, 149, 32), (('gamma', (32,)), ('beta', (32,)), ('moving_mean', (32,)), ('moving_variance', (32,)))),
    ('block1_conv1_act', 'Activation', (149, 149, 32), ()),
    ('block1_conv2', 'Conv2D', (147, 147, 64), (('kernel', (3, 3, 32, 64)),)),
    ('block1_conv2_bn', 'BatchNormalization', (147, 147, 64), (('gamma', (64,)), ('beta', (64,)), ('moving_mean', (64,)), ('moving_variance', (64,)))),
    ('block1_conv2_act', 'Activation', (147, 147, 64), ()),
    ('block2_sepconv1', 'SeparableConv2D', (147, 147, 128), (('depthwise_kernel', (3, 3, 64, 1)), ('pointwise_kernel', (1, 1, 64, 128)))),
    ('block2_sepconv1_bn', 'BatchNormalization', (147, 147, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('block2_sepconv2_act', 'Activation', (147, 147, 128), ()),
    ('block2_sepconv2', 'SeparableConv2D', (147, 147, 128), (('depthwise_kernel', (3, 3, 128, 1)), ('pointwise_kernel', (1, 1, 128, 128)))),
    ('block2_sepconv2_bn', 'BatchNormalization', (147, 147, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('conv2d', 'Conv2D', (74, 74, 128), (('kernel', (1, 1, 64, 128)),)),
    ('block2_pool', 'MaxPooling2D', (74, 74, 128), ()),
    ('batch_normalization', 'BatchNormalization', (74, 74, 128), (('gamma', (128,)), ('beta', (128,)), ('moving_mean', (128,)), ('moving_variance', (128,)))),
    ('add', 'Add', (74, 74, 128), ()),
    ('block3_sepconv1_act', 'Activation', (74, 74, 128), ()),
    ('block3_sepconv1', 'SeparableConv2D', (74, 74, 256), (('depthwise_kernel', (3, 3, 128, 1)), ('pointwise_kernel', (1, 1, 128, 256)))),
    ('block3_sepconv1_bn', 'BatchNormalization', (74, 74, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('block3_sepconv2_act', 'Activation', (74, 74, 256), ()),
    ('block3_sepconv2', 'SeparableConv2D', (74, 74, 256), (('depthwise_kernel', (3, 3, 256, 1)), ('pointwise_kernel', (1, 1, 256, 256)))),
    ('block3_sepconv2_bn', 'BatchNormalization', (74, 74, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('conv2d_1', 'Conv2D', (37, 37, 256), (('kernel', (1, 1, 128, 256)),)),
    ('block3_pool', 'MaxPooling2D', (37, 37, 256), ()),
    ('batch_normalization_1', 'BatchNormalization', (37, 37, 256), (('gamma', (256,)), ('beta', (256,)), ('moving_mean', (256,)), ('moving_variance', (256,)))),
    ('add_1', 'Add', (37, 37, 256), ()),
    ('block4_sepconv1_act', 'Activation', (37, 37, 256), ()),
    ('block4_sepconv1', 'SeparableConv2D', (37, 37, 728), (('depthwise_kernel', (3, 3, 256, 1)), ('pointwise_kernel', (1, 1, 256, 728)))),
    ('block4_sepconv1_bn', 'BatchNormalization', (37, 37, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block4_sepconv2_act', 'Activation', (37, 37, 728), ()),
    ('block4_sepconv2', 'SeparableConv2D', (37, 37, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block4_sepconv2_bn', 'BatchNormalization', (37, 37, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('conv2d_2', 'Conv2D', (19, 19, 728), (('kernel', (1, 1, 256, 728)),)),
    ('block4_pool', 'MaxPooling2D', (19, 19, 728), ()),
    ('batch_normalization_2', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_2', 'Add', (19, 19, 728), ()),
    ('block5_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block5_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block5_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block5_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block5_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_3', 'Add', (19, 19, 728), ()),
    ('block6_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block6_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block6_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block6_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block6_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_4', 'Add', (19, 19, 728), ()),
    ('block7_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block7_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block7_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block7_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block7_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_5', 'Add', (19, 19, 728), ()),
    ('block8_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block8_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block8_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block8_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block8_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_6', 'Add', (19, 19, 728), ()),
    ('block9_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block9_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block9_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block9_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block9_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_7', 'Add', (19, 19, 728), ()),
    ('block10_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block10_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block10_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block10_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block10_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_8', 'Add', (19, 19, 728), ()),
    ('block11_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block11_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block11_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block11_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block11_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_9', 'Add', (19, 19, 728), ()),
    ('block12_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block12_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv2', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv2_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block12_sepconv3_act', 'Activation', (19, 19, 728), ()),
    ('block12_sepconv3', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block12_sepconv3_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('add_10', 'Add', (19, 19, 728), ()),
    ('block13_sepconv1_act', 'Activation', (19, 19, 728), ()),
    ('block13_sepconv1', 'SeparableConv2D', (19, 19, 728), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 728)))),
    ('block13_sepconv1_bn', 'BatchNormalization', (19, 19, 728), (('gamma', (728,)), ('beta', (728,)), ('moving_mean', (728,)), ('moving_variance', (728,)))),
    ('block13_sepconv2_act', 'Activation', (19, 19, 728), ()),
    ('block13_sepconv2', 'SeparableConv2D', (19, 19, 1024), (('depthwise_kernel', (3, 3, 728, 1)), ('pointwise_kernel', (1, 1, 728, 1024)))),
    ('block13_sepconv2_bn', 'BatchNormalization', (19, 19, 1024), (('gamma', (1024,)), ('beta', (1024,)), ('moving_mean', (1024,)), ('moving_variance', (1024,)))),
    ('conv2d_3', 'Conv2D', (10, 10, 1024), (('kernel', (1, 1, 728, 1024)),)),
    ('block13_pool', 'MaxPooling2D', (10, 10, 1024), ()),
    ('batch_normalization_3', 'BatchNormalization', (10, 10, 1024), (('gamma', (1024,)), ('beta', (1024,)), ('moving_mean', (1024,)), ('moving_variance', (1024,)))),
    ('add_11', 'Add', (10, 10, 1024), ()),
    ('block14_sepconv1', 'SeparableConv2D', (10, 10, 1536), (('depthwise_kernel', (3, 3, 1024, 1)), ('pointwise_kernel', (1, 1, 1024, 1536)))),
    ('block14_sepconv1_bn', 'BatchNormalization', (10, 10, 1536), (('gamma', (1536,)), ('beta', (1536,)), ('moving_mean', (1536,)), ('moving_variance', (1536,)))),
    ('block14_sepconv1_act', 'Activation', (10, 10, 1536), ()),
    ('block14_sepconv2', 'SeparableConv2D', (10, 10, 2048), (('depthwise_kernel', (3, 3, 1536, 1)), ('pointwise_kernel', (1, 1, 1536, 2048)))),
    ('block14_sepconv2_bn', 'BatchNormalization', (10, 10, 2048), (('gamma', (2048,)), ('beta', (2048,)), ('moving_mean', (2048,)), ('moving_variance', (2048,)))),
    ('block14_sepconv2_act', 'Activation', (10, 10, 2048), ()),
    ('avg_pool', 'GlobalAveragePooling2D', (2048,), ()),
    ('predictions', 'Dense', (1000,), (('kernel', (2048, 1000)), ('bias', (1000,)))),
]

# Keras's auto-names of the shortcut layers -> ours.
SHORTCUT_NAMES = {
    "conv2d": "block2_shortcut", "batch_normalization": "block2_shortcut_bn",
    "conv2d_1": "block3_shortcut", "batch_normalization_1": "block3_shortcut_bn",
    "conv2d_2": "block4_shortcut", "batch_normalization_2": "block4_shortcut_bn",
    "conv2d_3": "block13_shortcut", "batch_normalization_3": "block13_shortcut_bn",
}
# Keras weight names -> ours (identical, BN included).
WEIGHTED = [(SHORTCUT_NAMES.get(n, n), t, w) for n, t, _, w in KERAS_LAYERS if w]


def our_name(keras_name):
    return SHORTCUT_NAMES.get(keras_name, keras_name)


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
