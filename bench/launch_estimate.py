"""Kernel launches of one training step, estimated on the CPU (no GPU needed).

    python bench/launch_estimate.py                    # mini_xception width 1
    python bench/launch_estimate.py --model xception32

On a GPU, ``bench/bench_gpu.py`` *counts* the launches (CUPTI through torch.profiler). Here there
is no GPU, so the step runs on NumPy with every array operation counted as the CuPy kernel it
would be: each call through ``xp`` (``xp.einsum``, ``xp.maximum``, ``xp.zeros``...), each ufunc
on an array (``a * b``, ``buf += g``, ``x.sum()``, ``a @ b``), each copy or fill
(``a.copy()``, ``a.astype()``, ``a[...] = v``); views, ``empty`` and shape changes are free.
That is the reference path, op by op. The fast path is then the same step with each call of an
op that has a hand-written kernel charged what its wrapper launches instead (the constants in
``CUDA_LAUNCHES``; tests/test_cuda_kernels.py asserts those launch sequences).

It is an estimate: a CuPy reduction may take two kernels, a GEMM may take more than one,
``mean`` is counted as a sum and a divide. It counts the same way before and after, so the
reduction it shows is the reduction in launches the kernels make.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import minixception as mx                # noqa: E402
from minixception import backend         # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import cupy_step           # noqa: E402

# launches per call of each op's CUDA wrapper (kernels/cuda/*.py)
CUDA_LAUNCHES = {
    ("depthwise_conv2d", "forward"): 1,          # dw_forward
    ("depthwise_conv2d", "backward"): 3,         # dw_backward_input, dw_backward_kernel, the sum of the partials
    ("batchnorm", "forward"): 3,                 # bn_partial_stats, bn_finish_stats, bn_apply (training mode)
    ("batchnorm", "backward"): 3,                # bn_partial_grads, bn_finish_grads, bn_apply
    ("maxpool2d", "forward"): 1,                 # maxpool_forward
    ("maxpool2d", "backward"): 1,                # maxpool_backward
    ("sgd_update", "update"): 1,                 # mx_sgd_momentum (or mx_sgd_plain)
}

VIEW_FUNCTIONS = {"empty", "empty_like", "broadcast_to", "sliding_window_view", "as_strided", "reshape",
                  "transpose", "moveaxis", "expand_dims", "squeeze", "ravel", "shape", "ndim", "result_type",
                  "isscalar", "iinfo", "finfo", "dtype", "get_array_module"}


class _Count:
    launches = 0
    depth = 0          # >0 inside a counted call: what it does inside is that one launch


@contextlib.contextmanager
def _one_launch():
    """Count one launch for what runs inside (unless an enclosing call already counted it)."""
    if _Count.depth == 0:
        _Count.launches += 1
    _Count.depth += 1
    try:
        yield
    finally:
        _Count.depth -= 1


def _wrap(v):
    if isinstance(v, np.ndarray) and not isinstance(v, CountingArray):
        return v.view(CountingArray)
    if isinstance(v, tuple):
        return tuple(_wrap(a) for a in v)
    if isinstance(v, list):
        return [_wrap(a) for a in v]
    return v


def _plain(v):
    if isinstance(v, CountingArray):
        return v.view(np.ndarray)
    if isinstance(v, tuple):
        return tuple(_plain(a) for a in v)
    return v


class CountingArray(np.ndarray):
    """A NumPy array whose operations are counted as GPU kernel launches."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = _plain(kwargs["out"])
        with _one_launch():
            result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if func.__name__ in VIEW_FUNCTIONS:
            return _wrap(super().__array_function__(func, types, args, kwargs))
        with _one_launch():
            return _wrap(super().__array_function__(func, types, args, kwargs))

    def __setitem__(self, key, value):
        with _one_launch():
            super().__setitem__(key, _plain(value))

    def copy(self, order="C"):
        with _one_launch():
            return _wrap(self.view(np.ndarray).copy(order))

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        with _one_launch():
            return _wrap(self.view(np.ndarray).astype(dtype, order, casting, subok, copy))


class CountingNumpy:
    """``numpy`` as an array module whose calls are counted (allocations and views excepted)."""

    def __init__(self, module=np):
        self._m = module

    def __getattr__(self, name):
        v = getattr(self._m, name)
        if isinstance(v, type(np)):
            return CountingNumpy(v)
        if isinstance(v, type) or not callable(v) or name in VIEW_FUNCTIONS:
            if callable(v) and name in ("empty", "empty_like"):
                return lambda *a, **k: _wrap(v(*_plain(a), **k))
            return v
        if name in ("ascontiguousarray", "asarray"):
            def maybe_copy(a, *args, **kw):
                out = v(_plain(a), *args, **kw)
                if out is not _plain(a) and not (isinstance(a, np.ndarray) and np.shares_memory(out, _plain(a))):
                    _Count.launches += _Count.depth == 0
                    return _wrap(out)
                return a if isinstance(a, CountingArray) else _wrap(out)
            return maybe_copy

        def counted(*args, **kwargs):
            if "out" in kwargs:
                kwargs["out"] = _plain(kwargs["out"])
            with _one_launch():
                return _wrap(v(*_plain(args), **kwargs))
        return counted


@contextlib.contextmanager
def counting_array_module():
    """Every ``get_array_module`` the package imported hands out CountingNumpy for NumPy arrays."""
    original = backend.get_array_module
    counting = CountingNumpy()

    def patched(*arrays):
        xp = original(*arrays)
        return counting if xp is np else xp

    mods = [m for n, m in list(sys.modules.items())
            if n.split(".")[0] == "minixception" and getattr(m, "get_array_module", None) is original]
    for m in mods:
        m.get_array_module = patched
    old_threads = os.environ.get("MINIXCEPTION_THREADS")
    os.environ["MINIXCEPTION_THREADS"] = "1"        # one piece per op, as on the GPU
    try:
        yield
    finally:
        for m in mods:
            m.get_array_module = original
        if old_threads is None:
            os.environ.pop("MINIXCEPTION_THREADS")
        else:
            os.environ["MINIXCEPTION_THREADS"] = old_threads


@contextlib.contextmanager
def per_op_counts(calls):
    """Record (op, phase, launches) of every call of the ops that have CUDA kernels."""
    from minixception import functional as F
    from minixception import optim
    from minixception.functional import separable as F_sep
    targets = [("depthwise_conv2d", "forward", [F, F_sep]), ("depthwise_conv2d", "backward", [F, F_sep]),
               ("batchnorm", "forward", [F]), ("batchnorm", "backward", [F]),
               ("maxpool2d", "forward", [F]), ("maxpool2d", "backward", [F])]
    saved = []
    for op, phase, mods in targets:
        fname = f"{op}_{phase}"
        orig = getattr(F, fname)

        def wrapper(*args, _orig=orig, _op=op, _phase=phase, **kwargs):
            before = _Count.launches
            out = _orig(*args, **kwargs)
            training = kwargs.get("training", args[5] if len(args) > 5 else True)
            swappable = _op != "batchnorm" or _phase == "backward" or training
            calls.append((_op, _phase, _Count.launches - before, swappable))
            return out
        for m in mods:
            saved.append((m, fname, getattr(m, fname)))
            setattr(m, fname, wrapper)
    # the layers reach the ops through the kernel table: register the counting wrappers there too
    table = {op: mx.kernels.reference(op) for op in ("depthwise_conv2d", "batchnorm", "maxpool2d")}
    for op in table:
        mx.kernels.register_reference(op, getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward"))
    orig_sgd = optim.sgd_update
    ref = mx.kernels.reference("sgd_update")

    def sgd_wrapper(*args, **kwargs):
        before = _Count.launches
        out = orig_sgd(*args, **kwargs)
        calls.append(("sgd_update", "update", _Count.launches - before, True))
        return out
    mx.kernels.register_reference("sgd_update", sgd_wrapper, None)
    try:
        yield
    finally:
        for m, fname, f in saved:
            setattr(m, fname, f)
        for op, k in table.items():
            mx.kernels.register_reference(op, k.forward, k.backward)
        mx.kernels.register_reference("sgd_update", ref.forward, ref.backward)


def estimate(model, batch=2, side=32, classes=10):
    """{"reference": launches of one training step, "fast": with the CUDA kernels, "ops": per-op table}."""
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.data, p.grad = p.data.view(CountingArray), p.grad.view(CountingArray)
    for m in model.modules():
        for k, b in list(getattr(m, "_buffers", {}).items()):
            m._buffers[k] = b.view(CountingArray)
    x = rng.standard_normal((batch, side, side, 3)).astype(np.float32).view(CountingArray)
    y = rng.integers(0, classes, batch).view(CountingArray)
    step = cupy_step(model, x, y)                # the very step bench_gpu.py times

    with counting_array_module(), mx.use_kernels("reference"):
        step()                                   # the first step makes the momentum buffers
        calls = []
        _Count.launches = 0
        with per_op_counts(calls):
            step()
        total = _Count.launches
    table = defaultdict(lambda: [0, 0, 0])       # (op, phase) -> calls, reference launches, fast launches
    fast = total
    for op, phase, n, swappable in calls:
        row = table[(op, phase)]
        row[0] += 1
        row[1] += n
        cuda = CUDA_LAUNCHES[(op, phase)] if swappable else n
        row[2] += cuda
        fast += cuda - n
    # nested calls (the depthwise half of a separable conv) are inside their separable's count
    return dict(reference=total, fast=fast, ops=dict(table))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["mini1", "mini2", "mini4", "xception32"], default="mini1")
    args = ap.parse_args(argv)
    if args.model == "xception32":
        model = mx.models.Xception(num_classes=10, input_shape=(32, 32, 3), small_input=True, rng=0)
    else:
        model = mx.models.mini_xception(10, width=int(args.model[4:]), rng=0)
    r = estimate(model)
    print(f"kernel launches of one training step of {args.model} (estimated on the CPU: each array operation "
          "counted as one CuPy launch)")
    print(f"{'op':18s} {'phase':9s} {'calls':>6s} {'reference':>10s} {'CUDA':>6s}")
    for (op, phase), (n, ref, fast) in sorted(r["ops"].items()):
        print(f"{op:18s} {phase:9s} {n:6d} {ref:10d} {fast:6d}")
    print(f"whole step: {r['reference']} launches with the plain CuPy reference, "
          f"{r['fast']} with the hand-written kernels (x{r['reference'] / r['fast']:.1f} fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
