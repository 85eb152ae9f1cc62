"""Hand-written CUDA kernels (CuPy) for the hot ops, registered in the dispatch table for "gpu".

Each op has its CUDA C source (``*.cu``, beside this file) or its elementwise body and a small
Python wrapper that validates, launches and returns exactly what the reference in
``minixception.functional`` returns; the tests prove the two equal (on the CPU by compiling
the ``.cu`` files with g++ under an emulation of the CUDA thread model, on a GPU directly).

    depthwise.py   depthwise convolution forward / backward     (depthwise.cu)
    separable.py   separable convolution = CUDA depthwise + the pointwise GEMM
    batchnorm.py   batch norm in training mode, three launches each way (batchnorm.cu)
    pooling.py     max pool forward / backward                  (pooling.cu)
    sgd.py         SGD with momentum and L2, one fused launch per parameter
    rng.py         a counter-based generator for dropout masks on the device

Nothing here imports CuPy at import time: the package imports where CuPy is missing. The
kernels register on the first fast call on a CuPy array (``kernels.select`` runs :func:`load`);
each is compiled on first use per dtype and per compile-time constants (kernel size, stride),
and a kernel that fails to compile is reported once (a ``RuntimeWarning``), recorded in
:func:`status`, and its op runs the reference instead.

``MINIXCEPTION_CUDA_KERNELS=0`` in the environment leaves the table without GPU kernels (the
``xp`` reference runs everywhere); ``with mx.use_kernels("reference"):`` does it for a block.
"""
from __future__ import annotations

import importlib
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ...backend import cupy_module

SOURCE_DIR = Path(__file__).resolve().parent
MODULES = ("depthwise", "separable", "batchnorm", "pooling", "sgd")   # each registers its kernels

_built = {}          # (source name, dtype, defines) -> compiled cupy.RawModule, or None if it failed
_functions = {}      # (source name, dtype, defines, function) -> kernel handle (looked up once)
_status = {}         # "name.cu dtype defines" -> "compiled" | "failed: <why>"
_state = {"loaded": False}
launches = Counter()  # kernel name -> launches made by the wrappers here (see count_launches)


def source(name: str) -> str:
    """The CUDA C source of ``name``.cu (package data)."""
    return (SOURCE_DIR / f"{name}.cu").read_text()


def ctype(dtype) -> str | None:
    """The C scalar type for a NumPy dtype, None for dtypes the kernels do not handle."""
    return {"float32": "float", "float64": "double"}.get(str(np.dtype(dtype)))


def _describe(name, dtype, defines):
    consts = " ".join(f"{k}={v}" for k, v in defines)
    return f"{name}.cu {np.dtype(dtype)}" + (f" {consts}" if consts else "")


def module(name: str, dtype, **defines):
    """The compiled RawModule for ``name``.cu at ``dtype`` and ``defines`` (cached), or None.

    The defines become compile-time constants (``-DKH=3 -DSH=2 ...``): the index maths divides
    by constants, the tap loops unroll. A failure is warned about once and kept in status().
    """
    key = (name, str(np.dtype(dtype)), tuple(sorted(defines.items())))
    if key in _built:
        return _built[key]
    what = _describe(name, dtype, key[2])
    t = ctype(dtype)
    if t is None:                       # not a compile failure: the op declines this dtype
        return None
    options = (f"-DMX_T={t}",) + tuple(f"-D{k}={v}" for k, v in key[2])
    try:
        mod = cupy_module().RawModule(code=source(name), options=options)
        mod.compile()
        _built[key], _status[what] = mod, "compiled"
    except Exception as exc:            # NVRTC error, missing CUDA runtime pieces, driver problem
        _built[key], _status[what] = None, f"failed: {type(exc).__name__}: {str(exc).strip()[:500]}"
        warnings.warn(f"minixception: the CUDA kernel {what} failed to compile ({type(exc).__name__}: "
                      f"{str(exc).strip()[:300]}); that op runs the plain CuPy reference instead. "
                      "See minixception.kernels.cuda.status().", RuntimeWarning, stacklevel=3)
    return _built[key]


def function(name: str, fname: str, dtype, **defines):
    """The handle of kernel ``fname`` in ``name``.cu, looked up once per dtype and constants."""
    key = (name, str(np.dtype(dtype)), tuple(sorted(defines.items())), fname)
    f = _functions.get(key)
    if f is None:
        mod = module(name, dtype, **defines)
        if mod is None:
            raise RuntimeError(f"CUDA kernel {_describe(name, dtype, key[2])} is not available "
                               f"(status: {_status.get(_describe(name, dtype, key[2]), 'unsupported dtype')})")
        f = _functions[key] = mod.get_function(fname)
    return f


def compiles(name: str, dtype, **defines) -> bool:
    """Whether ``name``.cu builds for ``dtype`` and ``defines`` (compiling it on the first ask)."""
    return module(name, dtype, **defines) is not None


def launch(f, name, grid, block, args):
    """Launch one RawKernel (counted in ``launches[name]``)."""
    launches[name] += 1
    f(grid, block, args)


def record(name, outcome):
    """Record the build outcome of an elementwise kernel (sgd, rng) for status()."""
    _status[name] = outcome


def status() -> dict:
    """What the GPU kernels are doing: whether they are enabled and each build's outcome.

    ``{"enabled": bool, "reason": str, "gpu": bool, "kernels": {"depthwise.cu float32 KH=3 KW=3 SH=1 SW=1":
    "compiled", ...}, "ops": {op: "cuda (gpu)" | "reference"}}``. A kernel build appears once it
    was first needed; "ops" says what each op runs on a CuPy array it supports.
    """
    from ...backend import gpu_available
    from .. import registered
    load()
    on, reason = enabled()
    gpu_ops = {op: [i for i in impls if i.endswith("(gpu)")] for op, impls in registered().items()}
    return {"enabled": on, "reason": reason, "gpu": gpu_available(), "kernels": dict(_status),
            "ops": {op: (impls[0] if impls else "reference") for op, impls in sorted(gpu_ops.items())}}


def implementation(op: str, x, *args, **kwargs) -> str:
    """The name of the implementation ``kernels.select`` picks for this call ("cuda", "numba", "reference")."""
    from .. import select
    return select(op, x, *args, **kwargs).name


def enabled() -> tuple[bool, str]:
    if os.environ.get("MINIXCEPTION_CUDA_KERNELS", "1") == "0":
        return False, "switched off by MINIXCEPTION_CUDA_KERNELS=0"
    if cupy_module() is None:
        return False, "CuPy is not installed"
    return True, "on (each kernel compiles on first use)"


def load() -> None:
    """Register every GPU kernel (once); the dispatch table calls this on the first CuPy input."""
    if _state["loaded"]:
        return
    _state["loaded"] = True
    on, reason = enabled()
    if not on:
        return
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").register()


def count_launches():
    """A copy of the wrappers' launch counts so far (``launches.clear()`` resets them)."""
    return dict(launches)


def _register_loader():
    from .. import register_loader
    register_loader("gpu", load)


_register_loader()
