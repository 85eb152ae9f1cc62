"""The pointwise convolution's GEMMs, split over the kernels' thread pool inside ``cpu_threads``.

The reference pointwise convolution is three GEMMs on the (M, C) pixel matrix, M = N*H*W:

    y = x W        dx = dy W^T        dW = x^T dy

Outside a ``cpu_threads`` block these are plain NumPy products: BLAS threads them itself.
Inside one, BLAS is held to one thread (OpenBLAS's idle threads spin, and on a busy machine
they fight the kernels' threads for the cores), so this module splits each GEMM by rows of
the pixel matrix over the kernels' pool instead: every thread multiplies its own block of
rows, with NumPy releasing the GIL inside BLAS. ``dW`` is a sum over the rows: it is
computed per fixed chunk of rows and the partial products are added in chunk order, so the
result does not depend on the thread count.
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from .. import Kernel, register
from . import threads

# rows per chunk: at least this much multiply-add work, or a hand-off costs more than it saves
_MIN_WORK = 1 << 21


def _split():
    """Split GEMMs over the pool only inside ``cpu_threads`` (BLAS single-threaded there)."""
    return threads.in_cpu_threads_scope()


def matmul(a, b):
    """a: (M, K) @ b: (K, F) -> (M, F), rows of ``a`` split over the threads."""
    m = a.shape[0]
    bounds = threads.chunk_bounds(m, a.shape[1] * b.shape[1], _MIN_WORK)
    if not _split() or len(bounds) < 2:
        return a @ b
    out = np.empty((m, b.shape[1]), dtype=np.result_type(a, b))
    threads.run_chunks(lambda lo, hi: np.matmul(a[lo:hi], b, out=out[lo:hi]), bounds)
    return out


def matmul_tn(a, b):
    """a: (M, K), b: (M, F) -> a^T b: (K, F), as partial products over fixed row chunks, added in order."""
    m = a.shape[0]
    bounds = threads.chunk_bounds(m, a.shape[1] * b.shape[1], _MIN_WORK)
    if not _split() or len(bounds) < 2:
        return a.T @ b
    parts = threads.run_chunks(lambda lo, hi: a[lo:hi].T @ b[lo:hi], bounds)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def supports(x, kernel=None, *args, **kwargs):
    """C-contiguous float32/float64 NumPy input and kernel of one dtype, a (1, 1, C, F) kernel."""
    return (isinstance(x, np.ndarray) and isinstance(kernel, np.ndarray) and x.ndim == 4
            and x.dtype in (np.float32, np.float64) and kernel.dtype == x.dtype
            and x.flags.c_contiguous and kernel.ndim == 4 and kernel.shape[:3] == (1, 1, x.shape[3]))


class _Cache:
    __slots__ = ("x2", "kernel", "x_shape")

    def __init__(self, x2, kernel, x_shape):
        self.x2, self.kernel, self.x_shape = x2, kernel, x_shape


def pointwise_conv2d_forward(x, kernel):
    """x: (N, H, W, C), kernel: (1, 1, C, F) -> y: (N, H, W, F), cache."""
    if not supports(x, kernel):
        return F.pointwise_conv2d_forward(x, kernel)              # explains a bad call
    n, h, w, c = x.shape
    f = kernel.shape[3]
    x2 = x.reshape(-1, c)
    y = matmul(x2, kernel.reshape(c, f)).reshape(n, h, w, f)
    return y, _Cache(x2, kernel, x.shape)


def pointwise_conv2d_backward(dy, cache):
    """dy: (N, H, W, F) -> (dx: (N, H, W, C), dkernel: (1, 1, C, F))."""
    if not isinstance(cache, _Cache):
        return F.pointwise_conv2d_backward(dy, cache)
    c, f = cache.kernel.shape[2], cache.kernel.shape[3]
    dy2 = np.ascontiguousarray(dy).reshape(-1, f)
    dkernel = matmul_tn(cache.x2, dy2).reshape(cache.kernel.shape)        # x^T dy
    dx = matmul(dy2, cache.kernel.reshape(c, f).T).reshape(cache.x_shape)  # dy W^T
    return dx, dkernel


register("pointwise_conv2d", "cpu",
         Kernel("numpy-split", pointwise_conv2d_forward, pointwise_conv2d_backward, supports))
