"""Batch norm in training mode on the GPU: batchnorm.cu behind the reference's signature.

    y, cache = batchnorm_forward_train(x, gamma, beta, moving_mean, moving_variance, True, momentum, eps)
    dx, dgamma, dbeta = batchnorm_backward_train(dy, cache)            x, dy: (N, H, W, C)

Three launches each way, whatever C and N*H*W (the plain CuPy version takes about a dozen
forward): per-block statistics, one combining launch that also updates the moving
statistics in place (Keras's rule), and one normalising launch. Evaluation mode (moving
statistics, a single multiply-add) runs the reference.
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...backend import cupy_module
from ...functional._checks import check_nhwc, check_same_dtype
from . import common, compiles, function, launch
from .common import MAX_GRID_Z, block_2d, check_dy

LANES = 8             # lanes per block of the column reductions (LANES in batchnorm.cu)


class BatchNormCache:
    """The backward recomputes xhat from x, mean and inv_std (no (M, C) xhat is kept)."""
    __slots__ = ("x2", "mean", "inv_std", "gamma", "shape")

    def __init__(self, x2, mean, inv_std, gamma, shape):
        self.x2, self.mean, self.inv_std, self.gamma, self.shape = x2, mean, inv_std, gamma, shape


def supports(x, gamma=None, beta=None, moving_mean=None, moving_variance=None, training=True,
             momentum=0.99, eps=1e-3):
    """Training mode, float32/float64, every array on the GPU in x's dtype, the kernels compiled."""
    if not training or str(x.dtype) not in ("float32", "float64"):
        return False
    arrays = [a for a in (gamma, beta, moving_mean, moving_variance) if a is not None]
    if not common.on_gpu(x, *arrays) or any(a.dtype != x.dtype for a in arrays):
        return False
    if getattr(x, "ndim", 0) != 4 or x.size // max(1, x.shape[-1]) < 2:
        return False                  # the reference raises the clear error
    return compiles("batchnorm", x.dtype)


def _rows(m):
    """Block rows P of a column reduction over m rows: ~64 rows per thread, at most 1024."""
    return max(1, min(1024, -(-int(m) // (LANES * 64))))


def _apply(a, b, mean, ascale, bscale, shift, out, m, c):
    """out = (a * ascale if a is given) + (b - mean) * bscale + shift, per channel; one launch."""
    use_a = a is not None
    if not use_a:                     # a pointer must still be passed: b, never read
        a, ascale = b, bscale
    block = block_2d(c)
    grid = (-(-c // block[0]), max(1, min(-(-m // block[1]), MAX_GRID_Z)))
    f = function("batchnorm", "bn_apply", b.dtype)
    launch(f, "bn_apply", grid, block, (a, b, mean, ascale, bscale, shift, out, np.int64(m), np.int32(c), np.int32(use_a)))


def batchnorm_forward_train(x, gamma, beta, moving_mean, moving_variance, training=True,
                            momentum=0.99, eps=1e-3):
    """x: (N, H, W, C) -> y, BatchNormCache; updates moving_mean / moving_variance in place."""
    if not supports(x, gamma, beta, moving_mean, moving_variance, training, momentum, eps):
        return F.batchnorm_forward(x, gamma, beta, moving_mean, moving_variance, training, momentum, eps)
    cp = cupy_module()
    c = gamma.shape[0]
    check_nhwc(x, c, "batch norm input")
    check_same_dtype(x, gamma, beta, what="batch norm")
    x2 = cp.ascontiguousarray(x).reshape(-1, c)
    m = x2.shape[0]
    dt = x2.dtype
    real = np.dtype(dt).type
    p = _rows(m)
    p_mean, p_m2 = cp.empty((p, c), dt), cp.empty((p, c), dt)
    launch(function("batchnorm", "bn_partial_stats", dt), "bn_partial_stats", (-(-c // 32), p), (32, LANES),
           (x2, p_mean, p_m2, np.int64(m), np.int32(c)))
    gamma, beta = cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta)
    mean, inv_std, scale = cp.empty(c, dt), cp.empty(c, dt), cp.empty(c, dt)
    for buf, name in ((moving_mean, "moving_mean"), (moving_variance, "moving_variance")):
        if not buf.flags.c_contiguous:
            raise ValueError(f"batch norm: {name} must be a contiguous (C,) array, updated in place")
    launch(function("batchnorm", "bn_finish_stats", dt), "bn_finish_stats", (-(-c // 128),), (128,),
           (p_mean, p_m2, gamma, mean, inv_std, scale, moving_mean, moving_variance,
            np.int64(m), np.int32(c), np.int32(p), real(momentum), real(eps)))
    y = cp.empty_like(x2)
    _apply(None, x2, mean, None, scale, beta, y, m, c)
    return y.reshape(x.shape), BatchNormCache(x2, mean, inv_std, gamma, x.shape)


def batchnorm_backward_train(dy, cache):
    """dy: (N, H, W, C) -> (dx: (N, H, W, C), dgamma: (C,), dbeta: (C,))."""
    if not isinstance(cache, BatchNormCache):               # the forward ran the reference
        return F.batchnorm_backward(dy, cache)
    x2, mean, inv_std, gamma = cache.x2, cache.mean, cache.inv_std, cache.gamma
    check_dy(dy, cache.shape, x2.dtype, "batch norm")
    cp = cupy_module()
    m, c = x2.shape
    dt = x2.dtype
    dy2 = cp.ascontiguousarray(dy).reshape(-1, c)
    p = _rows(m)
    p_dy, p_dyxc = cp.empty((p, c), dt), cp.empty((p, c), dt)
    launch(function("batchnorm", "bn_partial_grads", dt), "bn_partial_grads", (-(-c // 32), p), (32, LANES),
           (dy2, x2, mean, p_dy, p_dyxc, np.int64(m), np.int32(c)))
    dgamma, dbeta, scale, xcoef, shift = (cp.empty(c, dt) for _ in range(5))
    launch(function("batchnorm", "bn_finish_grads", dt), "bn_finish_grads", (-(-c // 128),), (128,),
           (p_dy, p_dyxc, inv_std, gamma, dgamma, dbeta, scale, xcoef, shift,
            np.int64(m), np.int32(c), np.int32(p)))
    dx = cp.empty_like(dy2)
    _apply(dy2, x2, mean, scale, xcoef, shift, dx, m, c)
    return dx.reshape(cache.shape), dgamma, dbeta


def register():
    from .. import Kernel, register as register_kernel
    register_kernel("batchnorm", "gpu", Kernel("cuda", batchnorm_forward_train, batchnorm_backward_train, supports))
