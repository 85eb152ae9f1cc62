"""Split memory-bound NumPy work over the batch and run the pieces on all CPU cores.

NumPy runs element-wise ufuncs and ``einsum`` on one core, while its BLAS (the GEMMs
of pointwise and regular convolutions) already uses them all. The depthwise
convolution, batch norm and max pool are element-wise work, so on a 2-core machine
they would run at half the speed PyTorch gets. NumPy releases the GIL inside those
loops, so plain Python threads, each on its own slice of the batch, do use every
core. On CuPy there is one piece -- the whole batch -- and one kernel launch per op.

Set ``MINIXCEPTION_THREADS=1`` to turn it off (results are identical either way:
each output element is computed by exactly one thread in the same order; only
the per-slice partial sums of reductions are added in a fixed order).

BLAS: OpenBLAS's own threads busy-wait between calls and then fight these threads
for the cores -- measured here, a training step was ~15% slower on a quiet 2-core
machine and up to 100x slower in 1x1-conv backward on a busy one. So when this
pool starts, NumPy's BLAS is set to one thread for the process (via threadpoolctl),
and the big GEMMs are split over the pool by rows instead (``matmul``,
``matmul_tn``). ``MINIXCEPTION_THREADS=1`` leaves BLAS's threading alone.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_pool = None
MIN_ELEMENTS = 1 << 16      # below this, thread hand-off costs more than it saves


def num_threads() -> int:
    env = os.environ.get("MINIXCEPTION_THREADS")
    if env:
        return max(1, int(env))
    return os.cpu_count() or 1


def batch_slices(xp, n, elements_per_sample=None):
    """Contiguous slices of range(n): one per thread on NumPy, a single one on CuPy."""
    k = num_threads() if xp is np else 1
    if elements_per_sample is not None and n * elements_per_sample < MIN_ELEMENTS:
        k = 1
    k = max(1, min(k, n))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


def run(fn, slices):
    """``[fn(s) for s in slices]``, in parallel threads when there is more than one slice."""
    global _pool
    if len(slices) == 1:
        return [fn(slices[0])]
    if _pool is None:
        _single_threaded_blas()
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="minixception")
    return list(_pool.map(fn, slices))


_blas_limit = None


def _single_threaded_blas():
    """One BLAS thread for the process: our pool does the parallel work (see the module notes)."""
    global _blas_limit
    if _blas_limit is None:
        try:
            from threadpoolctl import threadpool_limits
            _blas_limit = threadpool_limits(limits=1, user_api="blas")
        except Exception:       # threadpoolctl missing or no BLAS it knows: leave BLAS as it is
            _blas_limit = False


def matmul(a, b):
    """``a @ b`` for a tall 2-D ``a`` (M, K): each thread multiplies its own rows of ``a``."""
    xp = np if isinstance(a, np.ndarray) else None
    slices = batch_slices(np, a.shape[0], a.shape[1] + b.shape[1]) if xp is np else [None]
    if len(slices) == 1:
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    run(lambda r: np.matmul(a[r], b, out=out[r]), slices)
    return out


def matmul_tn(a, b):
    """``a.T @ b`` for tall ``a`` (M, K) and ``b`` (M, F): per-thread partial products, summed."""
    slices = batch_slices(np, a.shape[0], a.shape[1] + b.shape[1]) if isinstance(a, np.ndarray) else [None]
    if len(slices) == 1:
        return a.T @ b
    parts = run(lambda r: a[r].T @ b[r], slices)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def batched_einsum(xp, subscripts, operands_for, n, out_shape, dtype, work_per_sample=None):
    """``einsum(subscripts, *operands_for(slice(0, n)))`` for an output whose first axis is the batch.

    ``operands_for(b)`` returns the operands restricted to batch slice ``b``. On NumPy
    each slice's einsum writes straight into its rows of the output, in parallel; on
    CuPy it is a single call (CuPy's einsum takes no ``out=``).
    """
    if xp is not np:
        return xp.einsum(subscripts, *operands_for(slice(0, n)))
    out = np.empty(out_shape, dtype=dtype)
    run(lambda b: np.einsum(subscripts, *operands_for(b), out=out[b]), batch_slices(xp, n, work_per_sample))
    return out
