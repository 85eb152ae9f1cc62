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
moved with `.to("gpu")` holds CuPy arrays, so the very same lines run on the GPU. The functions in
`mx.functional` are that reference, and nothing else: no threads, no CUDA. A layer does not call
them directly; it asks the package's kernel table, `mx.kernels.select(op, x, ...)`, for an
implementation of its op on *this* input: a hand-written CUDA kernel for a CuPy array (section 3)
or a numba kernel for a NumPy array where the op has one, the reference otherwise — and
`with mx.use_kernels("reference"):` forces the reference for a block. Mixing devices in one call is
refused rather than silently copied (a hidden host↔device copy is the classic slow path):
"""

# %%
src_lines = inspect.getsource(F.depthwise_conv2d_forward).splitlines()
print(src_lines[0])
print("\n".join(l for l in src_lines if "xp" in l or "for " in l or "+=" in l))   # the array module, the tap loop
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

# which implementation the kernel table hands a layer, for a NumPy input, and under use_kernels
k_host = np.ones((3, 3, 2, 1), np.float32)
picked = mx.kernels.select("depthwise_conv2d", x_host, k_host, 1, "same").name
with mx.use_kernels("reference"):
    forced = mx.kernels.select("depthwise_conv2d", x_host, k_host, 1, "same").name
print(f"depthwise_conv2d on a NumPy array: {picked!r}; inside use_kernels('reference'): {forced!r}")
assert picked in ("numba", "reference") and forced == "reference"

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
shifted views of the input, each one whole-tensor multiply-add — exactly how the package's
reference `F.depthwise_conv2d_forward` is written (the lines printed above: a loop over the taps, each
`y += tap(...) * k[a, b]`). On a GPU each whole-tensor operation is a separate kernel
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

The package keeps its hand-written kernels as CUDA C sources in `minixception/kernels/cuda/`
(`depthwise.cu`, `batchnorm.cu`, `pooling.cu`; SGD and the dropout generator are CuPy elementwise
kernels), each with a small Python wrapper that has the reference's signature. CuPy compiles a
source on first use (NVRTC), once per dtype and per set of compile-time constants, and the wrapper
registers itself in the kernel table for CuPy inputs. The plain `xp` functions in
`minixception.functional` stay the reference, and the fallback: a call a kernel declines (say a
$9\times9$ kernel) or a kernel that failed to compile runs the reference, and
`with mx.use_kernels("reference"):` (or `MINIXCEPTION_CUDA_KERNELS=0`) forces it.
`minixception.kernels.cuda.status()` reports what is enabled, what compiled and what each op runs:
"""

# %%
from minixception.kernels import cuda as mx_cuda               # imports without CuPy or a GPU
from minixception.kernels.cuda import common as cuda_common
from minixception.kernels.cuda import depthwise as cuda_depthwise

st = mx_cuda.status()
print("enabled:", st["enabled"], f"({st['reason']})", "| GPU:", st["gpu"])
print("on a CuPy array each op runs:", st["ops"])
if GPU:
    assert st["ops"]["depthwise_conv2d"] == "cuda (gpu)"

# %% [markdown]
r"""
Here is the forward kernel, `dw_forward`, as the package ships it — its compile-time header and
the kernel itself, read from the file:
"""

# %%
cu = mx_cuda.source("depthwise")
lines = cu.splitlines()
start = next(i for i, l in enumerate(lines) if "void dw_forward(" in l)
end = next(i for i in range(start, len(lines)) if lines[i] == "}")
header = [i for i in range(len(lines))
          if lines[i].startswith(("#define MX_T", "typedef", "#define KH", "#define KW", "#define SH", "#define SW"))]
for i in header + [None] + list(range(start - 2, end + 1)):
    print("    ..." if i is None else f"{i + 1:3d} | {lines[i]}")

# the structural facts the walk-through below relies on, checked against the file
kernels = [l.split("void ")[1].split("(")[0] for l in lines if "__global__ void" in l]
print("\nkernels in depthwise.cu:", kernels)
assert kernels == ["dw_forward", "dw_backward_input", "dw_backward_kernel"]
body = "\n".join(lines[start:end + 1])
for macro in ("MX_T", "KH", "KW", "SH", "SW"):
    assert f"#ifndef {macro}" in cu                                   # each a compile-time constant
assert "blockIdx.x * blockDim.x + threadIdx.x" in body and "blockIdx.y * blockDim.y + threadIdx.y" in body
assert "row = blockIdx.z" in body and "row += gridDim.z" in body       # rows: a grid-stride loop
assert "% C" not in body and body.count("#pragma unroll") == 3         # no flat-index division; unrolled taps
assert "real tap[KH * KW]" in body and "(long long)" in body and body.count("__restrict__") == 3
# the wrapper: compile-time constants per kernel size and stride, and the launch shape
assert cuda_depthwise._defines(np.zeros((3, 3, 8, 1)), (2, 1)) == {"KH": 3, "KW": 3, "SH": 2, "SW": 1}
mid = (32, 19, 19, 728)                                               # a middle-flow layer, batch 32
blk = cuda_common.block_2d(mid[3])
grd = cuda_common.grid_3d(mid[3], mid[2], mid[0] * mid[1], blk)
print(f"launch for x of shape {mid}: block {blk}, grid {grd}")
assert blk == (32, 8) and grd == (23, 3, 32 * 19)

# %% [markdown]
r"""
Step by step through the listing:

1. **The scalar type and the constants.** `real` is the macro `MX_T`, set when the source is
   compiled (`-DMX_T=float` or `double`), and so are the kernel size `KH`, `KW` and the stride
   `SH`, `SW` (the wrapper passes `-DKH=3 -DKW=3 -DSH=1 -DSW=1` for a $3\times3$ stride-1 layer and
   compiles one module per combination; the `#define`s printed above are only the defaults for a
   compile that sets none). With constant bounds the compiler fully unrolls the tap loops
   (`#pragma unroll`), and `oh * SH` is a multiplication by a known constant.
2. **The signature**: raw pointers to `x`, the kernel `k` and the output `y`, marked `__restrict__`
   (they do not alias, so loads can be cached), the shapes, and the *top/left* padding only — TF
   "same" padding's extra row at the bottom/right is just a coordinate past the edge.
3. **A 3-D launch: which output am I?** There is no flat index to unflatten. The block is
   `(bx, by)` threads — `bx` the power of two that covers the channels, at most 32, and
   `by = 256 / bx` — and the grid `(ceil(C/bx), ceil(OW/by), rows)` (the cell above printed it for a
   middle-flow layer). The channel comes from the x axis,
   `c = blockIdx.x * blockDim.x + threadIdx.x`, the output column from the y axis,
   `ow = blockIdx.y * blockDim.y + threadIdx.y`; threads past the last channel or column return.
4. **Coalesced memory access.** A warp is 32 threads with consecutive `threadIdx.x` (and the same
   `threadIdx.y`). With $C \ge 32$ they are 32 consecutive channels of one pixel, and in NHWC the
   channel is the contiguous axis: their loads of `x` and their store to `y` each touch 32
   consecutive values.
5. **This channel's filter, read once.** Before any output, the thread copies its channel's
   $k_h k_w$ weights into `tap[KH * KW]` (the kernel's layout $(k_h, k_w, C, 1)$ puts tap `t` of
   channel `c` at `k[t * C + c]`). The array's size is a constant and, after unrolling, every
   index into it is too, so it can live in registers.
6. **Rows in a grid-stride loop.** The z axis walks the pairs (image, output row):
   `row` runs from `blockIdx.z` in steps of `gridDim.z` up to `N * OH`, because `gridDim.z` is
   capped at 65535 and the loop covers any batch. `n = row / OH`, `oh = row - n * OH` — the one
   run-time division per row. The window's corner is `h0 = oh * SH - PT` and, fixed for the thread,
   `w0 = ow * SW - PL` (negative at the top/left border).
7. **Zero padding without a padded copy**: rows `h` and columns `w` outside the image are skipped
   (`continue`), exactly as if they held zeros — no padded tensor is allocated or filled.
8. **Accumulate in a register**: `acc += x[(((long long)n * H + h) * W + w) * C + c] * tap[i * KW + j]`.
   The index is computed in 64 bits: a batch of activations can hold more than $2^{31}$ values.
9. **Write once**: `y[((long long)row * OW + ow) * C + c] = acc` — with `row = n * OH + oh` that is
   the NHWC position of `y[n, oh, ow, c]`. Each input value is read by at most $k^2$ threads
   (mostly from cache) and each output written once: about the ideal traffic of section 2, in one
   launch.

The backward pass is two more kernels in the same file. `dw_backward_input` has the same 3-D
layout over the *input* positions (channel, input column, (image, input row)); each thread gathers
the outputs whose windows covered its value: for tap `i`, `hp = h + PT - i` must be non-negative and
divisible by the stride, and `oh = hp / SH` below `OH` (the same for columns). The reference writes
this gradient tap by tap, each tap adding $\delta\cdot k$ into the slice of the padded input it read
(`F.depthwise_conv2d_backward`); the kernel computes the same sums as a gather, so no two threads
write the same place — no atomics, and the result is deterministic. `dw_backward_kernel` is a
reduction over all $N H_o W_o$ output pixels for each of the $k^2 C$ weights: blocks of 32 channels
× 8 lanes, each thread keeping $k^2$ partial sums in registers over its share of the output rows;
the lanes are combined in shared memory, each block row writes its partials, and the wrapper sums
those few partials on the host side (`partial.sum(axis=0)`).

We can follow the forward kernel's index arithmetic in plain Python for a tiny tensor — the same
block and grid as the wrapper's launch, one loop iteration per "thread" — and compare with the
package's reference depthwise convolution. A small `grid_z` forces the row loop to go round more
than once, as it does past 65535 rows on a GPU:
"""

# %%
def dw_forward_by_threads(x, kern, stride, padding, grid_z=None):
    """Emulate dw_forward's launch: block (bx, by), grid (ceil(C/bx), ceil(OW/by), rows)."""
    N, H, W, C = x.shape
    KH, KW = kern.shape[:2]
    SH = SW = stride
    (PT, _), (PL, _) = F.conv_geometry(H, W, (KH, KW), stride, padding)[0]
    OH, OW = F.conv_geometry(H, W, (KH, KW), stride, padding)[1]
    block = cuda_common.block_2d(C)
    grid = cuda_common.grid_3d(C, OW, N * OH, block)
    if grid_z is not None:
        grid = grid[:2] + (grid_z,)
    xf, kf = x.reshape(-1), kern.reshape(-1)            # flat buffers, as the kernel sees them
    y = np.full(N * OH * OW * C, np.nan)                # NaN: an output no thread wrote stays visible
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for ty in range(block[1]):
                    for tx in range(block[0]):          # one "thread"
                        c, ow = bx * block[0] + tx, by * block[1] + ty
                        if c >= C or ow >= OW:
                            continue
                        tap = [kf[t * C + c] for t in range(KH * KW)]
                        w0 = ow * SW - PL
                        for row in range(bz, N * OH, grid[2]):
                            n_, oh = row // OH, row - (row // OH) * OH
                            h0 = oh * SH - PT
                            acc = 0.0
                            for i in range(KH):
                                h_ = h0 + i
                                if h_ < 0 or h_ >= H:
                                    continue
                                for j in range(KW):
                                    w_ = w0 + j
                                    if w_ < 0 or w_ >= W:
                                        continue
                                    acc += xf[((n_ * H + h_) * W + w_) * C + c] * tap[i * KW + j]
                            y[(row * OW + ow) * C + c] = acc
    return y.reshape(N, OH, OW, C)

rng = np.random.default_rng(0)
for stride in (1, 2):
    for grid_z in (None, 3):
        x = rng.standard_normal((2, 7, 6, 5))
        kern = rng.standard_normal((3, 3, 5, 1))
        y_threads = dw_forward_by_threads(x, kern, stride, "same", grid_z)
        y_ref, _ = F.depthwise_conv2d_forward(x, kern, stride=stride, padding="same")
        print(f"stride {stride}, grid_z {grid_z}: thread emulation vs reference: "
              f"max diff {np.abs(y_threads - y_ref).max():.1e}")
        assert not np.isnan(y_threads).any() and np.allclose(y_threads, y_ref)

# %% [markdown]
r"""
## 4. Timings on this CPU: NumPy against PyTorch (measured now)

The fair baseline is the same computation in PyTorch on the same machine, in the same run, as a
*ratio* (absolute times say more about the machine than about the code). Forward + backward of
three ops at a middle-flow-like shape, each two ways on our side: the `xp` reference in
`mx.functional`, and what the kernel table hands a layer on the CPU (`mx.kernels.select`; the
name of the implementation it picked is printed with each row). Where numba is installed the
depthwise convolution and batch norm get numba kernels. The pointwise convolution is one matrix
product each way; its CPU entry splits those products by rows over the kernels' thread pool inside
an `mx.cpu_threads` block (`mx.train.fit` trains in one), and outside one, as here, makes the same
single BLAS call as the reference — so expect that row to time alike. The numba kernels compile on their first
call, which the warm-up call takes out of the timing:
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

    mm, mv = np.zeros(ch, np.float32), np.ones(ch, np.float32)
    ops = {   # row: (the op's name in the kernel table, the call's arguments after x)
        "depthwise 3x3": ("depthwise_conv2d", (kd, 1, "same")),
        "pointwise 1x1": ("pointwise_conv2d", (kp,)),
        "batch norm": ("batchnorm", (g, bta, mm, mv)),
    }

    def run(impl, args):
        def fn():
            y, cache = impl.forward(xn, *args)
            impl.backward(dyn, cache)
        return fn

    def t_dw():
        TF.conv2d(xt, kdt, padding=1, groups=ch).backward(dyt)
    def t_pw():
        TF.conv2d(xt, kpt).backward(dyt)
    def t_bn():
        TF.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3).backward(dyt)
    torch_fns = {"depthwise 3x3": t_dw, "pointwise 1x1": t_pw, "batch norm": t_bn}

    for name, (op, args) in ops.items():
        ref, table = mx.kernels.reference(op), mx.kernels.select(op, xn, *args)
        t_ref, t_tab, t_torch = best(run(ref, args), reps), best(run(table, args), reps), best(torch_fns[name], reps)
        cpu_rows.append((name, table.name, t_ref, t_tab, t_torch))
        print(f"{name:14s} reference {t_ref * 1e3:7.2f} ms   kernel table ({table.name:9s}) {t_tab * 1e3:7.2f} ms"
              f"   PyTorch {t_torch * 1e3:7.2f} ms   ratios to PyTorch {t_ref / t_torch:5.2f} / {t_tab / t_torch:5.2f}")
    # same numbers on all sides: the comparison is of equal work
    y_np, _ = F.depthwise_conv2d_forward(xn, kd, 1, "same")
    y_tab, _ = mx.kernels.select("depthwise_conv2d", xn, kd, 1, "same").forward(xn, kd, 1, "same")
    y_t = TF.conv2d(xt, kdt, padding=1, groups=ch).detach().numpy().transpose(0, 2, 3, 1)
    assert np.allclose(y_np, y_t, rtol=1e-4, atol=1e-4) and np.allclose(y_tab, y_t, rtol=1e-4, atol=1e-4)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    pos = np.arange(len(cpu_rows))
    ax.barh(pos - 0.2, [r[2] / r[4] for r in cpu_rows], 0.4, color="tab:blue", label="reference (mx.functional)")
    ax.barh(pos + 0.2, [r[3] / r[4] for r in cpu_rows], 0.4, color="tab:orange", label="kernel table (what a layer runs)")
    ax.set_yticks(pos, [f"{r[0]}\n({r[1]})" for r in cpu_rows]); ax.invert_yaxis(); ax.legend(fontsize=8)
    ax.axvline(1, color="gray", ls=":")
    ax.set_xlabel("our time / PyTorch time (forward + backward; 1 = as fast)")
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

    impl = mx.kernels.select("depthwise_conv2d", xg, kg, 1, "same")                  # what a layer runs
    print("the kernel table picks:", impl.name)
    assert impl.name == "cuda", mx_cuda.status()["kernels"]
    t_kernel = gpu_time(lambda: impl.forward(xg, kg, 1, "same"))                      # dw_forward
    with mx.use_kernels("reference"):                                                 # the plain xp version
        ref = mx.kernels.select("depthwise_conv2d", xg, kg, 1, "same")
        assert ref.name == "reference"
        t_xp = gpu_time(lambda: ref.forward(xg, kg, 1, "same"))
        y_xp = ref.forward(xg, kg, 1, "same")[0]
    y_k = impl.forward(xg, kg, 1, "same")[0]
    assert cp.allclose(y_k, y_xp, rtol=1e-4, atol=1e-4)                              # same numbers
    xh, kh_ = cp.asnumpy(xg), cp.asnumpy(kg)
    t_numpy = best(lambda: F.depthwise_conv2d_forward(xh, kh_, 1, "same"), 3)
    rows = [("NumPy reference (CPU)", t_numpy), ("CuPy, plain xp code", t_xp), ("CuPy, CUDA kernel (dw_forward)", t_kernel)]
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
* An **earlier version** of the CUDA depthwise kernel — one thread per output found from a flat
  index by divisions (`c = idx % C`, ...), the filter re-read for every output — brought the
  depthwise convolution to **3.4×** cuDNN's time. The kernel of section 3 replaced it (a 3-D launch,
  the taps in registers, kernel size and stride as compile-time constants); no figure for it is
  recorded here: `bench/bench_gpu.py` measures it on your GPU.
"""

# %%
recorded = {"depthwise, naive xp (CuPy)": 27.0, "batch norm, naive xp (CuPy)": 38.0,
            "depthwise, earlier one-thread-\nper-output CUDA kernel": 3.4, "cuDNN (PyTorch)": 1.0}
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
8× gain in that recording. What separated that earlier kernel from cuDNN was not measured
op by op; section 3's kernel removes two of its costs (the per-output divisions, the repeated
filter loads), and a kernel could go further by tiling the input in shared memory so that
neighbouring outputs share their window reads — `dw_forward` does not, it relies on the cache.
Batch norm is the same story: several whole-tensor passes and reductions per call, each a
separate launch; the package's `batchnorm.cu` does the training-mode pass in three launches each
way.

## Summary

* One code path: `xp = get_array_module(x)`; `.to("gpu")` moves a model; devices are never mixed
  silently.
* The depthwise convolution does ~2 FLOP per byte: memory-bound; tap-by-tap it moves >10× the
  necessary bytes in 9+ launches.
* The package's `dw_forward` gives each thread one channel and one output column and loops over
  the rows, the filter in registers: each output is written once, in one launch (its launch and
  index arithmetic emulated and checked above). Layers reach it through `mx.kernels.select`;
  `mx.use_kernels("reference")` runs the plain `xp` code instead.
* CPU ratios to PyTorch are measured in this notebook; GPU ratios are measured when a GPU is
  present, otherwise shown from recorded H100 figures.

## Exercises

1. Extend `dw_forward_by_threads` to the input gradient: one "thread" per *input* pixel that
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
