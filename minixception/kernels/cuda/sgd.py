"""SGD with momentum and L2 on the GPU: one fused elementwise launch per parameter.

The reference (``optim.sgd_update``) takes five to seven CuPy launches per parameter
(``g + wd * w``, ``buf *= m``, ``buf += g``, ``g + m * buf``, ``lr * g``, ``w -= ...``); the
kernel below reads g, w and buf once and writes w and buf once, the same arithmetic in the
same order:

    d   = g + wd * w                    (wd = 0 for parameters without L2: BN, biases)
    buf = d                 on the first step,  momentum * buf + d  after
    w  -= lr * (d + momentum * buf)     Nesterov,   lr * buf  heavy ball

The bodies are plain C statements (CuPy ``ElementwiseKernel``); the tests compile them with
g++ and compare with the reference on the CPU, and on a GPU directly.
"""
from __future__ import annotations

import warnings

import numpy as np

from ...backend import cupy_module, is_gpu_array
from . import launches, record

MOMENTUM_BODY = """
T d = g;
if (wd != (T)0) d += wd * w;
const T b = first ? d : momentum * buf + d;
buf = b;
w -= lr * (nesterov ? d + momentum * b : b);
"""

PLAIN_BODY = """
T d = g;
if (wd != (T)0) d += wd * w;
w -= lr * d;
"""

_kernels = {}          # built once: "momentum" / "plain" -> cupy.ElementwiseKernel
_failed = {}           # dtype -> why the kernel could not be built (then the reference runs)


def _kernel(which):
    if which not in _kernels:
        cp = cupy_module()
        if which == "momentum":
            _kernels[which] = cp.ElementwiseKernel(
                "T g, T lr, T momentum, T wd, int32 nesterov, int32 first", "T w, T buf",
                MOMENTUM_BODY, "mx_sgd_momentum")
        else:
            _kernels[which] = cp.ElementwiseKernel("T g, T lr, T wd", "T w", PLAIN_BODY, "mx_sgd_plain")
    return _kernels[which]


def supports(w, grad=None, buf=None, lr=None, momentum=0.0, nesterov=False, weight_decay=0.0, regularize=True):
    """float32/float64 parameters on the GPU with gradient (and buffer) alike; not after a failed build."""
    if str(w.dtype) not in ("float32", "float64") or str(w.dtype) in _failed or not is_gpu_array(w):
        return False
    for a in (grad, buf):
        if a is not None and (not is_gpu_array(a) or a.dtype != w.dtype or a.shape != w.shape):
            return False
    return w.flags.c_contiguous and (buf is None or buf.flags.c_contiguous)


def sgd_update(w, grad, buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0, regularize=True):
    """Update ``w`` in place from ``grad``; returns the momentum buffer (``buf`` updated, or a new one).

    w, grad, buf: the same shape and dtype on the GPU; ``buf`` None on the first step.
    """
    from ...optim import sgd_update as reference
    if not supports(w, grad, buf):
        return reference(w, grad, buf, lr, momentum, nesterov, weight_decay, regularize)
    cp = cupy_module()
    real = np.dtype(w.dtype).type
    given = buf
    wd = real(weight_decay if regularize else 0.0)
    try:
        if momentum:
            first = buf is None
            if first:
                buf = cp.empty_like(w)
            launches["mx_sgd_momentum"] += 1
            _kernel("momentum")(grad, real(lr), real(momentum), wd, np.int32(bool(nesterov)), np.int32(first), w, buf)
        else:
            launches["mx_sgd_plain"] += 1
            _kernel("plain")(grad, real(lr), wd, w)
        record(f"sgd {w.dtype}", "compiled")
        return buf
    except Exception as exc:         # a build failure (arguments were checked): nothing was written
        _failed[str(w.dtype)] = str(exc)
        record(f"sgd {w.dtype}", f"failed: {type(exc).__name__}: {str(exc).strip()[:500]}")
        warnings.warn(f"minixception: the fused SGD kernel failed to compile for {w.dtype} ({exc}); "
                      "SGD runs the plain CuPy update instead. See minixception.kernels.cuda.status().",
                      RuntimeWarning, stacklevel=2)
        return reference(w, grad, given, lr, momentum, nesterov, weight_decay, regularize)


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("sgd_update", "gpu", Kernel("cuda", sgd_update, None, supports))
