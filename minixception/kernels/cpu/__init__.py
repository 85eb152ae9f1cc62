"""numba CPU kernels (optional: without numba the reference runs, and says so once).

Each module here registers its kernels at import (``kernels.register(op, "cpu", Kernel(...))``);
:func:`load` imports them on the first fast call on the CPU (``kernels.select``), so importing
minixception never imports numba and never compiles anything.
"""
from __future__ import annotations

import importlib
import warnings

# the modules that register CPU kernels, imported by load()
MODULES = ("gemm", "depthwise", "batchnorm", "pooling", "conv", "activations")

_status = {"loaded": False, "numba": None, "error": None}


def numba_available() -> bool:
    if _status["numba"] is None:
        try:
            import numba  # noqa: F401
            _status["numba"] = True
        except Exception as exc:        # not installed, or an incompatible build
            _status["numba"], _status["error"] = False, exc
    return _status["numba"]


def load() -> None:
    """Register every CPU kernel (once). Without numba: warn once, the reference runs."""
    if _status["loaded"]:
        return
    _status["loaded"] = True
    if not numba_available():
        warnings.warn("minixception: numba is not installed, so the CPU runs the plain NumPy reference "
                      "(correct, several times slower). `pip install -e \".[fast]\"` adds the fast kernels.",
                      RuntimeWarning, stacklevel=3)
        return
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _register_loader():
    from .. import register_loader
    register_loader("cpu", load)


_register_loader()
