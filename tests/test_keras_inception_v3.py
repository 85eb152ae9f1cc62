"""Keras as the oracle for Inception V3: Keras's model with random weights (and random BN moving
statistics) is saved by Keras's own legacy HDF5 writer, loaded into ours with ``weights=PATH``
(by position, in Keras's graph order), and both must give the same logits.

A 75x75 input (the smallest Keras accepts) keeps it quick: 75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1.
Many BNs of a module have the same shape (mixed4 has eight 192-wide ones), so a loader that got
Keras's order wrong would load without complaint -- and fail here.
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
keras = pytest.importorskip("keras")

import minixception as mx  # noqa: E402
from minixception.models import keras_weights as kw  # noqa: E402

SIZE = (75, 75, 3)


def _randomise(kmodel, rng):
    for layer in kmodel.layers:
        new = []
        for w in layer.weights:
            wname, shape = w.path.split("/")[-1], tuple(w.shape)
            if wname == "moving_variance":
                v = rng.uniform(0.5, 1.5, shape)
            elif wname in ("beta", "moving_mean", "bias"):
                v = rng.normal(0, 0.2, shape)
            else:                                           # kernels: variance-preserving scale
                v = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
            new.append(v.astype("float32"))
        if new:
            layer.set_weights(new)


@pytest.fixture(scope="module")
def keras_pair(tmp_path_factory):
    if keras.backend.backend() != "torch":
        pytest.skip(f"this check runs Keras on the PyTorch backend, got {keras.backend.backend()}")
    from keras.src.legacy.saving import legacy_h5_format
    kmodel = keras.applications.InceptionV3(weights=None, input_shape=SIZE, classifier_activation=None)
    _randomise(kmodel, np.random.default_rng(7))
    path = tmp_path_factory.mktemp("iv3") / "inception_v3_random.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)   # Keras's own writer
    return kmodel, path


def test_counts_and_layer_order_equal_keras(keras_pair):
    kmodel, _ = keras_pair
    ours = mx.models.InceptionV3(input_shape=SIZE, rng=0)
    assert mx.count_params(ours, include_buffers=True) == kmodel.count_params() == 23_851_784
    assert len(kmodel.layers) == 313
    # Keras numbers its auto-names per session: compare the kinds and shapes in order, and the
    # names up to the session's numbering offset
    order = kw.keras_layer_order(ours)
    klayers = kmodel.layers[1:]
    assert len(order) == len(klayers) == 312
    for (path, m), kl in zip(order, klayers):
        shapes = sorted(tuple(w.shape) for w in kl.weights)
        ours_shapes = sorted(tuple(a.shape) for a in [p.data for p in m._params.values()] + list(m._buffers.values()))
        assert shapes == ours_shapes, (path, kl.name)
        name = getattr(m, "keras_name", None) or path
        assert name.rstrip("0123456789_") == kl.name.rstrip("0123456789_"), (name, kl.name)


def test_logits_agree_with_keras_through_its_legacy_h5(keras_pair):
    kmodel, path = keras_pair
    ours = mx.models.InceptionV3(input_shape=SIZE, weights=str(path))
    x = np.random.default_rng(3).uniform(-1, 1, (2,) + SIZE).astype("float32")
    expected = keras.ops.convert_to_numpy(kmodel(x, training=False))
    ours.eval()
    with mx.nn.inference_mode():
        got = ours(x)
    assert got.shape == expected.shape == (2, 1000)
    scale = np.abs(expected).max()
    assert scale > 1e-2                                    # a real signal, not all zeros
    err = np.abs(got - expected).max() / scale
    assert err < 1e-4, f"max relative difference {err:.2e}"


def test_notop_features_agree_with_keras(keras_pair, tmp_path):
    kmodel, _ = keras_pair
    from keras.src.legacy.saving import legacy_h5_format
    knotop = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=SIZE)
    for a, b in zip(knotop.layers, kmodel.layers):          # same graph: copy the weights over
        a.set_weights(b.get_weights())
    path = tmp_path / "notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, knotop)
    ours = mx.models.InceptionV3(include_top=False, input_shape=SIZE, weights=str(path))
    x = np.random.default_rng(4).uniform(-1, 1, (1,) + SIZE).astype("float32")
    expected = keras.ops.convert_to_numpy(knotop(x, training=False))
    ours.eval()
    with mx.nn.inference_mode():
        got = ours(x)
    assert got.shape == expected.shape == (1, 1, 1, 2048)
    err = np.abs(got - expected).max() / np.abs(expected).max()
    assert err < 1e-4, f"max relative difference {err:.2e}"
    with pytest.raises(kw.WeightFileError, match="include_top"):   # the top file into a no-top model
        mx.models.InceptionV3(include_top=False, input_shape=SIZE, weights=str(keras_pair[1]))
