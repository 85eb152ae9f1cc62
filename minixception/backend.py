"""The array-module switch: one code path for NumPy (CPU) and CuPy (GPU).

Every op asks ``xp = get_array_module(x)`` and calls ``xp.<name>``, so the same
lines run on a NumPy array on the CPU and on a CuPy array on the GPU. CuPy is
optional: nothing here imports it unless it is installed, and asking for the
GPU without it gives a clear error instead of an ImportError deep inside an op.
"""
from __future__ import annotations

import numpy as np

_cupy = None          # the cupy module once imported, or False when unavailable
_cupy_error = None    # why it could not be imported / used


def _try_cupy():
    """Import CuPy once; return the module or None (never raises)."""
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy  # noqa: F401  (optional dependency)
            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy, _cupy_error = False, exc
    return _cupy or None


def cupy_module():
    """The ``cupy`` module if it is importable, else None (GPU or not)."""
    return _try_cupy()


def gpu_available() -> bool:
    """True when CuPy is importable *and* sees at least one usable GPU."""
    cp = _try_cupy()
    if cp is None:
        return False
    try:
        return bool(cp.is_available())
    except Exception:
        return False


def is_gpu_array(x) -> bool:
    cp = _try_cupy()
    return cp is not None and isinstance(x, cp.ndarray)


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``.

    Mixing NumPy and CuPy arrays in one call is refused: a silent host/device
    copy would hide a slow path (and CuPy would refuse it anyway, less clearly).
    """
    kinds = set()
    for a in arrays:
        if a is None or np.isscalar(a):
            continue
        kinds.add("gpu" if is_gpu_array(a) else "cpu")
    if len(kinds) > 1:
        raise TypeError(
            "mixed NumPy (CPU) and CuPy (GPU) arrays in one operation: expected all "
            "arrays on the same device; move them with minixception.backend.to_device "
            "or call .to('gpu') / .to('cpu') on the layer")
    if kinds == {"gpu"}:
        return _try_cupy()
    return np


def device_of(x) -> str:
    """"gpu" for a CuPy array, "cpu" otherwise."""
    return "gpu" if is_gpu_array(x) else "cpu"


def _require_gpu():
    cp = _try_cupy()
    if cp is None:
        raise RuntimeError(
            "device 'gpu' was asked for but CuPy is not installed "
            f"({_cupy_error!r}); install it with `pip install cupy-cuda12x` "
            "(or cupy-cuda13x) or use device='cpu'")
    if not gpu_available():
        raise RuntimeError(
            "device 'gpu' was asked for but CuPy sees no usable CUDA GPU "
            "(cupy.is_available() is False); use device='cpu'")
    return cp


def check_device(device: str) -> str:
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu":
        _require_gpu()
    return device


def to_device(x, device: str):
    """Move an array to "cpu" (NumPy) or "gpu" (CuPy); a no-op when it is there."""
    check_device(device)
    if device == "cpu":
        return to_numpy(x)
    cp = _require_gpu()
    return x if isinstance(x, cp.ndarray) else cp.asarray(x)


def to_numpy(x):
    """A host (NumPy) array for ``x``: the array itself when already on the host."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)
