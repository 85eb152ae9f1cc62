"""Keras itself as the oracle: its Xception and ours, given the same random weights (and random
BN moving statistics), must give the same logits to float32 precision.

Runs where Keras is installed (CI: Keras 3 on the PyTorch backend). A 71x71 input -- the
smallest Keras accepts -- exercises every layer, TF "same" padding at odd sizes included
(71 -> 35 -> 33 -> 17 -> 9 -> 5 -> 3).
"""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import minixception as mx  # noqa: E402

SHORTCUTS = [f"block{b}_shortcut{s}" for b in (2, 3, 4, 13) for s in ("", "_bn")]


def _keras_to_ours(kmodel):
    """{our layer name: keras layer}. Keras auto-names the shortcut conv/BN pairs (conv2d, conv2d_1...,
    with suffixes that depend on what else the session built), so those are taken in order."""
    mapping, auto = {}, []
    for layer in kmodel.layers:
        if not layer.weights:
            continue
        if layer.name.startswith("block") or layer.name == "predictions":
            mapping[layer.name] = layer
        else:
            auto.append(layer)
    assert len(auto) == len(SHORTCUTS)
    assert [type(l).__name__ for l in auto] == ["Conv2D", "BatchNormalization"] * 4
    mapping.update(zip(SHORTCUTS, auto))
    return mapping


def test_logits_agree_with_keras(include_top=True):
    if keras.backend.backend() != "torch":
        pytest.skip(f"this check runs Keras on the PyTorch backend, got {keras.backend.backend()}")
    kwargs = dict(weights=None, input_shape=(71, 71, 3), include_top=include_top)
    if include_top:
        kwargs["classifier_activation"] = None          # logits, as ours
    kmodel = keras.applications.Xception(**kwargs)
    ours = mx.models.Xception(input_shape=(71, 71, 3), include_top=include_top, rng=0)
    rng = np.random.default_rng(7)

    sd = {}
    for name, layer in _keras_to_ours(kmodel).items():
        new = []
        for w in layer.weights:
            wname = w.path.split("/")[-1]
            shape = tuple(w.shape)
            if wname in ("gamma", "moving_variance"):
                v = rng.uniform(0.5, 1.5, shape)
            elif wname in ("beta", "moving_mean", "bias"):
                v = rng.normal(0, 0.2, shape)
            else:                                           # kernels: variance-preserving scale
                fan_in = int(np.prod(shape[:-1])) if wname != "depthwise_kernel" else int(np.prod(shape[:2]))
                v = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
            v = v.astype("float32")
            new.append(v)
            sd[f"{name}/{wname}"] = v
        layer.set_weights(new)
    ours.load_state_dict(sd)                               # also proves names and shapes coincide

    x = rng.uniform(-1, 1, (2, 71, 71, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(kmodel(x, training=False))
    ours.eval()
    with mx.nn.inference_mode():
        got = ours(x)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1e-3                                    # a real signal, not all zeros
    err = np.abs(got - expected).max() / scale
    assert err < 1e-4, f"max relative difference {err:.2e}"
