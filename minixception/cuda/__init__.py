"""Hand-written CUDA kernels (CuPy ``RawModule``) for the hot ops: depthwise convolution
forward/backward and batch norm forward/backward in training mode.

The CUDA source lives next to this file (``depthwise.cu``, ``batchnorm.cu``), compiled on
first use by CuPy's NVRTC per dtype (and kernel size for depthwise). The plain ``xp``
versions in ``minixception.functional`` stay the reference and the fallback:
``functional.depthwise`` and ``functional.batchnorm`` call in here only when the input is
a CuPy array and :func:`ready` says the kernel compiled; tests compare the two on a GPU.

Switches: ``MINIXCEPTION_CUDA_KERNELS=0`` in the environment, or ``with disabled():``,
sends every call down the ``xp`` path (reference runs, A/B benchmarks).

Nothing here imports CuPy at import time: the package imports on machines without it.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from ..backend import cupy_module, gpu_available

SOURCE_DIR = Path(__file__).resolve().parent
_modules = {}          # (name, dtype, defines) -> compiled cupy.RawModule, or None if it failed
_forced_off = [False]
_has_gpu = [None]
_THREADS = 256
LANES = 8              # lanes per block of the column reductions (as in the .cu files)
MAX_TAPS = 49          # depthwise kernels up to 7x7 go through CUDA; larger ones use xp


@contextlib.contextmanager
def disabled():
    """Within this block every op takes the plain xp path (the reference)."""
    old = _forced_off[0]
    _forced_off[0] = True
    try:
        yield
    finally:
        _forced_off[0] = old


def enabled() -> bool:
    """The kernels may be used: not switched off, and CuPy sees a GPU."""
    if _forced_off[0] or os.environ.get("MINIXCEPTION_CUDA_KERNELS", "1") == "0":
        return False
    if _has_gpu[0] is None:                 # asked once: this runs on every depthwise / BN call
        _has_gpu[0] = gpu_available()
    return _has_gpu[0]


def source(name: str) -> str:
    return (SOURCE_DIR / f"{name}.cu").read_text()


def _ctype(dtype):
    return {"float32": "float", "float64": "double"}.get(str(dtype))


def module(name, dtype, **defines):
    """The compiled RawModule for ``name``.cu at ``dtype`` (cached), or None when it cannot be built."""
    key = (name, str(dtype), tuple(sorted(defines.items())))
    if key not in _modules:
        ctype = _ctype(dtype)
        if ctype is None:
            _modules[key] = None
            return None
        cp = cupy_module()
        options = (f"-DMX_T={ctype}",) + tuple(f"-D{k}={v}" for k, v in sorted(defines.items()))
        try:
            mod = cp.RawModule(code=source(name), options=options)
            mod.compile()
            _modules[key] = mod
        except Exception as exc:     # a compile or driver problem: fall back to xp, say so once
            warnings.warn(f"minixception: CUDA kernel {name}.cu {options} failed to build ({exc}); "
                          "using the plain CuPy version instead", RuntimeWarning)
            _modules[key] = None
    return _modules[key]


def ready(name, dtype, **defines) -> bool:
    """Whether the op ``name`` should run its hand-written kernel for ``dtype``."""
    return enabled() and module(name, dtype, **defines) is not None


def _grid(total):
    return (max(1, min(-(-int(total) // _THREADS), 65535 * 8)),)


def _reduction_rows(m):
    """Block rows P of a column reduction over m rows: ~64 rows per thread, at most 1024."""
    return max(1, min(1024, -(-int(m) // (LANES * 64))))


# -- depthwise convolution -------------------------------------------------------------

class DepthwiseCache:
    """What the CUDA backward needs: the unpadded input (no padded copy is made) and the geometry."""
    __slots__ = ("x", "kernel", "pads", "stride", "out_hw")

    def __init__(self, x, kernel, pads, stride, out_hw):
        self.x, self.kernel, self.pads, self.stride, self.out_hw = x, kernel, pads, stride, out_hw


def depthwise_ready(x, kernel):
    kh, kw = kernel.shape[:2]
    return kh * kw <= MAX_TAPS and ready("depthwise", x.dtype, KH=kh, KW=kw)


def _dw_args(x, pads, stride, out_hw):
    import numpy as np
    n, h, w, c = x.shape
    (pt, _), (pl, _) = pads
    return tuple(np.int32(v) for v in (n, h, w, c, out_hw[0], out_hw[1], stride[0], stride[1], pt, pl))


def depthwise_forward(x, kernel, pads, stride, out_hw):
    """x: (N, H, W, C), kernel: (kh, kw, C, 1) -> y: (N, oh, ow, C), DepthwiseCache. Validated by the caller."""
    cp = cupy_module()
    kh, kw = kernel.shape[:2]
    x = cp.ascontiguousarray(x)
    kernel = cp.ascontiguousarray(kernel)
    n, _, _, c = x.shape
    y = cp.empty((n, out_hw[0], out_hw[1], c), dtype=x.dtype)
    f = module("depthwise", x.dtype, KH=kh, KW=kw).get_function("dw_forward")
    f(_grid(y.size), (_THREADS,), (x, kernel, y) + _dw_args(x, pads, stride, out_hw))
    return y, DepthwiseCache(x, kernel, pads, stride, out_hw)


def depthwise_backward(dy, cache):
    """dy: (N, oh, ow, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    cp = cupy_module()
    x, kernel = cache.x, cache.kernel
    kh, kw, c, _ = kernel.shape
    dy = cp.ascontiguousarray(dy)
    mod = module("depthwise", x.dtype, KH=kh, KW=kw)
    args = _dw_args(x, cache.pads, cache.stride, cache.out_hw)
    dx = cp.empty_like(x)
    mod.get_function("dw_backward_input")(_grid(dx.size), (_THREADS,), (dy, kernel, dx) + args)
    m = dy.shape[0] * dy.shape[1] * dy.shape[2]
    p = _reduction_rows(m)
    partial = cp.empty((p, kh * kw, c), dtype=x.dtype)
    mod.get_function("dw_backward_kernel")((-(-c // 32), p), (32, LANES), (x, dy, partial) + args)
    dkernel = partial.sum(axis=0).reshape(kh, kw, c, 1)
    return dx, dkernel


# -- batch norm (training mode) --------------------------------------------------------

class BatchNormCache:
    """The CUDA backward recomputes xhat from x, mean and inv_std (no (M, C) xhat kept)."""
    __slots__ = ("x2", "mean", "inv_std", "gamma", "shape")

    def __init__(self, x2, mean, inv_std, gamma, shape):
        self.x2, self.mean, self.inv_std, self.gamma, self.shape = x2, mean, inv_std, gamma, shape


def batchnorm_ready(x):
    return ready("batchnorm", x.dtype)


def _column_sums(fname, mod, m, c, arrays, extra=()):
    """Run a partial-sum kernel over (m, c) and return the per-channel totals (one per output)."""
    import numpy as np
    cp = cupy_module()
    p = _reduction_rows(m)
    outs = [cp.empty((p, c), dtype=arrays[0].dtype) for _ in range(2 if fname == "bn_partial_grads" else 1)]
    mod.get_function(fname)((-(-c // 32), p), (32, LANES),
                            tuple(arrays) + tuple(outs) + (np.int64(m), np.int32(c)) + tuple(extra))
    return [o.sum(axis=0) for o in outs]


def batchnorm_forward_train(x, gamma, beta, moving_mean, moving_variance, momentum, eps):
    """x: (N, H, W, C) -> y, BatchNormCache; updates the moving statistics in place (Keras's rule)."""
    import numpy as np
    cp = cupy_module()
    c = gamma.shape[0]
    x2 = cp.ascontiguousarray(x).reshape(-1, c)
    m = x2.shape[0]
    mod = module("batchnorm", x.dtype)
    (s,) = _column_sums("bn_partial_moments", mod, m, c, (x2, x2), (np.int32(0),))   # mean unused in mode 0
    mean = s / m
    (ss,) = _column_sums("bn_partial_moments", mod, m, c, (x2, mean), (np.int32(1),))
    var = ss / m
    inv_std = 1.0 / cp.sqrt(var + eps)
    y = cp.empty_like(x2)
    g, b = cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta)
    mod.get_function("bn_forward_apply")(_grid(y.size), (_THREADS,),
                                         (x2, mean, inv_std, g, b, y, np.int64(y.size), np.int32(c)))
    moving_mean *= momentum
    moving_mean += (1.0 - momentum) * mean.astype(moving_mean.dtype, copy=False)
    moving_variance *= momentum
    moving_variance += (1.0 - momentum) * var.astype(moving_variance.dtype, copy=False)
    return y.reshape(x.shape), BatchNormCache(x2, mean, inv_std, g, x.shape)


def batchnorm_backward_train(dy, cache):
    """dy: (N, H, W, C) -> (dx, dgamma: (C,), dbeta: (C,))."""
    import numpy as np
    cp = cupy_module()
    x2, mean, inv_std, gamma = cache.x2, cache.mean, cache.inv_std, cache.gamma
    m, c = x2.shape
    dy2 = cp.ascontiguousarray(dy).reshape(-1, c)
    mod = module("batchnorm", x2.dtype)
    dbeta, dyxc = _column_sums("bn_partial_grads", mod, m, c, (dy2, x2, mean))
    dgamma = dyxc * inv_std
    dx = cp.empty_like(dy2)
    mod.get_function("bn_backward_apply")(
        _grid(dx.size), (_THREADS,),
        (dy2, x2, mean, inv_std, gamma, dbeta, dgamma, dx, np.int64(dx.size), np.int32(c),
         np.dtype(x2.dtype).type(1.0 / m)))
    return dx.reshape(cache.shape), dgamma, dbeta
