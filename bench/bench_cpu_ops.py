"""Per-kernel timing of the numba CPU kernels (batch norm, max pool, ReLU, few-channel conv)
against their NumPy reference and PyTorch, forward + backward, at mini_xception's shapes.

    python bench/bench_cpu_ops.py              # wall clock, every thread, best of --repeat
    python bench/bench_cpu_ops.py --single     # CPU time of one thread (numba, BLAS and torch
                                               # all on the calling thread): steadier on a busy machine

Each round runs every implementation of an op once, interleaved, and the best round counts.
The ratio columns are time / PyTorch's time (best of NCHW and channels_last): below 1 is faster.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single", action="store_true", help="one thread everywhere, timed by thread CPU time")
    p.add_argument("--repeat", type=int, default=30, help="rounds per op (best counts)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--only", default="", help="run only the ops whose label contains this text (e.g. conv)")
    return p.parse_args()


ARGS = parse()
if ARGS.single:                                  # before NumPy loads its BLAS
    os.environ["MINIXCEPTION_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np                               # noqa: E402
import torch                                     # noqa: E402
import torch.nn.functional as TF                 # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minixception import kernels                 # noqa: E402
from minixception.kernels.cpu import threads     # noqa: E402

if ARGS.single:
    torch.set_num_threads(1)
CLOCK = time.thread_time if ARGS.single else time.perf_counter
DT = np.dtype(ARGS.dtype)
RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(DT)


def fast(op):
    kernels.cpu.load()
    k = kernels._fast.get((op, "cpu"))
    if k is None:
        raise SystemExit(f"no numba kernel registered for {op!r} (is numba installed?)")
    return k


def torch_pair(x_nhwc):
    """The array as an NCHW tensor and as a channels_last one."""
    t = torch.tensor(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    return t, t.contiguous(memory_format=torch.channels_last)


def batchnorm_case(shape):
    x, dy = rand(*shape), rand(*shape)
    c = shape[3]
    g, b = rand(c), rand(c)
    steps = {}
    for name, k in (("numba", fast("batchnorm")), ("reference", kernels.reference("batchnorm"))):
        def step(k=k):
            mm, mv = np.zeros(c, DT), np.ones(c, DT)
            _, cache = k.forward(x, g, b, mm, mv, training=True)
            k.backward(dy, cache)
        steps[name] = step
    gt, bt = torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)
    for layout, xt, dyt in zip(("nchw", "cl"), torch_pair(x), torch_pair(dy)):
        xt.requires_grad_(True)

        def step(xt=xt, dyt=dyt):
            rm, rv = torch.zeros(c, dtype=xt.dtype), torch.ones(c, dtype=xt.dtype)
            TF.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=0.01, eps=1e-3).backward(dyt)
        steps["torch " + layout] = step
    return f"batchnorm {shape}", steps


def maxpool_case(shape):
    x = rand(*shape)
    dy = rand(shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    steps = {}
    for name, k in (("numba", fast("maxpool2d")), ("reference", kernels.reference("maxpool2d"))):
        steps[name] = lambda k=k: k.backward(dy, k.forward(x, 3, 2, "same")[1])
    for layout, xt, dyt in zip(("nchw", "cl"), torch_pair(x), torch_pair(dy)):
        xt.requires_grad_(True)
        steps["torch " + layout] = lambda xt=xt, dyt=dyt: TF.max_pool2d(xt, 3, 2, padding=1).backward(dyt)
    return f"maxpool 3x3/2 same {shape}", steps


def relu_case(shape):
    x, dy = rand(*shape), rand(*shape)
    steps = {}
    for name, k in (("numba", fast("relu")), ("reference", kernels.reference("relu"))):
        steps[name] = lambda k=k: k.backward(dy, k.forward(x)[1])
    xt, dyt = torch.tensor(x, requires_grad=True), torch.tensor(dy)
    steps["torch"] = lambda: torch.relu(xt).backward(dyt)
    return f"relu {shape}", steps


def conv_case(cin, cout, n=32, size=32):
    x, kern, dy = rand(n, size, size, cin), rand(3, 3, cin, cout), rand(n, size, size, cout)
    steps = {}
    for name, k in (("numba", fast("conv2d")), ("reference", kernels.reference("conv2d"))):
        steps[name] = lambda k=k: k.backward(dy, k.forward(x, kern, None, 1, "same")[1])
    wt = torch.tensor(np.ascontiguousarray(kern.transpose(3, 2, 0, 1)), requires_grad=True)
    for layout, xt, dyt in zip(("nchw", "cl"), torch_pair(x), torch_pair(dy)):
        xt.requires_grad_(True)
        steps["torch " + layout] = lambda xt=xt, dyt=dyt: TF.conv2d(xt, wt, padding=1).backward(dyt)
    return f"conv 3x3 same {cin}->{cout} on ({n},{size},{size},{cin})", steps


def cases():
    """(label, {impl: step()}) at mini_xception's shapes (batch 32, 32x32 input, widths 1-4);
    every step runs forward then backward."""
    return ([batchnorm_case(s) for s in [(32, 32, 32, 16), (32, 32, 32, 32), (32, 16, 16, 64), (32, 8, 8, 128)]]
            + [maxpool_case(s) for s in [(32, 32, 32, 32), (32, 32, 32, 64), (32, 16, 16, 128), (32, 8, 8, 256)]]
            + [relu_case(s) for s in [(32, 32, 32, 16), (32, 16, 16, 64), (32, 8, 8, 128)]]
            + [conv_case(cin, cout) for cin, cout in [(3, 8), (8, 16), (3, 16), (16, 32), (3, 32)]])


def main():
    mode = "one thread, thread CPU time" if ARGS.single else "all threads, wall clock"
    print(f"forward+backward, {DT}, best of {ARGS.repeat} interleaved rounds ({mode}); "
          f"numba kernel threads: {threads.num_threads()}, torch threads: {torch.get_num_threads()}")
    print(f"{'op':44s} {'numba ms':>9s} {'ref ms':>9s} {'torch ms':>9s} {'numba/torch':>12s} {'ref/numba':>10s}")
    for label, steps in cases():
        if ARGS.only not in label:
            continue
        for step in steps.values():                     # warm up (compiles on the first call)
            step()
        best = {name: float("inf") for name in steps}
        for _ in range(ARGS.repeat):
            for name, step in steps.items():
                t0 = CLOCK()
                step()
                best[name] = min(best[name], CLOCK() - t0)
        torch_best = min(v for k, v in best.items() if k.startswith("torch"))
        print(f"{label:44s} {best['numba'] * 1e3:9.3f} {best['reference'] * 1e3:9.3f} {torch_best * 1e3:9.3f} "
              f"{best['numba'] / torch_best:12.2f} {best['reference'] / best['numba']:10.2f}")


if __name__ == "__main__":
    main()
