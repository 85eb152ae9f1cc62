"""Checkpoints: one ``.npz`` file, written atomically, read without pickle.

Layout of the archive (every entry a plain numeric or string array):

    __minixception_checkpoint__   the marker (format version); a file without it is refused
    model/<state-dict key>        parameters and buffers (BN moving statistics), host arrays
    optim/momentum/<i>            SGD momentum buffers, in ``model.parameters()`` order
    extra/<name>                  further arrays a caller stores (``extra=``; e.g. the Polyak
                                  averages of the weights), returned as ``meta["_extra"]``
    meta                          a JSON string: epoch, RNG state, run settings, optimiser
                                  scalars, anything passed as ``**meta``

Writing goes to a temporary file in the destination folder, then ``os.replace``: a crash
or Ctrl-C mid-write leaves the previous checkpoint intact and no partial file behind.
Reading uses ``allow_pickle=False`` and checks everything before touching the model, so
a truncated, foreign or pickle-bearing file is refused with a clear error and the model
and optimiser are left as they were.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

MARKER = "__minixception_checkpoint__"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable minixception checkpoint (truncated, foreign, pickled, mismatched)."""


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.random.Generator):
        return o.bit_generator.state
    raise TypeError(f"checkpoint meta: {type(o).__name__} is not JSON-serialisable")


def save_checkpoint(path, model, optimizer=None, extra=None, **meta):
    """Write ``model`` (parameters + buffers), ``optimizer`` state, ``extra`` arrays
    (``{name: ndarray}``) and ``meta`` to ``path`` (.npz).

    ``meta`` values must be JSON-serialisable (NumPy scalars/arrays and a
    ``numpy.random.Generator`` -- stored as its bit-generator state -- are converted).
    Returns the path.
    """
    path = os.fspath(path)
    arrays = {MARKER: np.array(FORMAT_VERSION, dtype=np.int64)}
    for k, v in model.state_dict().items():
        arrays[f"model/{k}"] = v
    meta = dict(meta)
    if optimizer is not None:
        osd = optimizer.state_dict()
        for k, v in osd.items():
            if k.startswith("momentum/"):
                arrays[f"optim/{k}"] = v
        meta["_optimizer"] = {"steps": int(osd.get("steps", 0)), "lr": float(osd.get("lr", 0.0)),
                              "n_params": len(optimizer.params)}
    for k, v in (extra or {}).items():
        arrays[f"extra/{k}"] = np.asarray(v)
    arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_checkpoint(path):
    """Read and validate the file -> (model_state: dict, optim_state: dict, meta: dict). No model needed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise CheckpointError(f"{path}: a bare .npy array, not a minixception checkpoint (.npz)")
            if MARKER not in z.files:
                raise CheckpointError(
                    f"{path}: not a minixception checkpoint (no {MARKER!r} entry; it holds "
                    f"{sorted(z.files)[:5]}...); refusing to load a foreign file")
            arrays = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(
                f"{path}: holds a Python object array that only pickle could read; refusing it "
                "(checkpoints are loaded with allow_pickle=False)") from exc
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint, not a complete .npz ({exc})") from exc
    version = int(arrays.pop(MARKER))
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this version reads {FORMAT_VERSION}")
    if "meta" not in arrays or arrays["meta"].dtype.kind != "U":
        raise CheckpointError(f"{path}: missing or malformed 'meta' entry")
    meta = json.loads(str(arrays.pop("meta")))
    model_state, optim_state, extra = {}, {}, {}
    for k, v in arrays.items():
        if v.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {k!r} has dtype {v.dtype}, expected numbers")
        if k.startswith("model/"):
            model_state[k[len("model/"):]] = v
        elif k.startswith("optim/"):
            optim_state[k[len("optim/"):]] = v
        elif k.startswith("extra/"):
            extra[k[len("extra/"):]] = v
        else:
            raise CheckpointError(f"{path}: unexpected entry {k!r}")
    if extra:
        meta["_extra"] = extra
    return model_state, optim_state, meta


def read_meta(path):
    """Only the meta dict (e.g. the run settings, to rebuild the model before loading)."""
    return read_checkpoint(path)[2]


def load_checkpoint(path, model, optimizer=None):
    """Load ``path`` into ``model`` (and ``optimizer``) -> the meta dict.

    Everything is checked before anything is changed: a refusal leaves model and optimiser as they were.
    """
    model_state, optim_state, meta = read_checkpoint(path)
    ometa = meta.pop("_optimizer", None)
    if optimizer is not None:
        if ometa is None:
            raise CheckpointError(f"{path}: holds no optimiser state, but an optimiser was given to load it into")
        params = optimizer.params
        if ometa["n_params"] != len(params):
            raise CheckpointError(f"{path}: optimiser state for {ometa['n_params']} parameters, "
                                  f"the optimiser has {len(params)}")
        for k, v in optim_state.items():
            i = int(k.split("/", 1)[1])
            if tuple(v.shape) != tuple(params[i].data.shape):
                raise CheckpointError(f"{path}: momentum buffer {i}: expected shape "
                                      f"{tuple(params[i].data.shape)}, got {tuple(v.shape)}")
    try:
        model.load_state_dict(model_state)        # checks names and shapes first; all or nothing
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not fit this model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict({**optim_state, "steps": ometa["steps"], "lr": ometa["lr"]})
    return meta


def rng_from_state(state):
    """A ``numpy.random.Generator`` restored from a saved ``bit_generator.state`` dict."""
    bg = getattr(np.random, state["bit_generator"])()
    bg.state = state
    return np.random.Generator(bg)
