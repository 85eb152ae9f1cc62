"""Inception V3 without Keras: Keras's counts, names, shapes, the graph order of its layers, the
optional FC head (also on Xception), the ImageNet download path (offline: a clear error)."""
import io
import urllib.error

import numpy as np
import pytest

import minixception as mx
from minixception import nn
from minixception.models import keras_weights as kw
from minixception.models.inception_v3 import KERAS_COUNTS, PAPER_PARAMS, paper_count_candidates


@pytest.fixture(scope="module")
def model():
    return mx.models.InceptionV3(rng=0)


def keras_layers(m):
    """The layers Keras would list: every leaf, every concatenation, and the input layer."""
    leaves = [x for x in m.modules() if not x._children and x is not m]
    joins = [x for x in m.modules() if isinstance(x, nn.Concat)]
    return leaves, joins


def test_keras_counts(model):
    assert mx.count_params(model) == KERAS_COUNTS["trainable"] == 23_817_352
    assert mx.count_params(model, include_buffers=True) == KERAS_COUNTS["total"] == 23_851_784
    leaves, joins = keras_layers(model)
    assert len(leaves) + len(joins) + 1 == KERAS_COUNTS["layers"] == 313
    kinds = {}
    for x in leaves:
        kinds[type(x).__name__] = kinds.get(type(x).__name__, 0) + 1
    assert kinds == {"Conv2D": 94, "BatchNorm2D": 94, "ReLU": 94, "MaxPool2D": 4, "AvgPool2D": 9,
                     "GlobalAvgPool2D": 1, "Dense": 1}
    assert len(joins) == 15
    notop = mx.models.InceptionV3(include_top=False, rng=0)
    assert mx.count_params(notop) == 23_817_352 - (2048 * 1000 + 1000)


def test_no_gamma_no_conv_bias_and_flat_keras_names(model):
    sd = model.state_dict()
    assert not [k for k in sd if k.endswith(("/gamma", "/bias")) and not k.startswith("predictions")]
    assert sd["conv2d/kernel"].shape == (3, 3, 3, 32)
    assert sd["conv2d_93/kernel"].shape == (1, 1, 2048, 192)
    assert sd["conv2d_35/kernel"].shape == (7, 1, 128, 128)          # mixed4's 7x1 (Keras's numbering)
    assert set(k.split("/")[1] for k in sd if k.startswith("batch_normalization_93/")) == {
        "beta", "moving_mean", "moving_variance"}
    assert sd["predictions/kernel"].shape == (2048, 1000)
    assert all(k.count("/") == 1 for k in sd)                        # flat "layer/weight" keys
    names = [x.keras_name for x in model.modules() if isinstance(x, nn.Concat)]
    assert names == [f"mixed{i}" for i in range(10)] + ["mixed9_0", "concatenate",     # modules(): pre-order
                                                        "mixed10", "mixed9_1", "concatenate_1"]


def test_bn_without_scale_is_bn_with_gamma_one(rng):
    x = rng.normal(size=(4, 5, 5, 6))
    a = nn.BatchNorm2D(6, scale=False, dtype="float64")
    b = nn.BatchNorm2D(6, dtype="float64")
    b.beta.data[...] = a.beta.data[...] = rng.normal(size=6)
    dy = rng.normal(size=x.shape)
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_array_equal(a.backward(dy), b.backward(dy))
    np.testing.assert_array_equal(a.beta.grad, b.beta.grad)
    assert [k for k, _ in a.named_parameters()] == ["beta"]
    np.testing.assert_array_equal(a.moving_mean, b.moving_mean)   # statistics updated the same way


def test_bn_without_scale_gradient(rng):
    """float64 central differences through the scale-free BN (beta and the input)."""
    bn = nn.BatchNorm2D(3, scale=False, dtype="float64")
    bn.beta.data[...] = rng.normal(size=3)
    x = rng.normal(size=(3, 4, 4, 3))
    dy = rng.normal(size=x.shape)
    bn(x)
    dx = bn.backward(dy)
    h = 1e-5
    for arr, grad in ((x, dx), (bn.beta.data, bn.beta.grad)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = np.sum(bn(x) * dy)
            arr[i] = old - h
            down = np.sum(bn(x) * dy)
            arr[i] = old
            num[i] = (up - down) / (2 * h)
        err = np.abs(num - grad).max() / max(1e-8, np.abs(num).max() + np.abs(grad).max())
        assert err < 1e-7, err


def test_shapes_at_299_through_the_summary(model):
    out = io.StringIO()
    text = mx.summary(model, (299, 299, 3), file=out)
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert "(None, 149, 149, 32)" in rows["conv2d"]
    assert "(None, 35, 35, 192)" in rows["max_pooling2d_1"]
    assert "(None, 17, 17, 160)" in rows["conv2d_41"]
    assert "(None, 8, 8, 192)" in rows["conv2d_93"]
    assert "(None, 1000)" in rows["predictions"]
    assert "Total params: 23,851,784" in text
    # multiply-adds at 299x299: about 5.7 G (the figure usually quoted for Inception V3)
    macs = int(text.split("Mult-adds per image:")[1].split()[0].replace(",", ""))
    assert 5.6e9 < macs < 5.8e9


def test_smallest_input_and_include_top_false():
    m = mx.models.InceptionV3(include_top=False, input_shape=(75, 75, 3), rng=1)
    m.eval()
    x = np.random.default_rng(0).normal(size=(1, 75, 75, 3)).astype("float32")
    with nn.inference_mode():
        y = m(x)
    assert y.shape == (1, 1, 1, 2048) and y.dtype == np.float32
    with pytest.raises(ValueError, match="at least 75x75"):
        mx.models.InceptionV3(input_shape=(74, 75, 3))
    with pytest.raises(ValueError, match="at least 75x75"):
        m(np.zeros((1, 71, 71, 3), "float32"))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        m(np.zeros((1, 75, 75, 1), "float32"))


def test_keras_layer_order_of_a_module_interleaves_branches(model):
    """Keras lists mixed0's layers by distance to the concatenation, then branch order."""
    order = [p for p, _ in kw.keras_layer_order(model)]
    start = order.index("conv2d_8")
    assert order[start:start + 10] == [
        "conv2d_8", "batch_normalization_8", "activation_8", "conv2d_6", "conv2d_9",
        "batch_normalization_6", "batch_normalization_9", "activation_6", "activation_9",
        "average_pooling2d"]
    # and for a plain chain (Xception) it is the forward order
    x = mx.models.Xception(width=0.0625, middle_blocks=1, rng=0)
    weighted = [p for p, m in x.named_modules() if not m._children and m._params]
    assert [p for p, m in kw.keras_layer_order(x) if not m._children and m._params] == weighted


def test_fc_layers_head_inception_and_xception():
    for cls, extra in ((mx.models.InceptionV3, {}), (mx.models.Xception, {})):
        base = cls(rng=0, **extra)
        fc = cls(rng=0, fc_layers=(4096, 4096), dropout=0.5, **extra)
        added = 2048 * 4096 + 4096 + 4096 * 4096 + 4096 + (4096 - 2048) * 1000
        assert mx.count_params(fc) - mx.count_params(base) == added == 27_222_016
        head = [m.name for m in fc][-7:]
        assert head == ["avg_pool", "fc1", "fc1_relu", "fc2", "fc2_relu", "dropout", "predictions"]
        sd = fc.state_dict()
        assert sd["fc1/kernel"].shape == (2048, 4096) and sd["fc2/kernel"].shape == (4096, 4096)
        assert sd["predictions/kernel"].shape == (4096, 1000)
        with pytest.raises(ValueError, match="fc_layers needs include_top"):
            cls(include_top=False, fc_layers=(4096,))
        with pytest.raises(ValueError, match="positive ints"):
            cls(fc_layers=(4096, 0))
        with pytest.raises(ValueError, match="no fc layers"):
            cls(fc_layers=(16,), weights="imagenet")


def test_fc_head_forward_backward_small():
    m = mx.models.Xception(width=0.0625, middle_blocks=1, input_shape=(71, 71, 3), num_classes=5,
                           fc_layers=(7, 6), rng=0)
    x = np.random.default_rng(1).normal(size=(2, 71, 71, 3)).astype("float32")
    y = m(x)
    assert y.shape == (2, 5)
    assert m.backward(np.ones_like(y)).shape == x.shape
    assert np.abs(m.state_dict()["fc1/kernel"]).sum() > 0 and dict(m.named_parameters())["fc2/kernel"].grad.any()


def test_paper_count_is_unexplained_by_the_candidates():
    rows = paper_count_candidates()
    assert rows[0] == ("Keras (trainable)", 23_817_352, 23_817_352 - PAPER_PARAMS)
    assert PAPER_PARAMS == 23_626_728
    assert all(diff != 0 for _, _, diff in rows)
    assert dict((r[0], r[1]) for r in rows)["+ BN gammas (scale=True, as Xception's BNs)"] == 23_817_352 + 17_216


def test_imagenet_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path / "cache"))

    def offline(url, dest):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(kw, "_downloader", offline)
    with pytest.raises(kw.WeightsUnavailableError) as e:
        mx.models.InceptionV3(include_top=False, weights="imagenet")
    msg = str(e.value)
    name = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert "Inception V3 ImageNet weights" in msg and "offline" in msg
    assert kw.INCEPTION_V3_BASE_URL + name in msg
    assert str(tmp_path / "cache" / name) in msg
    assert not list((tmp_path / "cache").glob("*"))


def test_imagenet_checks_md5_and_caches(monkeypatch, tmp_path):
    """A stand-in file (our own weights) through the download path: MD5 refused, then accepted."""
    h5py = pytest.importorskip("h5py")
    src = mx.models.InceptionV3(include_top=False, input_shape=(75, 75, 3), rng=3)
    f = tmp_path / "notop.h5"
    sd = src.state_dict()
    with h5py.File(f, "w") as h:                 # Keras's legacy layout, modern weight names
        names = []
        for path, keys in kw.keras_weight_order(src):
            g = h.create_group(path)
            for k in keys:
                g.create_dataset(k + ":0", data=sd[k])
            g.attrs["weight_names"] = np.array([(k + ":0").encode() for k in keys], dtype="S")
            names.append(path.encode())
        h.attrs["layer_names"] = np.array(names, dtype="S")
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path / "c"))
    calls = []

    def fake(url, dest):
        calls.append(url)
        with open(dest, "wb") as out:
            out.write(f.read_bytes())
    monkeypatch.setattr(kw, "_downloader", fake)
    with pytest.raises(kw.WeightsUnavailableError, match="bcbd6486424b2319ff4ef7d526e38f63"):
        mx.models.InceptionV3(include_top=False, weights="imagenet")
    monkeypatch.setitem(kw.INCEPTION_V3_MD5, False, kw.md5sum(f))
    m = mx.models.InceptionV3(include_top=False, input_shape=(75, 75, 3), weights="imagenet")
    assert (tmp_path / "c" / kw.INCEPTION_V3_FILENAMES[False]).exists()
    mx.models.InceptionV3(include_top=False, input_shape=(75, 75, 3), weights="imagenet")   # cached
    assert len(calls) == 2
    a, b = m.state_dict(), src.state_dict()
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
