"""The pointwise (1x1) convolution's GEMMs, split by rows over the CPU kernels' thread pool.

Inside a training step (a ``cpu_threads`` block) BLAS is held to one thread (its idle threads spin and fight the kernels'
threads for the cores), so one big GEMM would run on one core. Here each thread multiplies its
own block of rows with single-threaded BLAS instead: ``y = x @ W`` and ``dx = dy @ W^T`` split by
rows (each output row is computed once, by one thread: bit-identical for any thread count), and
``dW = x^T dy`` as a sum over row blocks of fixed size, added in block order (reproducible for
any thread count too).

Outside such a block BLAS threads each GEMM itself, and the helpers make one plain call.
Registered for "pointwise_conv2d"; the fast separable convolution uses the same two helpers.
"""
from __future__ import annotations

import numpy as np

from .. import Kernel, register
from . import threads

# a block of rows is one BLAS call: big enough (16M multiply-adds) that the call's fixed cost and the
# partial sums of dW stay small; fixed by the problem size alone, so results never depend on threads
GEMM_BLOCK_WORK = 1 << 24


def matmul(a, b):
    """``a @ b`` for a tall a: (M, K), b: (K, F) -> (M, F); rows of a split over the pool."""
    bounds = threads.chunk_bounds(a.shape[0], a.shape[1] * b.shape[1], GEMM_BLOCK_WORK)
    if len(bounds) == 1 or not threads.blas_held():
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    threads.run_chunks(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), bounds)
    return out


def matmul_tn(a, b):
    """``a.T @ b`` for tall a: (M, K), b: (M, F) -> (K, F): per-block products added in block order."""
    bounds = threads.chunk_bounds(a.shape[0], a.shape[1] * b.shape[1], GEMM_BLOCK_WORK)
    if len(bounds) == 1 or not threads.blas_held():
        return a.T @ b
    parts = threads.run_chunks(lambda lo, hi: a[lo:hi].T @ b[lo:hi], bounds)
    total = parts[0]
    for p in parts[1:]:
        total += p
    return total


def pointwise_supports(x, kernel=None, *args, **kwargs):
    return (isinstance(x, np.ndarray) and isinstance(kernel, np.ndarray) and x.dtype.kind == "f"
            and x.dtype == kernel.dtype and x.ndim == 4 and kernel.ndim == 4
            and kernel.shape[:3] == (1, 1, x.shape[3]) and x.flags.c_contiguous)


def pointwise_conv2d_forward(x, kernel):
    """x: (N, H, W, C), kernel: (1, 1, C, F) -> y: (N, H, W, F), cache (the reference's)."""
    n, h, w, c = x.shape
    f = kernel.shape[3]
    x2 = x.reshape(-1, c)
    return matmul(x2, kernel.reshape(c, f)).reshape(n, h, w, f), (x2, kernel, x.shape)


def pointwise_conv2d_backward(dy, cache):
    """dy: (N, H, W, F) -> (dx: (N, H, W, C), dkernel: (1, 1, C, F))."""
    x2, kernel, x_shape = cache
    c, f = kernel.shape[2], kernel.shape[3]
    if tuple(dy.shape) != tuple(x_shape[:3]) + (f,) or dy.dtype != x2.dtype:
        raise TypeError(f"pointwise conv backward: expected dy of shape {tuple(x_shape[:3]) + (f,)} and dtype "
                        f"{x2.dtype}, got {dy.shape} {dy.dtype}")
    dy2 = np.ascontiguousarray(dy).reshape(-1, f)
    dkernel = matmul_tn(x2, dy2).reshape(kernel.shape)
    dx = matmul(dy2, np.ascontiguousarray(kernel.reshape(c, f).T)).reshape(x_shape)
    return dx, dkernel


register("pointwise_conv2d", "cpu", Kernel("numpy-threads", pointwise_conv2d_forward, pointwise_conv2d_backward,
                                           pointwise_supports))
