"""Keras's pretrained ImageNet weights for Xception and Inception V3: download, check, load; and
the ImageNet helpers.

The files (``xception_weights_tf_dim_ordering_tf_kernels.h5``,
``inception_v3_weights_tf_dim_ordering_tf_kernels.h5``; ``..._notop.h5`` without the head) are
Keras's *legacy* HDF5 layout:

    root attrs["layer_names"]       every layer of the model, in Keras's ``model.layers`` order
    root[layer].attrs["weight_names"]  that layer's weights in order (empty for ReLU, pooling, add...)
    root[layer][weight_name]        the array, already in Keras's layout (= ours)

The layer names inside are old Keras-1 auto-names (``separableconvolution2d_7``,
``batchnormalization_36``...) numbered in creation order, which is *not* the file's order, so
the names are useless for matching: Keras itself matches the weighted layers **by position**,
and so do we, in the order of Keras's ``model.layers`` (``keras_layer_order`` recomputes it from
the model's graph: for ``Xception`` it is the forward order, a block's shortcut conv and BN after
its second separable conv and BN; for ``InceptionV3`` it interleaves the branches of each
module). Every shape is checked.

Limit of a positional match: two consecutive layers with identical weight shapes cannot be told
apart by shape. In Xception that is block 13's ``block13_sepconv2_bn`` and ``block13_shortcut_bn``
(both 1024-wide BNs, with a MaxPool between them in the graph): a file that swapped them would
load without complaint. Only the file's order (Keras's graph order) guards against that.

BN variance: Keras-1 files call it ``running_std``, but it always held the *variance* (Keras 1's
batch norm fed it to ``K.batch_normalization`` as the variance, and Keras 2 loads it unchanged
into ``moving_variance``); it is loaded as is.
"""
from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request

import numpy as np

from ..cache import cache_dir, md5sum
from .. import nn
from ..backend import get_array_module, to_numpy

BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
FILENAMES = {True: "xception_weights_tf_dim_ordering_tf_kernels.h5",
             False: "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"}
MD5 = {True: "0a58e3b7378bc2990ea3b43d5981f1f6", False: "b0042744bf5b25fce3cb969f33bebb97"}

# Inception V3's files (Keras's ``keras.applications.InceptionV3``), same layout.
INCEPTION_V3_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
INCEPTION_V3_FILENAMES = {True: "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                          False: "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"}
INCEPTION_V3_MD5 = {True: "9a0d58056eeedaa3f26cb7ebd46da564", False: "bcbd6486424b2319ff4ef7d526e38f63"}


def _weight_source(model):
    """(display name, base URL, file names, MD5s) of a model's ImageNet files. Looked up at call
    time, so tests can patch the module's constants."""
    if model == "xception":
        return "Xception", BASE_URL, FILENAMES, MD5
    if model == "inception_v3":
        return "Inception V3", INCEPTION_V3_BASE_URL, INCEPTION_V3_FILENAMES, INCEPTION_V3_MD5
    raise ValueError(f"no ImageNet weights known for model {model!r}: expected 'xception' or 'inception_v3'")


class WeightFileError(ValueError):
    """A weight file that is not what the model needs (wrong layout, count, shape, truncated)."""


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be downloaded (offline?) or failed their checksum."""


# ---------------------------------------------------------------------------------------------
# download and cache
# ---------------------------------------------------------------------------------------------


def _urllib_download(url, dest, timeout=60):
    """Fetch ``url`` into the file ``dest`` (the one network call; tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


_downloader = _urllib_download   # module-level hook: tests monkeypatch it (no network in tests)


def get_imagenet_weights(include_top=True, cache=None, model="xception") -> pathlib.Path:
    """Path of Keras's ImageNet weight file for ``model`` ("xception" or "inception_v3"),
    downloading it into the cache the first time.

    The download goes to a temporary file, is MD5-checked, then renamed into place, so a
    failed or interrupted download never leaves a half file under the final name.
    Raises ``WeightsUnavailableError`` naming the URL and the cache path when offline.
    """
    label, base_url, filenames, md5s = _weight_source(model)
    name, want = filenames[bool(include_top)], md5s[bool(include_top)]
    url = base_url + name
    folder = pathlib.Path(cache) if cache is not None else cache_dir()
    path = folder / name
    if path.exists():
        got = md5sum(path)
        if got == want:
            return path
        # a stale or damaged copy: fetch it again rather than load garbage
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=folder)
        os.close(fd)
    except OSError as e:
        raise WeightsUnavailableError(f"cannot write the weight cache {path} ({e}); set MINIXCEPTION_CACHE "
                                      f"to a writable folder or pass weights=PATH") from e
    try:
        try:
            _downloader(url, tmp)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise WeightsUnavailableError(
                f"could not download the {label} ImageNet weights from {url} ({e}). Are you offline? "
                f"Download that file by other means and put it at {path} (the cache; MINIXCEPTION_CACHE "
                f"overrides its folder), or pass weights=PATH to a local copy.") from e
        got = md5sum(tmp)
        if got != want:
            raise WeightsUnavailableError(
                f"the file downloaded from {url} has MD5 {got}, expected {want}; not using it "
                f"(cache path {path})")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ---------------------------------------------------------------------------------------------
# loading the legacy HDF5 layout
# ---------------------------------------------------------------------------------------------
# Keras's weight order inside each layer type, as our state-dict suffixes.
_KERAS_ORDER = {
    nn.Conv2D: ("kernel", "bias"),
    nn.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel", "bias"),
    nn.DepthwiseConv2D: ("depthwise_kernel", "bias"),
    nn.PointwiseConv2D: ("pointwise_kernel", "bias"),
    nn.BatchNorm2D: ("gamma", "beta", "moving_mean", "moving_variance"),
    nn.Dense: ("kernel", "bias"),
}
# Names a weight has had across Keras versions (most specific first: "depthwise_kernel" ends in "kernel").
_ALIASES = [("depthwise_kernel", "depthwise_kernel"), ("depthwise_W", "depthwise_kernel"),
            ("pointwise_kernel", "pointwise_kernel"), ("pointwise_W", "pointwise_kernel"),
            ("running_mean", "moving_mean"), ("moving_mean", "moving_mean"),
            ("running_std", "moving_variance"), ("running_var", "moving_variance"),
            ("moving_variance", "moving_variance"), ("gamma", "gamma"), ("beta", "beta"),
            ("kernel", "kernel"), ("bias", "bias"), ("W", "kernel"), ("b", "bias")]


def _weight_kind(weight_name):
    """``"separableconvolution2d_7/depthwise_kernel:0"`` -> ``"depthwise_kernel"``; None if unknown."""
    base = weight_name.split("/")[-1].split(":")[0]
    for alias, kind in _ALIASES:
        if base == alias or base.endswith("_" + alias):
            return kind
    return None


def keras_layer_order(model):
    """``[(path, module)]`` of the model's layers in the order of Keras's ``model.layers``.

    Keras lists a functional model's layers by *depth* -- the longest path from the layer to the
    output -- deepest first, and breaks ties by the order in which a depth-first walk from the
    output (inputs visited in order) first meets each layer. For a plain chain that is the
    forward order; for Inception modules it interleaves the branches (every branch's first conv,
    then their BNs...). Leaf layers are listed, and the joins as well: a ``Concat`` as Keras's
    Concatenate and a ``Residual`` as its Add (path of the container, module).

    Understands ``Sequential``, ``Concat`` and ``Residual`` containers (and subclasses).
    """
    paths = {id(m): p for p, m in model.named_modules()}
    inputs = {}                      # node id -> list of input node ids; node = module id or "input"
    modules = {}

    def build(m, x):
        """Add ``m``'s graph fed by node ``x``; return its output node."""
        if isinstance(m, nn.Sequential):
            for child in m.children():
                x = build(child, x)
            return x
        if isinstance(m, nn.Concat):
            outs = [build(b, x) for b in m.children()]
        elif isinstance(m, nn.Residual):
            outs = [build(m.main, x), build(m.shortcut, x) if m.shortcut is not None else x]
        elif m.children():
            raise TypeError(f"keras_layer_order: cannot trace container {m._label()} of type {type(m).__name__}")
        else:
            outs = [x]
        inputs[id(m)], modules[id(m)] = outs, m
        return id(m)

    out = build(model, "input")
    # pre-order indices of the depth-first walk from the output (Keras's "operation_indices")
    index, post, stack = {}, [], [(out, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            post.append(node)
            continue
        if node in index or node == "input":
            continue
        index[node] = len(index)
        stack.append((node, True))
        stack.extend((i, False) for i in reversed(inputs[node]))
    # longest distance to the output, consumers before their inputs (reverse post-order)
    depth = {out: 0}
    for node in reversed(post):
        for i in inputs[node]:
            if i != "input":
                depth[i] = max(depth.get(i, 0), depth[node] + 1)
    order = sorted(index, key=lambda n: (-depth[n], index[n]))
    return [(paths[n], modules[n]) for n in order]


def keras_weight_order(model):
    """``[(layer_path, [state-dict keys in Keras's weight order])]`` for every layer with weights,
    in Keras's ``model.layers`` order (``keras_layer_order``; for ``Xception`` that is also the
    forward order)."""
    sd_keys = set(model.state_dict())
    out = []
    for path, m in keras_layer_order(model):
        if m.children() or not (m.named_parameters(recurse=False) or m.named_buffers(recurse=False)):
            continue
        order = _KERAS_ORDER.get(type(m))
        if order is None:
            raise TypeError(f"no Keras weight order known for layer {path!r} of type {type(m).__name__}")
        keys = [f"{path}/{w}" for w in order if f"{path}/{w}" in sd_keys]
        out.append((path, keys))
    return out


def _decode(v):
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def read_legacy_h5(path):
    """``[(layer_name, [weight_names], [arrays])]`` for the layers *with* weights, in file order."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightFileError(f"{path}: cannot open as HDF5 (truncated or not an HDF5 file?): {e}") from e
    try:
        root = f["model_weights"] if "model_weights" in f else f      # a whole-model save nests them
        if "layer_names" not in root.attrs:
            raise WeightFileError(f"{path}: not a Keras weight file (no 'layer_names' attribute at the root)")
        layers = []
        for lname in (_decode(n) for n in root.attrs["layer_names"]):
            if lname not in root:
                raise WeightFileError(f"{path}: layer {lname!r} is listed in 'layer_names' but missing "
                                      "(truncated or damaged file?)")
            group = root[lname]
            wnames = [_decode(n) for n in group.attrs.get("weight_names", [])]
            if not wnames:
                continue
            arrays = []
            for wn in wnames:
                if wn not in group:
                    raise WeightFileError(f"{path}: weight {wn!r} of layer {lname!r} is missing "
                                          "(truncated or damaged file?)")
                arrays.append(np.asarray(group[wn]))
            layers.append((lname, wnames, arrays))
        return layers
    except (OSError, KeyError, RuntimeError) as e:
        raise WeightFileError(f"{path}: cannot read the weights (truncated or damaged file?): {e}") from e
    finally:
        f.close()


def load_keras_weights(model, path):
    """Load a Keras legacy HDF5 weight file into ``model``, all or nothing.

    Weighted layers are matched by position (file order vs the model's forward order), each
    weight's shape is checked, then the full state dict is built and loaded in one
    ``load_state_dict`` call: any error leaves the model untouched.
    Raises ``WeightFileError`` (a ValueError) naming the file, the layer and expected vs got.
    """
    file_layers = read_legacy_h5(path)
    targets = keras_weight_order(model)
    if len(file_layers) != len(targets):
        has_top = any(p.endswith("predictions") for p, _ in targets)
        raise WeightFileError(
            f"{path}: the file has {len(file_layers)} layers with weights, the model expects "
            f"{len(targets)} (model include_top={has_top}; the '_notop' file has no 'predictions' layer)")
    current = model.state_dict()
    new = dict(current)
    for i, ((fname, wnames, arrays), (lpath, keys)) in enumerate(zip(file_layers, targets)):
        if len(arrays) != len(keys):
            raise WeightFileError(f"{path}: weighted layer #{i} {fname!r} holds {len(arrays)} weights "
                                  f"{wnames}, model layer {lpath!r} expects {len(keys)} {keys}")
        for wn, arr, key in zip(wnames, arrays, keys):
            kind = _weight_kind(wn)
            if kind is not None and kind != key.rsplit("/", 1)[1]:
                raise WeightFileError(f"{path}: weighted layer #{i} {fname!r}: weight {wn!r} is a {kind}, "
                                      f"but the model expects {key} at that position")
            if tuple(arr.shape) != tuple(current[key].shape):
                raise WeightFileError(f"{path}: weighted layer #{i} {fname!r} weight {wn!r} has shape "
                                      f"{tuple(arr.shape)}, model {key} expects {tuple(current[key].shape)}")
            if arr.dtype.kind != "f":
                raise WeightFileError(f"{path}: weight {wn!r} of {fname!r} has dtype {arr.dtype}, expected floats")
            new[key] = arr
    model.load_state_dict(new)
    return model


# ---------------------------------------------------------------------------------------------
# ImageNet input and output helpers
# ---------------------------------------------------------------------------------------------
def preprocess_input(x):
    """Keras's Xception preprocessing: RGB in [0, 255] -> [-1, 1], ``x / 127.5 - 1``.

    x: (..., 3) any numeric dtype (integers become float32); returns a new float array.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(xp.float32)
    return x / x.dtype.type(127.5) - x.dtype.type(1.0)


@functools.lru_cache(maxsize=1)
def imagenet_classes():
    """The 1000 ImageNet classes in Keras's index order: a tuple of ``(wnid, name)``."""
    text = (pathlib.Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf8")
    rows = tuple(tuple(line.split("\t")) for line in text.splitlines() if line)
    if len(rows) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(rows)} lines, expected 1000")
    return rows


def decode_predictions(preds, top=5):
    """Top classes per row, as Keras: ``[[(wnid, name, score), ...] per image]``.

    preds: (N, 1000) probabilities or logits; rows that are not already probability
    distributions (non-negative, summing to 1) are passed through a softmax first.
    """
    p = np.asarray(to_numpy(preds), dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 1000:
        raise ValueError(f"decode_predictions expects a (N, 1000) array of ImageNet scores, got shape {p.shape}")
    if not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"top must be an int in 1..1000, got {top!r}")
    is_prob = (p >= 0).all(axis=1) & np.isclose(p.sum(axis=1), 1.0, atol=1e-3)
    z = p - p.max(axis=1, keepdims=True)
    soft = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p = np.where(is_prob[:, None], p, soft)
    classes = imagenet_classes()
    out = []
    for row in p:
        idx = np.argsort(-row, kind="stable")[:top]
        out.append([(classes[i][0], classes[i][1], float(row[i])) for i in idx])
    return out


__all__ = ["load_keras_weights", "read_legacy_h5", "keras_weight_order", "keras_layer_order", "get_imagenet_weights",
           "cache_dir", "md5sum", "preprocess_input", "decode_predictions", "imagenet_classes",
           "WeightFileError", "WeightsUnavailableError", "BASE_URL", "FILENAMES", "MD5",
           "INCEPTION_V3_BASE_URL", "INCEPTION_V3_FILENAMES", "INCEPTION_V3_MD5"]
