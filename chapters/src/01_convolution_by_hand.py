# %% [markdown]
r"""
# Chapter 1 — Convolution, by hand

Xception is built from one operation in a few shapes: the convolution. Before we split it
into depthwise and pointwise parts (chapters 3–4) we take the regular convolution apart:
the memory layout, how padding and stride decide the output size, the forward pass, the
backward pass derived on paper and then *checked numerically*, and what a convolution costs.

Everything below runs `minixception`'s own NumPy code (`mx.functional.conv2d_forward` /
`conv2d_backward`); the few loops written here are the textbook definitions we check it against.

Set `MINIXCEPTION_FAST=1` in the environment for a quick run on smaller inputs.
"""

# %%
import os
import time

import matplotlib.cbook as cbook
import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import functional as F

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full", "| minixception", mx.__version__)
rng = np.random.default_rng(0)
plt.rcParams.update({"figure.dpi": 72, "axes.grid": False})   # small figures keep the notebook light


def show_jpeg(fig):
    """Show a figure of photographs as a JPEG (a PNG of a photo is 5-10x larger in the notebook)."""
    import io
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=72, bbox_inches="tight", pil_kwargs={"quality": 85})
    plt.close(fig)
    display(Image(buf.getvalue()))

# %% [markdown]
r"""
## 1. NHWC: channels last

A batch of images is a 4-D array `(N, H, W, C)`: image, row, column, channel. This is the
layout of Keras and of the original Xception. With channels last, the $C$ values of one
pixel sit next to each other in memory, so *mixing channels at one pixel* (a $1\times1$
convolution) is a plain matrix product of an $(N\cdot H\cdot W) \times C$ matrix — the
reshape costs nothing.

Our photograph is Grace Hopper, from the sample data that ships with matplotlib.
"""

# %%
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = plt.imread(f)                        # (600, 512, 3) uint8, RGB
step = 4 if FAST else 2                          # downsample by block-averaging
h, w = photo.shape[0] // step * step, photo.shape[1] // step * step
img = photo[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3)) / 255.0
x_photo = img[None].astype(np.float32)           # NHWC batch of one
print("photograph:", photo.shape, photo.dtype, "-> model input", x_photo.shape, x_photo.dtype)
assert x_photo.ndim == 4 and x_photo.shape[-1] == 3

# one pixel's channels are contiguous: the (N*H*W, C) view of the batch is free
assert np.shares_memory(x_photo.reshape(-1, 3), x_photo)

# %% [markdown]
r"""
## 2. Padding and stride

A $k\times k$ window moved with stride $s$ over an axis of $n$ pixels, padded with
$p_\text{before}$ and $p_\text{after}$ zeros, gives

$$ n_\text{out} = \left\lfloor \frac{n + p_\text{before} + p_\text{after} - k}{s} \right\rfloor + 1 . $$

* **`"valid"`**: no padding; the window must fit, so $n_\text{out} = \lfloor (n-k)/s \rfloor + 1$.
* **`"same"`** (TensorFlow/Keras): choose the padding so that $n_\text{out} = \lceil n/s \rceil$.
  The total needed is $p = \max\big((\lceil n/s\rceil - 1)\,s + k - n,\ 0\big)$, split as
  $p_\text{before} = \lfloor p/2 \rfloor$, $p_\text{after} = p - p_\text{before}$: when $p$ is odd
  the extra row goes at the **bottom/right**.

That last detail matters for Xception: at a $299\times299$ input, the $3\times3$ stride-2 max-pool
after block 2 sees a $74\times74$ map and pads *0 before and 1 after*. Symmetric padding there
shifts every later feature map by half a pixel, and the outputs drift away from Keras's.
"""

# %%
rows = []
for n, k, s in [(299, 3, 2), (147, 3, 2), (74, 3, 2), (37, 3, 2), (19, 3, 2), (19, 3, 1), (8, 3, 2), (7, 5, 1)]:
    before, after = F.pad_amounts(n, k, s, "same")
    out = (n + before + after - k) // s + 1
    valid = (n - k) // s + 1
    rows.append((n, k, s, before, after, out, valid))
    assert out == -(-n // s)                    # "same" always gives ceil(n / s)
print(" n   k  s | same: before after  out | valid: out")
for n, k, s, b, a, o, v in rows:
    print(f"{n:3d} {k:2d} {s:2d} |       {b:5d} {a:5d} {o:4d} |        {v:4d}")

assert F.pad_amounts(74, 3, 2, "same") == (0, 1)     # the asymmetric case of Xception's block 3 pool
assert F.pad_amounts(147, 3, 2, "same") == (1, 1)
assert F.pad_amounts(299, 3, 2, "valid") == (0, 0) and (299 - 3) // 2 + 1 == 149   # block1_conv1

# %% [markdown]
r"""
Which input pixels does each output see? Count, for every pixel of an $8\times8$ input, how
many $3\times3$ stride-2 windows cover it. With `"same"` the grid of window positions is
padded by 0 rows on top and 1 at the bottom, so the last column and row of windows hang over
the edge — the asymmetry is visible. (We compute the counts with the *backward* pass of a
convolution whose kernel is all ones; section 4 explains why that works.)
"""

# %%
def coverage(n, k, s, padding):
    x = np.zeros((1, n, n, 1))
    y, cache = F.conv2d_forward(x, np.ones((k, k, 1, 1)), stride=s, padding=padding)
    dx, _, _ = F.conv2d_backward(np.ones_like(y), cache)   # d(sum y)/dx = number of windows on each pixel
    return dx[0, :, :, 0], y.shape[1]

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (pad, s) in zip(axes, [("valid", 2), ("same", 2), ("same", 1)]):
    cov, n_out = coverage(8, 3, s, pad)
    im = ax.imshow(cov, cmap="viridis", vmin=0, vmax=9)
    for (i, j), v in np.ndenumerate(cov):
        ax.text(j, i, int(v), ha="center", va="center", color="w", fontsize=8)
    ax.set_title(f'3x3, stride {s}, "{pad}"\n8x8 -> {n_out}x{n_out}')
    ax.set_xlabel("input column"); ax.set_ylabel("input row")
fig.colorbar(im, ax=axes, label="windows covering the pixel")
plt.show()

cov, _ = coverage(8, 3, 2, "same")
assert cov[0, 0] == 1 and cov[-1, -1] == 1 and cov[2, 2] == 4     # no padding on top-left, one row/col at bottom-right

# %% [markdown]
r"""
## 3. The forward pass

With kernel $K$ of shape `(kh, kw, C, F)` (Keras's layout), bias $b$ of shape `(F,)`, stride
$s$ and the zero-padded input $\tilde x$, output channel $f$ at position $(i, j)$ is

$$ y_{n,i,j,f} \;=\; b_f + \sum_{u=0}^{k_h-1}\sum_{v=0}^{k_w-1}\sum_{c=0}^{C-1}
   \tilde x_{n,\;s i+u,\;s j+v,\;c}\; K_{u,v,c,f}. $$

(Deep-learning "convolution" is really cross-correlation: the kernel is not flipped.)

Written as loops over output pixels, this is the definition below. `minixception` computes the
same thing without a Python loop over pixels: **im2col** gathers the $k_h k_w$ shifted views
("taps") of $\tilde x$ into a patch matrix $X_\text{col}$ of shape $(N H_o W_o) \times (k_h k_w C)$,
and the whole layer becomes one matrix product

$$ Y = X_\text{col}\, W + b, \qquad W = K \text{ reshaped to } (k_h k_w C) \times F .$$
"""

# %%
def conv_by_loops(x, K, b, s, pads):
    """The definition, one output pixel at a time. x: (N, H, W, C), K: (kh, kw, C, F)."""
    (t, bo), (l, r) = pads
    xp = np.pad(x, ((0, 0), (t, bo), (l, r), (0, 0)))
    kh, kw, _, f = K.shape
    ho = (xp.shape[1] - kh) // s + 1
    wo = (xp.shape[2] - kw) // s + 1
    y = np.empty((x.shape[0], ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, s * i:s * i + kh, s * j:s * j + kw, :]              # (N, kh, kw, C)
            y[:, i, j, :] = np.tensordot(patch, K, axes=([1, 2, 3], [0, 1, 2])) + b
    return y

x = rng.standard_normal((2, 9, 8, 3))
K = rng.standard_normal((3, 3, 3, 5))
b = rng.standard_normal(5)
for stride, padding in [(1, "valid"), (1, "same"), (2, "same"), (2, "valid"), (2, 1)]:
    y, _ = F.conv2d_forward(x, K, b, stride=stride, padding=padding)
    pads, _ = F.conv_geometry(9, 8, 3, stride, padding)
    y_ref = conv_by_loops(x, K, b, stride, pads)
    err = np.abs(y - y_ref).max()
    print(f"stride {stride}, padding {padding!r:8}: output {y.shape}, max |im2col - loops| = {err:.1e}")
    assert y.shape == y_ref.shape and err < 1e-12

# %% [markdown]
r"""
### The package's code

Here is `mx.functional.conv2d_forward` itself, read from the installed package (not pasted),
with the lines that compute the formulas above marked: the patch matrix $X_\text{col}$ (im2col),
the product $Y = X_\text{col} W$, and the bias $+\,b$. The shape checks at the top are there so
that a wrong input fails with a message naming the shapes, not deep inside a matrix product.
`groups` is the grouped convolution of chapter 3; with `groups=1` the one-GEMM branch runs.
"""

# %%
fwd_src = mx.diagrams.show_source(F.conv2d_forward, {
    r"im2col\(": "X_col: the k*k shifted views (taps) of the padded input",
    r"@\s*kernel\.reshape|matmul": "Y = X_col W (one GEMM)",
    r"\+=\s*bias|\+\s*bias": "+ b",
})

# %% [markdown]
r"""
The im2col helper it calls copies one tap at a time: $k_h k_w$ strided copies, no Python loop
over pixels.
"""

# %%
from minixception.functional import conv as conv_module
im2col = next((getattr(conv_module, n) for n in ("_im2col", "im2col") if hasattr(conv_module, n)), None)
if im2col is not None:
    mx.diagrams.show_source(im2col)

# %% [markdown]
r"""
### A convolution on the photograph

A hand-made kernel shows what a convolution *does*. The Sobel pair responds to horizontal
and vertical intensity changes; we build a `(3, 3, 3, 2)` kernel that first averages the three
colour channels (so it works on brightness) and then applies the two Sobel filters — one
`Conv2D` with $C=3$ inputs and $F=2$ outputs.
"""

# %%
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
K_edges = np.zeros((3, 3, 3, 2), np.float32)
K_edges[:, :, :, 0] = sobel_x[:, :, None] / 3        # d/dx of the channel mean
K_edges[:, :, :, 1] = sobel_x.T[:, :, None] / 3      # d/dy

edges, _ = F.conv2d_forward(x_photo, K_edges, padding="same")
assert edges.shape == x_photo.shape[:3] + (2,) and edges.dtype == np.float32   # "same", stride 1: H, W kept
magnitude = np.sqrt((edges[0] ** 2).sum(-1))

fig, axes = plt.subplots(1, 4, figsize=(14, 4.2))
panels = [(img, "input (RGB)", None), (edges[0, :, :, 0], "output channel 0: d/dx", "RdBu"),
          (edges[0, :, :, 1], "output channel 1: d/dy", "RdBu"), (magnitude, "edge magnitude", "gray")]
for ax, (a, title, cmap) in zip(axes, panels):
    if cmap == "RdBu":
        v = np.abs(a).max()
        ax.imshow(a, cmap=cmap, vmin=-v, vmax=v)
    else:
        ax.imshow(a, cmap=cmap)
    ax.set_title(title); ax.set_xlabel("column (pixels)"); ax.set_ylabel("row (pixels)")
plt.tight_layout(); show_jpeg(fig)

# %% [markdown]
r"""
## 4. The backward pass, derived

Let $L$ be the loss and $\delta_{n,i,j,f} = \partial L / \partial y_{n,i,j,f}$ the upstream gradient.
$y$ is linear in $K$, $b$ and $\tilde x$, so each gradient collects, with the chain rule, every
place its variable appears in the forward sum:

$$ \frac{\partial L}{\partial K_{u,v,c,f}} = \sum_{n,i,j} \tilde x_{n,\,si+u,\,sj+v,\,c}\;\delta_{n,i,j,f},
\qquad
\frac{\partial L}{\partial b_f} = \sum_{n,i,j}\delta_{n,i,j,f}, $$

$$ \frac{\partial L}{\partial \tilde x_{n,p,q,c}} = \sum_{f}\;\sum_{\substack{i,u:\\ si+u=p}}\;
   \sum_{\substack{j,v:\\ sj+v=q}} \delta_{n,i,j,f}\,K_{u,v,c,f}, $$

and $\partial L/\partial x$ is $\partial L/\partial \tilde x$ with the padding cropped off.
In the matrix form $Y = X_\text{col} W$ these are two more matrix products,

$$ \frac{\partial L}{\partial W} = X_\text{col}^\top\, \Delta, \qquad
   \frac{\partial L}{\partial X_\text{col}} = \Delta\, W^\top, $$

followed by **col2im**, which adds each tap's gradient back onto the input pixels it came
from (a pixel read by several windows receives the sum — with an all-ones kernel and
$\delta = 1$ that sum is the coverage count we plotted above).

For stride 1 the input gradient is itself a convolution: pad $\delta$ by $k-1$ on each side and
correlate it with the kernel **rotated by 180°**, input and output channels swapped — the
"transposed convolution". We check that identity numerically:
"""

# %%
x = rng.standard_normal((2, 7, 6, 3))
K = rng.standard_normal((3, 3, 3, 4))
y, cache = F.conv2d_forward(x, K, None, stride=1, padding="valid")
dy = rng.standard_normal(y.shape)
dx, dK, db = F.conv2d_backward(dy, cache)
K_rot = K[::-1, ::-1].transpose(0, 1, 3, 2)                 # rotate 180 degrees, swap C and F
dx_transposed, _ = F.conv2d_forward(dy, K_rot, None, stride=1, padding=2)   # pad k - 1 = 2
print("dx via col2im vs dx as a 'full' convolution:", np.abs(dx - dx_transposed).max())
assert db is None and dK.shape == K.shape and dx.shape == x.shape
assert np.allclose(dx, dx_transposed, atol=1e-12)

# %% [markdown]
r"""
And the package's backward pass, `mx.functional.conv2d_backward`: the three gradients of the
derivation are three lines, then col2im and the crop of the padding.
"""

# %%
bwd_src = mx.diagrams.show_source(F.conv2d_backward, {
    r"^\s*(dkernel|dk|dK|dw)\s*=": "dL/dW = X_col^T Delta",
    r"^\s*(dcols|dcol)\s*=": "dL/dX_col = Delta W^T",
    r"^\s*(dbias|db)\s*=": "dL/db = sum of Delta",
    r"col2im\(": "col2im: each tap's gradient added back where it came from",
})

# %% [markdown]
r"""
## 5. Checking the gradients numerically

A derivation can be wrong; a number is not. For the scalar $L = \sum y \odot \delta$ with a
*random* $\delta$, the exact gradient is what `backward(δ)` returns, and central differences
estimate it independently:

$$ \frac{\partial L}{\partial \theta} \approx \frac{L(\theta + h) - L(\theta - h)}{2h},
\qquad h = 10^{-5}, \text{ in float64}. $$

The error of central differences is $O(h^2)$ plus round-off $O(\epsilon/h)$, about $10^{-10}$
relative here, so we require the relative error
$\max|a-n| \,/\, \max(|a|+|n|)$ to be below $10^{-7}$. `mx.gradcheck.check_function` does this
for every input of a forward/backward pair.
"""

# %%
configs = [(1, "valid"), (1, "same"), (2, "same"), (2, "valid"), (3, 1)]
errors = {}
for stride, padding in configs:
    x = rng.standard_normal((2, 7, 6, 3))
    K = rng.standard_normal((3, 3, 3, 4))
    b = rng.standard_normal(4)
    fwd = lambda x, K, b, s=stride, p=padding: F.conv2d_forward(x, K, b, stride=s, padding=p)
    errors[(stride, padding)] = mx.gradcheck.check_function(fwd, F.conv2d_backward, [x, K, b], seed=1)
print("stride padding  | rel. error  dx        dK        db")
for (stride, padding), (ex, eK, eb) in errors.items():
    print(f"{stride:6d} {padding!r:8} |           {ex:.1e}   {eK:.1e}   {eb:.1e}")
assert max(max(e) for e in errors.values()) < 1e-7

# %% [markdown]
r"""
How small is "small"? Break the backward pass on purpose — forget the padding crop offset,
or drop a tap — and the error jumps to order 1. A gradient check is only worth something if
it can fail:
"""

# %%
x = rng.standard_normal((1, 6, 6, 2))
K = rng.standard_normal((3, 3, 2, 3))
fwd = lambda x, K: F.conv2d_forward(x, K, None, stride=1, padding="same")

def wrong_backward(dy, cache):
    dx, dK, _ = F.conv2d_backward(dy, cache)
    return np.roll(dx, 1, axis=1), dK                     # a one-pixel misalignment of dx

right = mx.gradcheck.check_function(fwd, lambda dy, c: F.conv2d_backward(dy, c)[:2], [x, K])
wrong = mx.gradcheck.check_function(fwd, wrong_backward, [x, K])
print(f"correct backward: dx error {right[0]:.1e};  shifted dx: error {wrong[0]:.2f}")
assert right[0] < 1e-7 and wrong[0] > 1e-2

# %% [markdown]
r"""
## 6. What a convolution costs

A $k_h\times k_w$ convolution from $C$ to $F$ channels has

$$ \text{params} = k_h k_w C F \;(+F \text{ with a bias}), \qquad
   \text{multiply-adds} = H_o W_o \cdot k_h k_w C F , $$

every weight being used once per output pixel. Xception's two stem convolutions
(`block1_conv1`, `block1_conv2`, no bias) on a $299\times299$ input:
"""

# %%
def conv_cost(h, w, k, c, f, stride, padding, bias=False):
    (_, (ho, wo)) = F.conv_geometry(h, w, k, stride, padding)
    params = k * k * c * f + (f if bias else 0)
    return (ho, wo), params, ho * wo * k * k * c * f

(s1, p1, m1) = conv_cost(299, 299, 3, 3, 32, 2, "valid")
(s2, p2, m2) = conv_cost(*s1, 3, 32, 64, 1, "valid")
print(f"block1_conv1: 299x299x3 -> {s1[0]}x{s1[1]}x32, {p1:,} params, {m1 / 1e6:.1f} M multiply-adds")
print(f"block1_conv2: {s1[0]}x{s1[1]}x32 -> {s2[0]}x{s2[1]}x64, {p2:,} params, {m2 / 1e6:.1f} M multiply-adds")
assert (s1, p1, s2, p2) == ((149, 149), 864, (147, 147), 18432)   # Keras's Xception: 864 and 18,432 weights

layer = mx.nn.Conv2D(32, 64, 3, use_bias=False)
assert sum(p.size for p in layer.parameters()) == 3 * 3 * 32 * 64
layer_b = mx.nn.Conv2D(32, 64, 3)                       # with a bias: + F
assert sum(p.size for p in layer_b.parameters()) == 3 * 3 * 32 * 64 + 64

# %% [markdown]
r"""
Does the multiply-add count predict the run time? Time `conv2d_forward` for growing kernels
and channel counts: if almost all the time is the one big matrix product, the points lie near a
line through the origin (the im2col copies and the small products below BLAS's peak bend it).
"""

# %%
hw, batch = (16, 4) if FAST else (32, 8)
xs_t, ms = [], []
for k in (1, 3, 5):
    for c in ((16, 32, 64) if FAST else (16, 32, 64, 128)):
        x = rng.standard_normal((batch, hw, hw, c)).astype(np.float32)
        K = rng.standard_normal((k, k, c, c)).astype(np.float32)
        F.conv2d_forward(x, K, padding="same")                  # warm-up
        best = np.inf
        for _ in range(3):                                      # best of 3: the least disturbed run
            t0 = time.perf_counter()
            F.conv2d_forward(x, K, padding="same")
            best = min(best, time.perf_counter() - t0)
        xs_t.append(best * 1e3)
        ms.append(batch * hw * hw * k * k * c * c)
# float, not int: the products below (sums of squares of counts up to ~1e10) overflow int64
ms, xs_t = np.array(ms, dtype=np.float64), np.array(xs_t)

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(ms, xs_t, "o")
slope = (xs_t @ ms) / (ms @ ms)
line = np.geomspace(ms.min(), ms.max())
ax.loglog(line, slope * line, "--", label=f"linear fit: {1e-6 / slope:.1f} G multiply-adds/s")
ax.set_xlabel("multiply-adds per forward pass"); ax.set_ylabel("measured time (ms)")
ax.set_title(f"conv2d_forward on the CPU, batch {batch}, {hw}x{hw}")
ax.legend(); plt.show()
assert np.isfinite(slope) and slope > 0       # a positive rate (the int64 version of this fit overflowed)
print(f"fitted rate: {1e-6 / slope:.2f} G multiply-adds per second on this machine, this run")
spread = xs_t / (slope * ms)                 # measured time / the line's prediction, per point
print(f"measured / fitted time: from {spread.min():.2f} to {spread.max():.2f}")
assert 0.05 < spread.min() and spread.max() < 20      # a line through the origin: no point off by 20x

# %% [markdown]
r"""
How well does the line fit? The printed range says how far the points lie from it in this run.
Two things bend it: the $1\times1$ convolutions skip im2col (cheaper per multiply-add), and small
matrix products run below the BLAS's peak. On a busy shared machine the scatter is larger; read
the plot as a trend, not a benchmark.
"""

# %% [markdown]
r"""
## Summary

* NHWC keeps each pixel's channels contiguous; `"same"` padding in TensorFlow's sense gives
  $\lceil n/s \rceil$ outputs and puts the odd padding row at the bottom/right.
* Forward: a sum over the window and the input channels; as a matrix product, im2col then GEMM.
* Backward: $\partial L/\partial K = X_\text{col}^\top\Delta$, $\partial L/\partial b = \sum\Delta$,
  $\partial L/\partial x$ = col2im of $\Delta W^\top$ (for stride 1, a full convolution with the
  rotated kernel) — all three checked to about $10^{-10}$ against central differences.
* Cost: $k^2 C F$ weights, each used $H_o W_o$ times. Chapter 4 cuts that by factoring the kernel.

## Exercises

1. Show from the output-size formula that TensorFlow's `"same"` padding always gives
   $n_\text{out} = \lceil n/s \rceil$. Then show that a $3\times3$ stride-2 window needs a total
   padding of 1 for every even $n$ and 2 for every odd $n$ — never 0 — and find the condition on
   $k$ and $s$ under which some $n$ needs no padding at all. Check with `F.pad_amounts`.
   <details><summary>Hint</summary>Write n = qs - r with 0 <= r < s, so ceil(n/s) = q, and put
   that into the total (ceil(n/s) - 1) s + k - n.</details>
2. Extend `conv_by_loops` with a `dilation` argument (the taps at $s i + d u$) and check it
   against `F.conv2d_forward` with a kernel that has $d-1$ zeros inserted between its taps.
   <details><summary>Hint</summary>A 3x3 kernel with dilation 2 covers a 5x5 window: it is the
   5x5 kernel whose entries at odd positions are zero.</details>
3. **Write a backward pass yourself.** Implement `loops_backward(dy, cache)` for `conv_by_loops`
   (stride $s$, "valid" padding, no bias) straight from the formulas of section 4 — loops over
   output pixels, adding $\delta\,K$ into the input window and $\tilde x\,\delta$ into $\partial K$ —
   and check it with `mx.gradcheck.check_function` in float64. Then break it (forget the stride)
   and watch the check fail.
   <details><summary>Hint</summary>The forward can return <code>(y, (x, K, s))</code> as its cache.
   For each output (i, j): <code>dK += tensordot(patch, dy[:, i, j, :], axes=([0], [0]))</code> and
   <code>dx[:, si:si+k, sj:sj+k, :] += tensordot(dy[:, i, j, :], K, axes=([1], [3]))</code>.</details>

## Solutions
"""

# %%
# 1. n = qs - r (0 <= r < s): total = (q - 1)s + k - n = k - s + r. For k = 3, s = 2: 1 + r,
#    i.e. 1 (n even, r = 0) or 2 (n odd, r = 1) -- never 0. No padding needs k - s + r <= 0:
#    k <= s and n a multiple of s (r = 0), e.g. 2x2 windows with stride 2 on an even n.
totals = {n: sum(F.pad_amounts(n, 3, 2, "same")) for n in range(3, 400)}
assert all(t == (1 if n % 2 == 0 else 2) for n, t in totals.items())
assert F.pad_amounts(64, 2, 2, "same") == (0, 0) and F.pad_amounts(65, 2, 2, "same") != (0, 0)
assert all(-(-n // s) == (n + sum(F.pad_amounts(n, k, s, "same")) - k) // s + 1
           for n in range(5, 60) for k in (1, 2, 3, 5) for s in (1, 2, 3))
print("3x3 stride-2 'same' padding totals for n = 3..12:", [totals[n] for n in range(3, 13)])

# %%
# 2. dilation: taps at s*i + d*u; the same as a (d(k-1)+1)-wide kernel with zeros between taps
def conv_by_loops_dilated(x, K, s, d):
    kh, kw, _, f = K.shape
    eh, ew = d * (kh - 1) + 1, d * (kw - 1) + 1                  # the window actually covered
    ho, wo = (x.shape[1] - eh) // s + 1, (x.shape[2] - ew) // s + 1
    y = np.empty((x.shape[0], ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, s * i:s * i + eh:d, s * j:s * j + ew:d, :]   # every d-th pixel of the window
            y[:, i, j, :] = np.tensordot(patch, K, axes=([1, 2, 3], [0, 1, 2]))
    return y

x, K = rng.standard_normal((2, 11, 10, 3)), rng.standard_normal((3, 3, 3, 4))
K_holes = np.zeros((5, 5, 3, 4)); K_holes[::2, ::2] = K        # dilation 2 = zeros between the taps
y_dil = conv_by_loops_dilated(x, K, 1, 2)
assert np.allclose(y_dil, F.conv2d_forward(x, K_holes, padding="valid")[0])
# "same" with dilation: the rule of section 2 with the effective size k_eff = d(k-1)+1 in place of k.
# In the backward pass only the index map changes: p = s*i + d*u instead of s*i + u.

# %%
# 3. the backward pass of conv_by_loops, by loops, checked by central differences
def loops_forward(x, K, s=1):
    return conv_by_loops(x, K, np.zeros(K.shape[3]), s, ((0, 0), (0, 0))), (x, K, s)

def loops_backward(dy, cache, forget_stride=False):
    x, K, s = cache
    k = K.shape[0]
    step = 1 if forget_stride else s
    dx, dK = np.zeros_like(x), np.zeros_like(K)
    for i in range(dy.shape[1]):
        for j in range(dy.shape[2]):
            patch = x[:, step * i:step * i + k, step * j:step * j + k, :]           # (N, k, k, C)
            dK += np.tensordot(patch, dy[:, i, j, :], axes=([0], [0]))            # x~ * delta
            dx[:, step * i:step * i + k, step * j:step * j + k, :] += np.tensordot(dy[:, i, j, :], K, axes=([1], [3]))
    return dx, dK

x, K = rng.standard_normal((2, 7, 7, 2)), rng.standard_normal((3, 3, 2, 3))
for s_ in (1, 2):
    errs = mx.gradcheck.check_function(lambda x, K, s=s_: loops_forward(x, K, s), loops_backward, [x, K])
    print(f"stride {s_}: loops backward vs central differences, dx {errs[0]:.1e}, dK {errs[1]:.1e}")
    assert max(errs) < 1e-7
broken = mx.gradcheck.check_function(lambda x, K: loops_forward(x, K, 2),
                                     lambda dy, c: loops_backward(dy, c, forget_stride=True), [x, K])
print(f"stride forgotten in the backward pass: errors {broken[0]:.2f}, {broken[1]:.2f}")
assert min(broken) > 1e-2
