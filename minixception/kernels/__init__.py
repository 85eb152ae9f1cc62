"""Fast kernels, kept apart from the reference math, and the one table that picks between them.

``minixception.functional`` is the reference: plain ``xp`` code a reader can follow. The
kernels here compute the same thing faster -- numba loops on the CPU (``kernels.cpu``),
hand-written CUDA on the GPU (``kernels.cuda``) -- and each is registered for the op it
accelerates. The layers never call ``functional`` directly for such an op; they ask

    impl = kernels.select("depthwise_conv2d", x)     # -> a Kernel (forward, backward, name)
    y, cache = impl.forward(x, kernel, stride, padding)
    ...
    dx, dk = impl.backward(dy, cache)                 # the *same* implementation's backward

A fast implementation has exactly the reference's signature and semantics (the tests
compare them), and may decline a call it does not handle (``supports`` returns False),
in which case the reference runs.

``with mx.use_kernels("reference"):`` runs the reference everywhere inside the block
(thread-safe: a ``contextvars`` variable); ``"fast"`` is the default.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Callable

from ..backend import is_gpu_array

MODES = ("reference", "fast")
_mode = contextvars.ContextVar("minixception_kernels", default="fast")


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op: a forward/backward pair with the reference's signatures."""
    name: str                      # e.g. "reference", "numba", "cuda"
    forward: Callable
    backward: Callable
    supports: Callable[..., bool] = lambda *args, **kwargs: True


_reference: dict[str, Kernel] = {}
_fast: dict[tuple[str, str], Kernel] = {}     # (op, "cpu" | "gpu") -> Kernel
_loaders: dict[str, Callable[[], None]] = {}  # "cpu" | "gpu" -> registers that device's kernels, once


def register_reference(op: str, forward: Callable, backward: Callable) -> None:
    _reference[op] = Kernel("reference", forward, backward)


def register(op: str, device: str, kernel: Kernel) -> None:
    """Register ``kernel`` as the fast implementation of ``op`` on ``device`` ("cpu" or "gpu")."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    _fast[(op, device)] = kernel


def register_loader(device: str, loader: Callable[[], None]) -> None:
    """``loader()`` registers ``device``'s kernels; it runs on the first fast call on that device."""
    _loaders[device] = loader


def mode() -> str:
    """The kernels in force in this thread / context: "reference" or "fast"."""
    return _mode.get()


@contextlib.contextmanager
def use_kernels(which: str):
    """Within this block, ops run ``which`` implementation: "reference" or "fast"."""
    if which not in MODES:
        raise ValueError(f"use_kernels: expected one of {MODES}, got {which!r}")
    token = _mode.set(which)
    try:
        yield
    finally:
        _mode.reset(token)


def reference(op: str) -> Kernel:
    if op not in _reference:
        raise KeyError(f"no reference implementation registered for op {op!r}; known: {sorted(_reference)}")
    return _reference[op]


def select(op: str, x, *args, **kwargs) -> Kernel:
    """The implementation of ``op`` to run on input ``x`` (and the call's other arguments)."""
    ref = reference(op)
    if _mode.get() != "fast":
        return ref
    device = "gpu" if is_gpu_array(x) else "cpu"
    loader = _loaders.pop(device, None)
    if loader is not None:
        loader()
    fast = _fast.get((op, device))
    if fast is not None and fast.supports(x, *args, **kwargs):
        return fast
    return ref


def registered() -> dict[str, list[str]]:
    """op -> the implementations registered for it (for reports and benchmarks)."""
    out = {op: ["reference"] for op in _reference}
    for (op, device), k in _fast.items():
        out.setdefault(op, []).append(f"{k.name} ({device})")
    return out


def _register_references():
    from .. import functional as F
    for op in ("conv2d", "depthwise_conv2d", "pointwise_conv2d", "separable_conv2d", "batchnorm",
               "relu", "elu", "maxpool2d", "avgpool2d", "global_avgpool2d", "dense", "dropout"):
        register_reference(op, getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward"))


_register_references()

from . import cpu  # noqa: E402,F401  (registers the CPU loader; numba is imported only on first use)
from . import cuda  # noqa: E402,F401  (registers the GPU loader; CuPy is used only on first use)
