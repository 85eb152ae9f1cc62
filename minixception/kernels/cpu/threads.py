"""The one threading runtime of the CPU kernels: a small pool that runs batch chunks.

The numba kernels are compiled serial and ``nogil``: each call works on a contiguous range
of the batch and releases the GIL, so plain Python threads running different ranges use
every core. (numba's own ``parallel=True`` threads fought OpenBLAS's over the cores in a
whole training step.) The calling thread always runs one piece itself, so a split into two
costs one hand-off, not two.

Determinism: a reduction (a kernel gradient, batch-norm sums) is computed per *chunk* and
the chunks' partial results are added in chunk order. Chunk boundaries depend only on the
problem size -- never on the number of threads -- so the same seed gives bit-identical
results with 1, 2 or 16 threads.

``MINIXCEPTION_THREADS=N`` sets the number of threads (default: the machine's cores);
``with cpu_threads(n):`` sets it, and holds NumPy's BLAS to one thread, inside one block.
Nothing here changes BLAS's threading outside such a block.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

MIN_WORK = 1 << 20        # below about a million multiply-adds a hand-off costs more than it saves

_pool = None
_pool_size = 0
_lock = threading.Lock()
_threads = None
_scoped = contextvars.ContextVar("minixception_cpu_threads", default=None)   # set by cpu_threads()


def _threads_from_env() -> int:
    raw = os.environ.get("MINIXCEPTION_THREADS")
    if raw is None or raw.strip() == "":
        return os.cpu_count() or 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"MINIXCEPTION_THREADS must be a whole number of threads >= 1, got {raw!r}")
    cores = os.cpu_count() or 1
    if n > cores:      # more threads than cores only adds hand-offs (1000 made a 3 s run take 40 s)
        warnings.warn(f"MINIXCEPTION_THREADS={n} is more than this machine's {cores} cores; using {cores}",
                      RuntimeWarning, stacklevel=3)
        n = cores
    return n


def num_threads() -> int:
    """Threads the CPU kernels use: inside ``cpu_threads(n)`` n; else ``MINIXCEPTION_THREADS``
    (read and checked once); else the machine's cores."""
    global _threads
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _threads is None:
        _threads = _threads_from_env()
    return _threads


def chunk_bounds(n: int, work_per_item: int, min_work: int | None = None) -> list[tuple[int, int]]:
    """Split ``range(n)`` into contiguous chunks of at least ``min_work`` work each.

    The result depends on ``n`` and the work only (not on the thread count), so per-chunk
    partial sums added in chunk order are reproducible everywhere.
    """
    if n <= 0:
        return []
    if min_work is None:
        min_work = MIN_WORK
    per_chunk = max(1, -(-min_work // max(1, work_per_item)))     # ceil(min_work / work_per_item)
    k = max(1, min(n, n // per_chunk))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def _get_pool(size):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < size:
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="minixception")
            _pool_size = size
        return _pool


def run_chunks(fn, bounds):
    """``[fn(lo, hi) for lo, hi in bounds]``, the chunks shared among the threads.

    Each thread takes a contiguous run of chunks; the calling thread takes the first run.
    Results come back in chunk order whatever ran where.
    """
    if not bounds:
        return []
    t = min(num_threads(), len(bounds))
    if t == 1:
        return [fn(lo, hi) for lo, hi in bounds]
    groups = [bounds[len(bounds) * i // t: len(bounds) * (i + 1) // t] for i in range(t)]
    pool = _get_pool(t - 1)
    futures = [pool.submit(lambda g=g: [fn(lo, hi) for lo, hi in g]) for g in groups[1:]]
    results = [fn(lo, hi) for lo, hi in groups[0]]
    for f in futures:
        results.extend(f.result())
    return results


def blas_held() -> bool:
    """True inside a ``cpu_threads`` block, where BLAS runs on one thread (so splitting a GEMM over
    the pool is what uses the other cores); outside it BLAS threads its GEMMs itself."""
    return _scoped.get() is not None


@contextlib.contextmanager
def cpu_threads(n: int):
    """Within this block the CPU kernels run on ``n`` threads and NumPy's BLAS on one.

        with mx.cpu_threads(2):
            for step in ...: train_step()

    Why BLAS on one thread: OpenBLAS's idle threads spin, waiting for the next GEMM, and
    fight the kernels' threads for the cores -- a training step mixes the two all the
    time and ran several times slower with both at full width. The pointwise GEMMs are
    split by rows over the kernels' pool instead (``kernels/cpu/gemm.py``), so they still
    use every core. The previous BLAS limits come back on exit; outside such a
    block nothing here touches BLAS. BLAS threads are a process-wide setting, so other
    Python threads calling BLAS during the block see the limit too; the kernels' thread
    count is per context. Results never depend on ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"cpu_threads: expected a whole number of threads >= 1, got {n!r}")
    from threadpoolctl import threadpool_limits
    token = _scoped.set(n)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        _scoped.reset(token)
