"""Keras legacy HDF5 weights: the loader on files these tests write in that layout, the download
path with a fake downloader (never the network), and the ImageNet helpers.

The files imitate Keras's ``xception_weights_tf_dim_ordering_tf_kernels[_notop].h5``: all 134
layers (132 without top) listed in ``layer_names`` in Keras's order, weightless layers present
with empty ``weight_names``, old Keras-1 auto-names (``separableconvolution2d_7``...) numbered in
an order that is *not* the file's order, weights named ``<layer>_W:0`` / ``..._running_std:0``.
"""
import hashlib
import os
import urllib.error

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

import minixception as mx  # noqa: E402
from minixception.models import keras_weights as kw  # noqa: E402

from helpers import KERAS_LAYERS, our_name  # noqa: E402

# Keras-1 class names and weight suffixes, per Keras 3 class of the reference table
OLD_CLASS = {"InputLayer": "input", "Conv2D": "convolution2d", "SeparableConv2D": "separableconvolution2d",
             "BatchNormalization": "batchnormalization", "Activation": "activation",
             "MaxPooling2D": "maxpooling2d", "Add": "merge", "GlobalAveragePooling2D": "globalaveragepooling2d",
             "Dense": "dense"}
OLD_WEIGHT = {"kernel": "W", "bias": "b", "depthwise_kernel": "depthwise_kernel",
              "pointwise_kernel": "pointwise_kernel", "gamma": "gamma", "beta": "beta",
              "moving_mean": "running_mean", "moving_variance": "running_std"}


def write_legacy_h5(path, state, include_top=True, seed=0, modern_names=False, edit=None):
    """Write ``state`` (our state dict) in Keras's legacy layout; returns the file's layer names.

    ``edit(layer_index, weight_name, array) -> array`` may tamper with one weight.
    """
    layers = KERAS_LAYERS if include_top else [l for l in KERAS_LAYERS if l[0] not in ("avg_pool", "predictions")]
    rng = np.random.default_rng(seed)
    # auto-numbers per class in a shuffled creation order (so they do not follow the file order)
    names = []
    counters = {}
    order = rng.permutation(len(layers))
    numbers = [0] * len(layers)
    for i in order:
        cls = OLD_CLASS[layers[i][1]]
        counters[cls] = counters.get(cls, 0) + 1
        numbers[i] = counters[cls]
    with h5py.File(path, "w") as f:
        for i, (name, cls, _, weights) in enumerate(layers):
            lname = name if modern_names else f"{OLD_CLASS[cls]}_{numbers[i]}"
            names.append(lname)
            g = f.create_group(lname)
            wnames = []
            for w, shape in weights:
                wn = f"{lname}/{w}:0" if modern_names else f"{lname}_{OLD_WEIGHT[w]}:0"
                arr = state[f"{our_name(name)}/{w}"]
                assert arr.shape == shape
                if edit is not None:
                    arr = edit(i, w, arr)
                g.create_dataset(wn, data=arr)
                wnames.append(wn.encode("utf8"))
            # as Keras's save_attributes_to_hdf5_group: fixed-length bytes, an empty array when weightless
            g.attrs["weight_names"] = np.array(wnames, dtype="S") if wnames else np.asarray([])
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names], dtype="S")
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"1.2.2"
    return names


@pytest.fixture(scope="module")
def source():
    """A full Xception with random weights *and* random BN moving statistics."""
    m = mx.models.Xception(rng=11)
    rng = np.random.default_rng(5)
    sd = m.state_dict()
    for k in sd:
        if k.endswith(("moving_mean", "beta")):
            sd[k] = rng.normal(0, 0.1, sd[k].shape).astype("float32")
        elif k.endswith(("moving_variance", "gamma")):
            sd[k] = rng.uniform(0.5, 1.5, sd[k].shape).astype("float32")
    m.load_state_dict(sd)
    return m


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("h5")
    sd = source.state_dict()
    top, notop = d / "top.h5", d / "notop.h5"
    names = write_legacy_h5(top, sd, include_top=True)
    write_legacy_h5(notop, sd, include_top=False, seed=1)
    return {"top": top, "notop": notop, "names": names, "state": sd}


def assert_same_state(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_the_written_file_looks_like_keras_legacy(files):
    names = files["names"]
    assert len(names) == 134
    # auto-numbers are not in file order: the names cannot be used for matching
    seps = [n for n in names if n.startswith("separableconvolution2d_")]
    assert len(seps) == 34 and seps != sorted(seps, key=lambda n: int(n.rsplit("_", 1)[1]))
    with h5py.File(files["top"], "r") as f:
        assert len(f[names[0]].attrs["weight_names"]) == 0            # input layer: no weights
        bn = [n for n in names if n.startswith("batchnormalization_")][0]
        assert any(w.decode().endswith("running_std:0") for w in f[bn].attrs["weight_names"])


def test_load_by_position_round_trip(files):
    target = mx.models.Xception(rng=99)
    kw.load_keras_weights(target, files["top"])
    assert_same_state(target.state_dict(), files["state"])


def test_notop_file_and_weights_path_argument(files):
    m = mx.models.Xception(include_top=False, weights=str(files["notop"]))
    expected = {k: v for k, v in files["state"].items() if not k.startswith("predictions/")}
    assert_same_state(m.state_dict(), expected)
    m2 = mx.models.Xception(weights=files["top"])
    assert_same_state(m2.state_dict(), files["state"])


def test_modern_weight_names_load_too(files, tmp_path):
    p = tmp_path / "modern.h5"
    write_legacy_h5(p, files["state"], modern_names=True)
    m = mx.models.Xception(rng=3)
    kw.load_keras_weights(m, p)
    assert_same_state(m.state_dict(), files["state"])


def test_notop_file_into_model_with_top_is_refused(files):
    m = mx.models.Xception(rng=3)
    before = m.state_dict()
    with pytest.raises(kw.WeightFileError, match=r"80 layers with weights.*expects 81.*_notop"):
        kw.load_keras_weights(m, files["notop"])
    assert_same_state(m.state_dict(), before)                       # nothing half-loaded


def test_wrong_shape_is_refused_and_nothing_loaded(files, tmp_path):
    p = tmp_path / "wrong.h5"
    target_layer = [i for i, l in enumerate(KERAS_LAYERS) if l[0] == "block7_sepconv2"][0]

    def edit(i, w, arr):
        return arr[:, :, :, :-1] if (i == target_layer and w == "pointwise_kernel") else arr
    write_legacy_h5(p, files["state"], edit=edit)
    m = mx.models.Xception(rng=3)
    before = m.state_dict()
    with pytest.raises(kw.WeightFileError, match=r"\(1, 1, 728, 727\).*block7_sepconv2/pointwise_kernel.*\(1, 1, 728, 728\)"):
        kw.load_keras_weights(m, p)
    assert_same_state(m.state_dict(), before)


def test_truncated_file_is_refused_and_nothing_loaded(files, tmp_path):
    p = tmp_path / "truncated.h5"
    data = files["top"].read_bytes()
    p.write_bytes(data[: len(data) // 2])
    m = mx.models.Xception(rng=3)
    before = m.state_dict()
    with pytest.raises(kw.WeightFileError, match="truncated"):
        kw.load_keras_weights(m, p)
    assert_same_state(m.state_dict(), before)


def test_not_a_weight_file(tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(kw.WeightFileError, match="layer_names"):
        kw.load_keras_weights(mx.models.Xception(width=0.0625, middle_blocks=1, rng=0), p)
    q = tmp_path / "text.h5"
    q.write_text("not hdf5")
    with pytest.raises(kw.WeightFileError, match="HDF5"):
        kw.load_keras_weights(mx.models.Xception(width=0.0625, middle_blocks=1, rng=0), q)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        mx.models.Xception(weights=str(tmp_path / "missing.h5"))


def test_weights_in_wrong_order_within_a_layer_are_refused(files, tmp_path):
    """A BN whose weights come as (beta, gamma, ...) is caught by the names, not only shapes."""
    p = tmp_path / "swapped.h5"
    write_legacy_h5(p, files["state"])
    with h5py.File(p, "r+") as f:
        bn = [n.decode() for n in f.attrs["layer_names"] if n.startswith(b"batchnormalization_")][0]
        w = list(f[bn].attrs["weight_names"])
        f[bn].attrs["weight_names"] = [w[1], w[0]] + w[2:]
    with pytest.raises(kw.WeightFileError, match="beta"):
        kw.load_keras_weights(mx.models.Xception(rng=0), p)


def test_swapped_block13_bns_are_invisible_to_a_shape_check(files, tmp_path):
    """Documents the limit of a positional match: block13_sepconv2_bn and block13_shortcut_bn are
    both 1024-wide, so a file that swapped them loads -- with the two BNs exchanged."""
    p = tmp_path / "swap13.h5"
    idx = {l[0]: i for i, l in enumerate(KERAS_LAYERS)}
    a, b = idx["block13_sepconv2_bn"], idx["batch_normalization_3"]
    sd = files["state"]

    def edit(i, w, arr):
        if i == a:
            return sd[f"block13_shortcut_bn/{w}"]
        if i == b:
            return sd[f"block13_sepconv2_bn/{w}"]
        return arr
    write_legacy_h5(p, sd, edit=edit)
    m = mx.models.Xception(rng=0)
    kw.load_keras_weights(m, p)
    got = m.state_dict()
    np.testing.assert_array_equal(got["block13_sepconv2_bn/gamma"], sd["block13_shortcut_bn/gamma"])


# ---------------------------------------------------------------------------------------------
# weights="imagenet": download, checksum, cache -- with a fake downloader, never the network
# ---------------------------------------------------------------------------------------------
def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_offline_error_names_url_and_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path / "cache"))

    def offline(url, dest):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(kw, "_downloader", offline)
    with pytest.raises(kw.WeightsUnavailableError) as e:
        mx.models.Xception(weights="imagenet")
    msg = str(e.value)
    assert kw.BASE_URL + kw.FILENAMES[True] in msg
    assert str(tmp_path / "cache" / kw.FILENAMES[True]) in msg
    assert not list((tmp_path / "cache").glob("*"))               # no half file left behind


def test_unreachable_url_with_the_real_downloader(monkeypatch, tmp_path):
    """The real urllib path against a URL that cannot resolve (no network needed)."""
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path))
    monkeypatch.setattr(kw, "BASE_URL", "http://127.0.0.1:9/")    # the discard port: refused at once
    with pytest.raises(kw.WeightsUnavailableError, match="127.0.0.1:9"):
        kw.get_imagenet_weights(include_top=False)


def test_download_checks_md5_caches_and_loads(monkeypatch, tmp_path, files):
    cache = tmp_path / "c"
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(cache))
    calls = []

    def fake(url, dest):
        calls.append(url)
        with open(files["notop"], "rb") as src, open(dest, "wb") as out:
            out.write(src.read())
    monkeypatch.setattr(kw, "_downloader", fake)
    # the real checksum does not match our stand-in file: refused, nothing cached
    with pytest.raises(kw.WeightsUnavailableError, match=kw.MD5[False]):
        mx.models.Xception(include_top=False, weights="imagenet")
    assert not list(cache.glob("*"))
    # with the stand-in's checksum it is downloaded once, cached, and loaded
    monkeypatch.setitem(kw.MD5, False, _md5(files["notop"]))
    m = mx.models.Xception(include_top=False, weights="imagenet")
    assert (cache / kw.FILENAMES[False]).exists()
    assert calls == [kw.BASE_URL + kw.FILENAMES[False]] * 2
    np.testing.assert_array_equal(m.state_dict()["block1_conv1/kernel"], files["state"]["block1_conv1/kernel"])
    mx.models.Xception(include_top=False, weights="imagenet")       # from the cache: no new download
    assert len(calls) == 2


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIXCEPTION_CACHE", raising=False)
    assert kw.cache_dir() == __import__("pathlib").Path.home() / ".cache" / "minixception"
    monkeypatch.setenv("MINIXCEPTION_CACHE", str(tmp_path))
    assert kw.cache_dir() == tmp_path


# ---------------------------------------------------------------------------------------------
# ImageNet helpers
# ---------------------------------------------------------------------------------------------
def test_class_file_has_1000_lines():
    path = os.path.join(os.path.dirname(kw.__file__), "imagenet_classes.txt")
    lines = open(path, encoding="utf8").read().splitlines()
    assert len(lines) == 1000
    assert lines[0] == "n01440764\ttench" and lines[999] == "n15075141\ttoilet_tissue"
    wnids = [l.split("\t")[0] for l in lines]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)      # Keras's index = sorted wnids
    assert kw.imagenet_classes()[281] == ("n02123045", "tabby")


def test_preprocess_input():
    x = np.array([[0, 127.5, 255]], dtype=np.float32)
    np.testing.assert_allclose(kw.preprocess_input(x), [[-1, 0, 1]])
    u = np.array([0, 255], dtype=np.uint8)
    y = kw.preprocess_input(u)
    assert y.dtype == np.float32 and y.tolist() == [-1.0, 1.0]
    d = np.array([51.0])
    assert kw.preprocess_input(d).dtype == np.float64
    assert d[0] == 51.0                                              # input untouched


def test_decode_predictions_logits_and_probabilities():
    logits = np.full((2, 1000), -5.0)
    logits[0, 281], logits[0, 1] = 4.0, 3.0
    logits[1, 999] = 1.0
    out = kw.decode_predictions(logits, top=3)
    assert [r[1] for r in out[0][:2]] == ["tabby", "goldfish"]
    assert out[1][0][:2] == ("n15075141", "toilet_tissue")
    assert 0 < out[0][0][2] < 1 and out[0][0][2] > out[0][1][2]        # softmax applied to logits
    probs = np.zeros((1, 1000))
    probs[0, 0] = 0.7
    probs[0, 2] = 0.3
    top = kw.decode_predictions(probs, top=2)[0]
    assert top == [("n01440764", "tench", 0.7), ("n01484850", "great_white_shark", 0.3)]
    with pytest.raises(ValueError, match=r"\(N, 1000\)"):
        kw.decode_predictions(np.zeros((2, 10)))
