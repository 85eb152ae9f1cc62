"""The old home of the CUDA kernels, now ``minixception.kernels.cuda`` (reached through the
dispatch table, ``kernels.select``). Kept only so older callers keep importing:

* ``source(name)`` and ``status()`` are the new module's;
* ``disabled()`` is ``mx.use_kernels("reference")``;
* the functional-side hooks (``depthwise_ready``, ``batchnorm_ready`` and the cache classes)
  always send the reference down its own path: the fast kernels run only when selected.

Remove once nothing imports ``minixception.cuda``.
"""
from __future__ import annotations

from pathlib import Path

# imported lazily below: functional imports this module while the package is initialising
SOURCE_DIR = Path(__file__).resolve().parent.parent / "kernels" / "cuda"


def source(name: str) -> str:
    from ..kernels.cuda import source as _source
    return _source(name)


def status() -> dict:
    from ..kernels.cuda import status as _status
    return _status()


def disabled():
    """Within this block every op runs the plain xp reference."""
    from ..kernels import use_kernels
    return use_kernels("reference")


def enabled() -> bool:
    from ..backend import gpu_available
    from ..kernels import mode
    return mode() == "fast" and status()["enabled"] and gpu_available()


def depthwise_ready(x, kernel) -> bool:
    return False


def batchnorm_ready(x) -> bool:
    return False


class DepthwiseCache:
    """Never made: the reference's caches are tuples."""


class BatchNormCache:
    """Never made: the reference's caches are tuples."""
