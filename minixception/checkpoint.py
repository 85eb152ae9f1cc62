"""Checkpoints: one ``.npz`` file, written atomically, read without pickle.

Layout of the archive (every entry a plain numeric or string array):

    __minixception_checkpoint__   the marker (format version); a file without it is refused
    model/<state-dict key>        parameters and buffers (BN moving statistics), host arrays
    optim/momentum/<i>            SGD momentum buffers, in ``model.parameters()`` order
    extra/<name>                  further arrays a caller stores (``extra=``; e.g. the Polyak
                                  averages of the weights), returned as ``meta["_extra"]``
    meta                          a JSON string: epoch, RNG state, run settings, optimiser
                                  scalars, anything passed as ``**meta``

Writing goes to a temporary file (``.ckpt-*.tmp``) in the destination folder, then
``os.replace``: a crash or Ctrl-C mid-write leaves the previous checkpoint intact (a SIGKILL
may leave the temporary file, which the next run in that folder removes). The file gets the
mode the umask gives any new file. Reading uses ``allow_pickle=False`` and checks every
entry and every metadata field before touching the model, so a truncated, foreign, malformed
or pickle-bearing file is refused with a CheckpointError -- the only exception that leaves
``load_checkpoint`` -- and the model and optimiser are left as they were.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile

import numpy as np

MARKER = "__minixception_checkpoint__"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable minixception checkpoint (truncated, foreign, pickled, mismatched)."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


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
        os.chmod(tmp, _mode_for_new_files())    # as any other file the run writes
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _mode_for_new_files():
    """The mode ``open()`` would give a new file: 0o666 less the umask (mkstemp's 0600 is too tight)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_MOMENTUM_KEY = re.compile(r"momentum/(0|[1-9][0-9]*)")


def _check_path(path):
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise CheckpointNotFound(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if head.startswith(_NPY_MAGIC):
        raise CheckpointError(f"{path}: a bare .npy array, not a checkpoint (a minixception .npz archive)")
    if not head.startswith(_ZIP_MAGIC):
        raise CheckpointError(f"{path}: not a checkpoint (not an .npz archive at all)")


def _check_optimizer_meta(path, ometa):
    if not isinstance(ometa, dict):
        raise CheckpointError(f"{path}: optimiser metadata must be an object, got {type(ometa).__name__}")
    for key, ok in (("steps", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                    ("lr", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
                    ("n_params", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)):
        if key not in ometa or not ok(ometa[key]):
            raise CheckpointError(f"{path}: optimiser metadata field {key!r} is missing or invalid "
                                  f"({ometa.get(key)!r})")


def read_checkpoint(path):
    """Read and validate the file -> (model_state: dict, optim_state: dict, meta: dict). No model needed.

    Raises CheckpointError (and nothing else) for anything but a well-formed checkpoint; a missing
    file is a ``CheckpointNotFound``, both a CheckpointError and a FileNotFoundError.
    """
    path = os.fspath(path)
    _check_path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
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
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint, not a complete .npz ({exc})") from exc
    marker = arrays.pop(MARKER)
    if marker.shape != () or marker.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: malformed marker {MARKER!r} (expected one integer, got "
                              f"dtype {marker.dtype} shape {marker.shape})")
    if int(marker) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {int(marker)}, this version reads {FORMAT_VERSION}")
    raw = arrays.pop("meta", None)
    if raw is None or raw.dtype.kind != "U" or raw.shape != ():
        raise CheckpointError(f"{path}: missing or malformed 'meta' entry (expected one JSON string)")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise CheckpointError(f"{path}: its 'meta' entry is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its 'meta' entry must be a JSON object, got {type(meta).__name__}")
    if "_optimizer" in meta:
        _check_optimizer_meta(path, meta["_optimizer"])
    model_state, optim_state, extra = {}, {}, {}
    for k, v in arrays.items():
        if v.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {k!r} has dtype {v.dtype}, expected numbers")
        if k.startswith("model/"):
            model_state[k[len("model/"):]] = v
        elif k.startswith("optim/"):
            name = k[len("optim/"):]
            if not _MOMENTUM_KEY.fullmatch(name):
                raise CheckpointError(f"{path}: optimiser entry {k!r}: expected 'optim/momentum/<index>' "
                                      "with a non-negative integer index")
            optim_state[name] = v
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


def _listing(keys, n=3):
    keys = list(keys)
    more = f", and {len(keys) - n} more" if len(keys) > n else ""
    return f"{len(keys)} ({', '.join(keys[:n])}{more})"


def _check_fits(path, model_state, model):
    """CheckpointError naming the first few missing / unexpected / mis-shaped keys and their counts."""
    want = {k: tuple(np.shape(v)) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in model_state]
    unexpected = [k for k in model_state if k not in want]
    misshaped = [f"{k} {tuple(v.shape)} vs {want[k]}" for k, v in model_state.items()
                 if k in want and tuple(v.shape) != want[k]]
    parts = [f"{label} {_listing(keys)}" for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped (file vs model)", misshaped))
             if keys]
    if parts:
        raise CheckpointError(f"{path}: does not fit this model ({len(want)} entries): " + "; ".join(parts))


def load_checkpoint(path, model, optimizer=None, check_meta=None):
    """Load ``path`` into ``model`` (and ``optimizer``) -> the meta dict.

    check_meta: optional ``f(meta)`` that raises CheckpointError for metadata its caller cannot use
      (the trainer checks its own fields this way); it runs before anything is changed.
    Everything is checked before anything is changed: a refusal leaves model and optimiser as they
    were, and every refusal is a CheckpointError.
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
            if i >= len(params):
                raise CheckpointError(f"{path}: momentum buffer {i}, but the optimiser has only "
                                      f"{len(params)} parameters")
            if tuple(v.shape) != tuple(params[i].data.shape):
                raise CheckpointError(f"{path}: momentum buffer {i}: expected shape "
                                      f"{tuple(params[i].data.shape)}, got {tuple(v.shape)}")
    _check_fits(path, model_state, model)
    if check_meta is not None:
        check_meta(meta)
    try:
        model.load_state_dict(model_state)        # checks names and shapes first; all or nothing
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not fit this model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict({**optim_state, "steps": ometa["steps"], "lr": ometa["lr"]})
    return meta


def rng_from_state(state):
    """A ``numpy.random.Generator`` restored from a saved ``bit_generator.state`` dict.

    The state comes from a file: the bit generator must be one of NumPy's BitGenerator classes
    and the state one it accepts, else CheckpointError.
    """
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise CheckpointError(f"random generator state: 'bit_generator' must name a NumPy bit generator "
                              f"(e.g. 'PCG64'), got {name!r}")
    bg = cls()
    try:
        bg.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"random generator state for {name} is invalid ({exc})") from exc
    return np.random.Generator(bg)
