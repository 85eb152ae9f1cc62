# %% [markdown]
r"""
# Chapter 9 — On the GPU

Every op in `minixception` is written once, against an *array module* `xp`: NumPy on the CPU,
CuPy on a CUDA GPU. This chapter moves the layers to the GPU, explains why the straightforward
`xp` version of the depthwise convolution is slow there and what a hand-written CUDA kernel does
instead, and compares timings: NumPy against PyTorch on this CPU (measured now), and NumPy, CuPy
and PyTorch/cuDNN on a GPU — measured when this notebook runs on a machine with one, otherwise
explained from figures **recorded earlier on one H100**, clearly marked as such.
"""

# %%
import inspect
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import functional as F
from minixception import nn
from minixception.backend import cupy_module, get_array_module

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
GPU = mx.gpu_available()
cp = cupy_module()
print("mode:", "fast" if FAST else "full", "| CuPy importable:", cp is not None, "| CUDA GPU:", GPU)
plt.rcParams.update({"figure.dpi": 72})

# %% [markdown]
r"""
## 1. One code path, two devices

Each functional op starts with `xp = get_array_module(x)` and then calls `xp.<name>`; a layer
moved with `.to("gpu")` holds CuPy arrays, so the very same lines run on the GPU. Mixing devices
in one call is refused rather than silently copied (a hidden host↔device copy is the classic
slow path):
"""

# %%
src_lines = inspect.getsource(F.depthwise_conv2d_forward).splitlines()
print(src_lines[0])
print("\n".join(l for l in src_lines if "xp" in l))        # the lines that pick and use the array module
x_host = np.ones((1, 4, 4, 2), np.float32)
assert get_array_module(x_host) is np
try:
    layer = nn.DepthwiseConv2D(2)
    if GPU:
        layer.to("gpu")
        layer(x_host)                               # a NumPy input for a GPU layer
    else:
        layer.to("gpu")                             # no GPU: refused with a clear message
    raise AssertionError("a device mismatch went through")
except (TypeError, RuntimeError) as e:
    print(type(e).__name__ + ":", str(e)[:160], "...")

# %% [markdown]
r"""
On a GPU machine the next cell runs a separable convolution and a small Xception on CuPy and
compares them with NumPy: float32 on either device against the float64 result, within the
tolerances of the test suite ($10^{-4}$ relative for local ops).
"""

# %%
if GPU:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 16, 32))
    ref = nn.SeparableConv2D(32, 64, rng=1, dtype="float64")
    y64 = ref(x)
    dev = nn.SeparableConv2D(32, 64, rng=1).to("gpu")
    y_gpu = mx.to_numpy(dev(cp.asarray(x, dtype=cp.float32)))
    err = np.abs(y_gpu - y64).max() / np.abs(y64).max()
    print(f"SeparableConv2D on CuPy vs float64 NumPy: relative error {err:.1e}")
    assert err < 1e-4
    model = mx.models.mini_xception(rng=0).to("gpu")
    xb_host = rng.standard_normal((64, 32, 32, 3)).astype(np.float32)
    logits = model(cp.asarray(xb_host))
    logits_cpu = mx.models.mini_xception(rng=0)(xb_host)           # the same weights (same seed) on NumPy
    gap = np.abs(mx.to_numpy(logits) - logits_cpu).max() / np.abs(logits_cpu).max()
    print(f"mini_xception on CuPy vs NumPy, same weights: relative gap {gap:.1e}")
    assert isinstance(logits, cp.ndarray) and gap < 1e-3         # the same function, on the device
else:
    print("no CUDA GPU here: the CuPy cells are skipped (the test suite's @gpu tests cover them on a GPU machine)")

# %% [markdown]
r"""
## 2. Why the plain `xp` depthwise convolution is slow on a GPU

Written with array operations only, a depthwise convolution is a sum over the $k^2$ taps of
shifted views of the input, each one whole-tensor multiply-add (the package's NumPy path now folds
the taps into one `einsum` over a strided window view, which helps on the CPU; on a GPU a generic
einsum over such a view is no better). On a GPU each whole-tensor operation is a separate kernel
launch that reads and writes whole tensors in global memory. Count the bytes for one $3\times3$ layer of
Xception's middle flow (batch 128, $19\times19\times728$, float32):
"""

# %%
n, h, w, c, k = 128, 19, 19, 728, 3
tensor_mb = n * h * w * c * 4 / 1e6
ideal = 2 * tensor_mb                          # read x once, write y once
per_tap = k * k * 3 * tensor_mb                # each tap: read a shifted x, read y, write y
flops = 2 * k * k * n * h * w * c
print(f"one activation tensor: {tensor_mb:.0f} MB")
print(f"fused kernel:  ~{ideal:.0f} MB of memory traffic")
print(f"tap by tap:    ~{per_tap:.0f} MB of memory traffic ({per_tap / ideal:.0f}x), in {k * k}+ kernel launches")
print(f"arithmetic: {flops / 1e9:.2f} GFLOP, i.e. {flops / (ideal * 1e6):.1f} FLOP per byte even when fused")

# %% [markdown]
r"""
At about 2 FLOP per byte the depthwise convolution is **memory-bound** on any GPU (an H100 needs
roughly 20 FLOP per byte of HBM traffic to keep its float32 units busy), so its speed is set by
bytes moved, and the tap-by-tap version moves more than ten times the necessary bytes. A
hand-written kernel computes each output in one thread that reads its $k\times k$ window and writes
once: the traffic falls to about the ideal, the launches to one.

## 3. A CUDA kernel for the depthwise convolution

The package keeps its hand-written kernels as CUDA C sources in `minixception/cuda/`
(`depthwise.cu`, `batchnorm.cu`), compiled on first use by CuPy (NVRTC) per dtype and kernel size.
The plain `xp` versions in `minixception.functional` stay the reference and the fallback: the
depthwise op calls the kernel only for a CuPy input when it compiled, and
`minixception.cuda.disabled()` (or `MINIXCEPTION_CUDA_KERNELS=0`) forces the `xp` path. Here is the
forward kernel, `dw_forward`, as the package ships it:
"""

# %%
from minixception import cuda as mx_cuda               # imports without CuPy or a GPU

cu = mx_cuda.source("depthwise")
lines = cu.splitlines()
start = next(i for i, l in enumerate(lines) if "void dw_forward(" in l)
end = next(i for i in range(start, len(lines)) if lines[i] == "}")
header = [i for i in range(len(lines)) if lines[i].startswith(("#ifndef MX_T", "#define MX_T", "typedef"))]
for i in header + [None] + list(range(start - 2, end + 1)):
    print("    ..." if i is None else f"{i + 1:3d} | {lines[i]}")
kernels = [l.split("void ")[1].split("(")[0] for l in lines if "__global__ void" in l]
print("\nkernels in depthwise.cu:", kernels)
assert kernels == ["dw_forward", "dw_backward_input", "dw_backward_kernel"]

# %% [markdown]
r"""
Step by step through the listing:

1. **The scalar type** `real` is a macro set at compile time (`-DMX_T=float` or `double`), and so are
   the kernel height and width (`-DKH=3 -DKW=3`): with constant bounds the compiler fully unrolls the
   two tap loops (`#pragma unroll`).
2. **The signature**: raw pointers to `x`, the kernel `k` and the output `y` (`__restrict__`: they
   do not alias, so loads can be cached), the shapes, the strides and the *top/left* padding only —
   TF "same" padding's extra row at the bottom/right is just a coordinate past the edge.
3. **Which output am I?** `idx = blockIdx.x * blockDim.x + threadIdx.x`, in a *grid-stride loop*
   (`idx += blockDim.x * gridDim.x`): a launch of any grid size covers all `N*OH*OW*C` outputs, one
   per thread per iteration. Indices are `long long`: a batch of activations can exceed $2^{31}$ values.
4. **Unflatten, channel fastest**: `c = idx % C`, then `ow`, `oh`, `n`. With NHWC, the 32 threads of a
   warp take 32 consecutive channels of the same pixel, so each of their loads of `x` and `k` and
   their store to `y` touches 32 consecutive floats — one coalesced memory transaction.
5. **The window's corner**: `h0 = oh*SH - PT`, `w0 = ow*SW - PL` (negative at the top/left border).
6. **Zero padding without a padded copy**: rows `h` and columns `w` outside the image are skipped
   (`continue`), exactly as if they held zeros — no padded tensor is allocated or filled.
7. **Accumulate in a register**: `acc += x[((n*H + h)*W + w)*C + c] * k[(i*KW + j)*C + c]`; the
   kernel weight for channel `c` is read by every thread of that channel and stays in cache.
8. **Write once**: `y[idx] = acc`. Each input value is read by at most $k^2$ threads (mostly from cache)
   and each output written once: the ideal traffic of section 2, in one launch.

The backward pass is two more kernels in the same file. `dw_backward_input` is the same pattern run
over the *input* positions: each thread gathers the outputs whose windows covered its pixel
(`oh = (h + PT - i) / SH` when divisible), so no two threads write the same place — no atomics, and
the result is deterministic. `dw_backward_kernel` is a reduction over all $N H_o W_o$ output pixels
for each of the $k^2 C$ weights: blocks of 32 channels × 8 lanes keep $k^2$ partial sums in registers,
combine the lanes in shared memory, and leave one small sum over blocks to the host side.

We can follow the index arithmetic of steps 3–8 in plain Python for a tiny tensor — one loop
iteration per "thread" — and compare with the package's NumPy depthwise convolution:
"""

# %%
def depthwise_by_threads(x, kern, stride, padding):
    """Emulate a one-thread-per-output depthwise kernel: flat thread index -> (n, i, j, c)."""
    N, H, W, C = x.shape
    kh, kw = kern.shape[:2]
    (pt, _), (pl, _) = F.conv_geometry(H, W, (kh, kw), stride, padding)[0]
    (_, (Ho, Wo)) = F.conv_geometry(H, W, (kh, kw), stride, padding)
    xf, kf = x.reshape(-1), kern.reshape(-1)            # flat buffers, as the kernel sees them
    y = np.empty(N * Ho * Wo * C, x.dtype)
    for idx in range(N * Ho * Wo * C):                   # one "thread" per output value
        c = idx % C
        j = (idx // C) % Wo
        i = (idx // (C * Wo)) % Ho
        n_ = idx // (C * Wo * Ho)
        acc = 0.0
        for a in range(kh):
            r = i * stride + a - pt
            if r < 0 or r >= H:
                continue
            for b in range(kw):
                s = j * stride + b - pl
                if s < 0 or s >= W:
                    continue
                acc += xf[((n_ * H + r) * W + s) * C + c] * kf[(a * kw + b) * C + c]
        y[idx] = acc
    return y.reshape(N, Ho, Wo, C)

rng = np.random.default_rng(0)
for stride in (1, 2):
    x = rng.standard_normal((2, 7, 6, 5))
    kern = rng.standard_normal((3, 3, 5, 1))
    y_threads = depthwise_by_threads(x, kern, stride, "same")
    y_numpy, _ = F.depthwise_conv2d_forward(x, kern, stride=stride, padding="same")
    print(f"stride {stride}: thread emulation vs NumPy depthwise: max diff {np.abs(y_threads - y_numpy).max():.1e}")
    assert np.allclose(y_threads, y_numpy)

# %% [markdown]
r"""
## 4. Timings on this CPU: NumPy against PyTorch (measured now)

The fair baseline is the same computation in PyTorch on the same machine, in the same run, as a
*ratio* (absolute times say more about the machine than about the code). Forward + backward of
three ops at a middle-flow-like shape:
"""

# %%
try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the CPU comparison")

def best(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)

cpu_rows = []
if torch is not None:
    nb, hw, ch, reps = (4, 16, 128, 3) if FAST else (16, 19, 256, 5)
    xn = rng.standard_normal((nb, hw, hw, ch)).astype(np.float32)
    dyn = rng.standard_normal((nb, hw, hw, ch)).astype(np.float32)
    kd = (rng.standard_normal((3, 3, ch, 1)) * 0.3).astype(np.float32)
    kp = (rng.standard_normal((1, 1, ch, ch)) * 0.1).astype(np.float32)
    g, bta = np.ones(ch, np.float32), np.zeros(ch, np.float32)
    xt = torch.from_numpy(xn.transpose(0, 3, 1, 2).copy()).requires_grad_()
    dyt = torch.from_numpy(dyn.transpose(0, 3, 1, 2).copy())
    kdt = torch.from_numpy(kd.transpose(2, 3, 0, 1).copy()).requires_grad_()
    kpt = torch.from_numpy(kp.transpose(3, 2, 0, 1).copy()).requires_grad_()
    gt, bt = torch.ones(ch, requires_grad=True), torch.zeros(ch, requires_grad=True)

    def np_dw():
        y, cache = F.depthwise_conv2d_forward(xn, kd, 1, "same"); F.depthwise_conv2d_backward(dyn, cache)
    def np_pw():
        y, cache = F.pointwise_conv2d_forward(xn, kp); F.pointwise_conv2d_backward(dyn, cache)
    def np_bn():
        y, cache = F.batchnorm_forward(xn, g, bta, np.zeros(ch, np.float32), np.ones(ch, np.float32))
        F.batchnorm_backward(dyn, cache)
    def t_dw():
        TF.conv2d(xt, kdt, padding=1, groups=ch).backward(dyt)
    def t_pw():
        TF.conv2d(xt, kpt).backward(dyt)
    def t_bn():
        TF.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3).backward(dyt)

    for name, a, b in [("depthwise 3x3", np_dw, t_dw), ("pointwise 1x1", np_pw, t_pw), ("batch norm", np_bn, t_bn)]:
        ta, tb = best(a, reps), best(b, reps)
        cpu_rows.append((name, ta, tb))
        print(f"{name:14s} NumPy {ta * 1e3:7.2f} ms   PyTorch {tb * 1e3:7.2f} ms   ratio {ta / tb:5.2f}")
    # same numbers on both sides: the comparison is of equal work
    y_np, _ = F.depthwise_conv2d_forward(xn, kd, 1, "same")
    y_t = TF.conv2d(xt, kdt, padding=1, groups=ch).detach().numpy().transpose(0, 2, 3, 1)
    assert np.allclose(y_np, y_t, rtol=1e-4, atol=1e-4)

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.barh([r[0] for r in cpu_rows], [r[1] / r[2] for r in cpu_rows], color="tab:blue")
    ax.axvline(1, color="gray", ls=":")
    ax.set_xlabel("NumPy time / PyTorch time (forward + backward; 1 = as fast)")
    ax.set_title(f"measured on this CPU, batch {nb}, {hw}x{hw}x{ch}"); plt.tight_layout(); plt.show()

# %% [markdown]
r"""
## 5. On the GPU: NumPy vs CuPy vs PyTorch
"""

# %%
torch_cuda = torch is not None and torch.cuda.is_available()
if GPU:
    nb, hw, ch = (32, 19, 728) if not FAST else (16, 19, 256)
    xg = cp.asarray(rng.standard_normal((nb, hw, hw, ch)), dtype=cp.float32)
    kg = cp.asarray(rng.standard_normal((3, 3, ch, 1)) * 0.3, dtype=cp.float32)

    def gpu_time(fn, reps=20):
        fn(); cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        cp.cuda.Device().synchronize()
        return (time.perf_counter() - t0) / reps

    t_kernel = gpu_time(lambda: F.depthwise_conv2d_forward(xg, kg, 1, "same"))     # the CUDA kernel
    with mx_cuda.disabled():                                                          # the plain xp version
        t_xp = gpu_time(lambda: F.depthwise_conv2d_forward(xg, kg, 1, "same"))
        y_xp = F.depthwise_conv2d_forward(xg, kg, 1, "same")[0]
    y_k = F.depthwise_conv2d_forward(xg, kg, 1, "same")[0]
    assert cp.allclose(y_k, y_xp, rtol=1e-4, atol=1e-4)                              # same numbers
    t_numpy = best(lambda: F.depthwise_conv2d_forward(cp.asnumpy(xg), cp.asnumpy(kg), 1, "same"), 3)
    rows = [("NumPy (CPU)", t_numpy), ("CuPy, plain xp code", t_xp), ("CuPy, CUDA kernel (dw_forward)", t_kernel)]
    if torch_cuda:
        xt_g = torch.as_tensor(cp.asnumpy(xg).transpose(0, 3, 1, 2).copy(), device="cuda")
        kt_g = torch.as_tensor(cp.asnumpy(kg).transpose(2, 3, 0, 1).copy(), device="cuda")
        def torch_dw():
            TF.conv2d(xt_g, kt_g, padding=1, groups=ch)
        torch_dw(); torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            torch_dw()
        torch.cuda.synchronize()
        rows.append(("PyTorch / cuDNN", (time.perf_counter() - t0) / 20))
    for name, t in rows:
        print(f"{name:32s} {t * 1e3:8.3f} ms")
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r[0] for r in rows], [r[1] * 1e3 for r in rows]); ax.set_xscale("log")
    ax.set_xlabel("depthwise 3x3 forward time (ms, log scale)")
    ax.set_title(f"measured here, batch {nb}, {hw}x{hw}x{ch}"); plt.tight_layout(); plt.show()
else:
    print("No CUDA GPU on this machine: the figures below are RECORDED reference figures (one H100),")
    print("reported by the project's developers, not measured here; bench/bench_gpu.py measures on your GPU.")

# %% [markdown]
r"""
### Recorded reference figures (one H100, fp32, TF32 off, PyTorch 2.11)

These numbers were **recorded once on an NVIDIA H100** by the project's developers while the CUDA
kernels were written; no file in this repository holds those runs, so take them as reported, not
as reproduced. They are shown so that a reader without a GPU can see the picture; this notebook
does not measure them. On a machine with a GPU, section 5 above measures the depthwise figures
and `python bench/bench_gpu.py` a whole training step against PyTorch/cuDNN.

* A full-width Xception at $32\times32$ input (20.8 M parameters) trains at **24.5 ms per step** at
  batch 128 and **66 ms** at batch 512; timm's Xception at $299\times299$ at 86 ms per step for batch 32
  (PyTorch, for scale).
* Written naively in `xp` (CuPy), the depthwise convolution was **27×** slower than cuDNN's and
  batch norm **38×** slower — the memory traffic and launch counts of section 2.
* A plain one-thread-per-output CUDA depthwise kernel (section 3) brought the depthwise
  convolution to **3.4×** cuDNN's time.
"""

# %%
recorded = {"depthwise, naive xp (CuPy)": 27.0, "batch norm, naive xp (CuPy)": 38.0,
            "depthwise, one-thread-per-output\nCUDA kernel": 3.4, "cuDNN (PyTorch)": 1.0}
fig, ax = plt.subplots(figsize=(8, 3.6))
bars = ax.barh(list(recorded), list(recorded.values()), color=["tab:red", "tab:red", "tab:orange", "tab:green"])
for bar, v in zip(bars, recorded.values()):
    ax.text(v * 1.05, bar.get_y() + bar.get_height() / 2, f"{v:g}x", va="center")
ax.set_xscale("log"); ax.set_xlim(0.8, 80)
ax.set_xlabel("time relative to cuDNN (log scale; 1 = as fast)")
ax.set_title("REPORTED figures from one H100, not measured here"); ax.invert_yaxis()
plt.tight_layout(); plt.show()

# %% [markdown]
r"""
Reading the recorded figures with section 2 in mind: the naive depthwise version is memory- and
launch-bound (27×); one thread per output removes the redundant traffic and most launches, an
8× gain, and the remaining 3.4× to cuDNN is the difference between a straightforward kernel and
one that tiles the input in shared memory so that neighbouring outputs share their window reads.
Batch norm is the same story: three or four whole-tensor passes and reductions per call, each a
separate launch, instead of one fused pass.

## Summary

* One code path: `xp = get_array_module(x)`; `.to("gpu")` moves a model; devices are never mixed
  silently.
* The depthwise convolution does ~2 FLOP per byte: memory-bound; tap-by-tap it moves >10× the
  necessary bytes in 9+ launches.
* A one-thread-per-output kernel reads each window once and writes once (its index arithmetic
  emulated and checked above).
* CPU ratios to PyTorch are measured in this notebook; GPU ratios are measured when a GPU is
  present, otherwise shown from recorded H100 figures.

## Exercises

1. Extend `depthwise_by_threads` to the input gradient: one "thread" per *input* pixel that
   gathers the outputs whose windows cover it. Check it against `F.depthwise_conv2d_backward`.
   <details><summary>Hint</summary>Input row r is covered by output row i through tap a when
   i * stride + a - pad_top = r, i.e. i = (r + pad_top - a) / stride, if that divides exactly and
   0 <= i < Ho.</details>
2. For the pointwise convolution (one GEMM), compute the FLOP per byte for $C = F = 728$ at
   batch 128, $19\times19$, and explain why it needs no hand-written kernel.
   <details><summary>Hint</summary>2 * M * C * F FLOP over (M*C + C*F + M*F) * 4 bytes, with
   M = N*H*W. A GEMM re-uses every loaded value many times.</details>
3. Estimate the memory traffic of batch norm's training forward and backward as written in
   `minixception/functional/batchnorm.py` (count the whole-tensor passes), and compare with the
   minimum. How close is that ratio to the reported 38×?
   <details><summary>Hint</summary>The minimum is one read and one write of the tensor forward
   (after the statistics), and reading x and dy and writing dx backward. Count each array
   operation over the whole tensor as one read or write of it.</details>

## Solutions
"""

# %%
# 1. the input gradient, one "thread" per input value (no two threads write the same place)
def depthwise_dx_by_threads(dy, kern, x_shape, stride, padding):
    N, H, W, C = x_shape
    kh, kw = kern.shape[:2]
    (pt, _), (pl, _) = F.conv_geometry(H, W, (kh, kw), stride, padding)[0]
    Ho, Wo = dy.shape[1:3]
    dx = np.zeros(x_shape)
    for idx in range(N * H * W * C):
        c = idx % C; col = (idx // C) % W; row = (idx // (C * W)) % H; n_ = idx // (C * W * H)
        acc = 0.0
        for a in range(kh):
            num = row + pt - a
            if num % stride or not 0 <= num // stride < Ho:
                continue
            for b in range(kw):
                num2 = col + pl - b
                if num2 % stride or not 0 <= num2 // stride < Wo:
                    continue
                acc += dy[n_, num // stride, num2 // stride, c] * kern[a, b, c, 0]
        dx[n_, row, col, c] = acc
    return dx

for stride in (1, 2):
    x = rng.standard_normal((2, 7, 6, 3)); kern = rng.standard_normal((3, 3, 3, 1))
    y, cache = F.depthwise_conv2d_forward(x, kern, stride=stride, padding="same")
    dy = rng.standard_normal(y.shape)
    assert np.allclose(depthwise_dx_by_threads(dy, kern, x.shape, stride, "same"), F.depthwise_conv2d_backward(dy, cache)[0])

# %%
# 2. pointwise 728 -> 728 at batch 128, 19x19: ~180 FLOP per byte -- compute-bound, cuBLAS's job
M, Cc = 128 * 19 * 19, 728
flop = 2 * M * Cc * Cc
bytes_moved = (M * Cc + Cc * Cc + M * Cc) * 4
print(f"pointwise GEMM: {flop / bytes_moved:.0f} FLOP per byte (the depthwise conv: ~2)")
assert flop / bytes_moved > 100

# %%
# 3. batch norm (training) as written: forward ~ read x for the mean, read x + write xc, read xc
#    (variance), read xc + write y: ~6 tensor passes against the minimum 3 (read x twice: stats,
#    then normalise; write y); backward: read dy, xc for the two sums, then read dy, xc + write dx:
#    ~5 against 3. Roughly 2x the minimum traffic in memory -- far from 38x: most of the reported
#    38x is kernel-launch and reduction overhead (many small launches per pass on a GPU), not bytes.
