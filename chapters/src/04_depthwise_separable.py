# %% [markdown]
r"""
# Chapter 4 — Depthwise separable convolution

Chapter 3 ended at the far end of the segment spectrum: one spatial filter per channel. That
is half of a **depthwise separable convolution**, the operation Xception is made of. It splits
a regular $k\times k$ convolution into

1. a **depthwise** convolution: one $k\times k$ filter per input channel, channels never mix;
2. a **pointwise** convolution: a $1\times1$ convolution that mixes channels, pixel by pixel.

In this chapter we derive both passes, check them numerically, measure the saving
$\frac{1}{F} + \frac{1}{k^2}$, apply depthwise filters to a photograph, and list the two ways the
operation differs from the "extreme" Inception module.
"""

# %%
import io
import os
import time

import matplotlib.cbook as cbook
import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import functional as F
from minixception.models import inception

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
rng = np.random.default_rng(0)
plt.rcParams.update({"figure.dpi": 72})


def show_jpeg(fig):
    """Show a figure of photographs as a JPEG (a PNG of a photo is 5-10x larger in the notebook)."""
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=72, bbox_inches="tight", pil_kwargs={"quality": 85})
    plt.close(fig)
    display(Image(buf.getvalue()))

# %% [markdown]
r"""
## 1. The two halves

For an input $x$ of shape $(N, H, W, C)$, a depthwise kernel $D$ of shape `(kh, kw, C, 1)` and a
pointwise kernel $P$ of shape `(1, 1, C, F)` (Keras's layouts):

$$ z_{n,i,j,c} = \sum_{u,v} \tilde x_{n,\,si+u,\,sj+v,\,c}\; D_{u,v,c}
\qquad\text{(depthwise: channel } c \text{ only sees channel } c\text{)} $$

$$ y_{n,i,j,f} = \sum_{c} z_{n,i,j,c}\; P_{c,f}
\qquad\text{(pointwise: one } C\times F \text{ matrix product per pixel)} $$

Substituting the first into the second,

$$ y_{n,i,j,f} = \sum_{u,v,c} \tilde x_{n,\,si+u,\,sj+v,\,c}\;\underbrace{D_{u,v,c}\,P_{c,f}}_{K_{u,v,c,f}} ,$$

so a separable convolution *is* a regular convolution, with a kernel constrained to be a
product: for every input channel $c$, the $k\times k\times F$ slice $K_{:,:,c,:}$ has rank one.
And the depthwise half alone is a regular convolution whose $C\times C$ channel matrix at every
tap is diagonal — a grouped convolution with $C$ groups. Both identities, checked:
"""

# %%
N, H, W, C, Fo = 2, 9, 9, 6, 8
x = rng.standard_normal((N, H, W, C))
D = rng.standard_normal((3, 3, C, 1))
P = rng.standard_normal((1, 1, C, Fo))

z, _ = F.depthwise_conv2d_forward(x, D, stride=1, padding="same")
D_grouped = D.transpose(0, 1, 3, 2)                       # (3, 3, 1, C): C groups of one input channel
z_grouped, _ = F.conv2d_forward(x, D_grouped, None, stride=1, padding="same", groups=C)
K_diag = np.zeros((3, 3, C, C))
K_diag[:, :, np.arange(C), np.arange(C)] = D[:, :, :, 0]                             # block-diagonal full kernel
z_full, _ = F.conv2d_forward(x, K_diag, None, stride=1, padding="same")
assert np.allclose(z, z_grouped) and np.allclose(z, z_full)

y_sep, _ = F.separable_conv2d_forward(x, D, P, stride=1, padding="same")
K_prod = D[:, :, :, 0][..., None] * P[0, 0][None, None]                             # K[u,v,c,f] = D[u,v,c] P[c,f]
y_full, _ = F.conv2d_forward(x, K_prod, None, stride=1, padding="same")
print("depthwise vs block-diagonal conv:", np.abs(z - z_full).max())
print("separable vs conv with K = D*P:  ", np.abs(y_sep - y_full).max())
assert y_sep.shape == (N, H, W, Fo) and np.allclose(y_sep, y_full)

# every input-channel slice of K_prod is a rank-1 (kh*kw) x F matrix
ranks = [np.linalg.matrix_rank(K_prod[:, :, c, :].reshape(9, Fo)) for c in range(C)]
K_free = rng.standard_normal((3, 3, C, Fo))
assert ranks == [1] * C and np.linalg.matrix_rank(K_free[:, :, 0, :].reshape(9, Fo)) == min(9, Fo)

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
mats = [(K_free[1, 1, :, :C], "regular conv: any C x F"), (K_diag[1, 1], "depthwise: diagonal"),
        (K_prod[1, 1, :, :C], "separable: D[c] * P[c, f]")]
for ax, (m, title) in zip(axes, mats):
    v = np.abs(m).max()
    ax.imshow(m, cmap="RdBu", vmin=-v, vmax=v)
    ax.set_title(title + "\n(centre tap of the kernel)")
    ax.set_xlabel("output channel f"); ax.set_ylabel("input channel c")
plt.tight_layout(); plt.show()

# %% [markdown]
r"""
## 2. The backward passes

With $\delta^y = \partial L/\partial y$ the pointwise half is a matrix product per pixel, so with
$Z$ the $(NHW)\times C$ matrix of $z$:

$$ \frac{\partial L}{\partial P} = Z^\top \Delta^y, \qquad
   \delta^z = \frac{\partial L}{\partial Z} = \Delta^y P^\top . $$

The depthwise half is a convolution in which channel $c$ only meets channel $c$, so the sums over
channels of chapter 1 disappear:

$$ \frac{\partial L}{\partial D_{u,v,c}} = \sum_{n,i,j} \tilde x_{n,\,si+u,\,sj+v,\,c}\;\delta^z_{n,i,j,c},
\qquad
\frac{\partial L}{\partial \tilde x_{n,p,q,c}} = \sum_{\substack{i,u:\, si+u=p}}\;\sum_{\substack{j,v:\, sj+v=q}}
   \delta^z_{n,i,j,c}\,D_{u,v,c} . $$

The separable backward chains them: pointwise backward, then (through the optional activation
between the two) depthwise backward. Each is checked with central differences, float64,
relative error $< 10^{-7}$ (ReLU is checked with random inputs, which stay off its kink).

First the package's code for each formula, read from the installed package. The depthwise
forward is the sum over taps $(u, v)$ of the shifted input times that tap's per-channel weights;
its backward, tap by tap again, computes $\partial L/\partial D_{u,v,:}$ as that tap's window times
$\delta^z$, and builds $\partial L/\partial \tilde x$ by adding $\delta^z D_{u,v,c}$ back into the very window
the tap read — the formula above read from the right, as a scatter. (For stride 1 the same sum is
a depthwise convolution of $\delta^z$ with the flipped kernel; exercise 2 checks that form.)
"""

# %%
dw_fwd = mx.diagrams.show_source(F.depthwise_conv2d_forward, {
    r"\+=\s*tap\(": "z[n,i,j,c] = sum_uv x~[n, si+u, sj+v, c] D[u,v,c]"})

# %%
dw_bwd = mx.diagrams.show_source(F.depthwise_conv2d_backward, {
    r"einsum\(.*dy": "dL/dD[u,v,c] = sum_nij x~ delta^z",
    r"tap\(dx_pad.*\+=": "dL/dx~: delta^z D[u,v,c] added into the window tap (u, v) read"})

# %% [markdown]
r"""
The pointwise half is one matrix product each way — the $Z^\top\Delta^y$ and $\Delta^y P^\top$ above:
"""

# %%
pw_fwd = mx.diagrams.show_source(F.pointwise_conv2d_forward, {r"matmul|@": "y = Z P, one GEMM over all N*H*W pixels"})
pw_bwd = mx.diagrams.show_source(F.pointwise_conv2d_backward, {
    r"^\s*(dkernel|dk|dP)\w*\s*=": "dL/dP = Z^T Delta^y", r"^\s*(dx|dz|dh)\w*\s*=": "delta^z = Delta^y P^T"})

# %% [markdown]
r"""
And the separable convolution chains them — forward: depthwise, optional activation, pointwise;
backward: the same three in reverse order:
"""

# %%
sep_bwd = mx.diagrams.show_source(F.separable_conv2d_backward, {
    r"pointwise_conv2d_backward": "1. pointwise backward first (it ran last)",
    r"_ACTIVATIONS|relu_backward|elu_backward": "2. through the intermediate activation, if any",
    r"depthwise_conv2d_backward": "3. depthwise backward"})

# %%
checks = {}
x = rng.standard_normal((2, 7, 6, 4))
for stride in (1, 2):
    Dk = rng.standard_normal((3, 3, 4, 1))
    checks[f"depthwise, stride {stride}"] = mx.gradcheck.check_function(
        lambda x, D, s=stride: F.depthwise_conv2d_forward(x, D, stride=s, padding="same"),
        F.depthwise_conv2d_backward, [x, Dk])
checks["pointwise"] = mx.gradcheck.check_function(
    F.pointwise_conv2d_forward, F.pointwise_conv2d_backward, [x, rng.standard_normal((1, 1, 4, 5))])
for act in (None, "relu", "elu"):
    checks[f"separable, intermediate={act}"] = mx.gradcheck.check_function(
        lambda x, D, P, a=act: F.separable_conv2d_forward(x, D, P, stride=1, padding="same", intermediate=a),
        F.separable_conv2d_backward,
        [x, rng.standard_normal((3, 3, 4, 1)), rng.standard_normal((1, 1, 4, 5))])
# and the layer as a whole (input, depthwise_kernel, pointwise_kernel)
layer = mx.nn.SeparableConv2D(4, 5, dtype="float64", rng=0)
checks["SeparableConv2D layer"] = list(mx.gradcheck.check_layer(layer, x).values())

for name, errs in checks.items():
    print(f"{name:34s}", "  ".join(f"{e:.1e}" for e in errs))
assert max(max(e) for e in checks.values()) < 1e-7

# %% [markdown]
r"""
## 3. The saving: $\frac{1}{F} + \frac{1}{k^2}$

Per output pixel, a regular $k\times k$ convolution from $C$ to $F$ channels does $k^2 C F$
multiply-adds; the separable one does $k^2 C$ (depthwise) $+\; C F$ (pointwise). The ratio,
which is also the ratio of the parameter counts, is

$$ \frac{k^2 C + C F}{k^2 C F} = \frac{1}{F} + \frac{1}{k^2} . $$

For $3\times3$ kernels and Xception's widths ($F$ = 128 … 2048) that is barely more than
$1/9$. For one layer at stride 1 the parameter ratio is the same number, because every weight
is used once per output pixel — but only *per layer*: a whole network's parameters and its
multiply-adds are different counts (a weight at a $147\times147$ map costs 60 times more than one at
$19\times19$), and section 3's last paragraph shows why that matters. The diagram below follows one
separable layer of Xception's middle flow: which tensor has which shape, where the multiply-adds go.

"""

# %%
rows = []
for c, f in [(64, 128), (128, 256), (256, 728), (728, 728), (1024, 1536)]:
    n_reg = sum(p.size for p in mx.nn.Conv2D(c, f, 3, use_bias=False).parameters())
    n_sep = sum(p.size for p in mx.nn.SeparableConv2D(c, f, 3).parameters())
    assert n_reg == 9 * c * f and n_sep == 9 * c + c * f == inception.separable_params(c, f)
    assert np.isclose(n_sep / n_reg, 1 / f + 1 / 9)
    rows.append((c, f, n_reg, n_sep))
    print(f"{c:5d} -> {f:5d}: regular {n_reg:>10,}  separable {n_sep:>9,}  ratio {n_sep / n_reg:.4f} = 1/{f} + 1/9")

# %%
fig = mx.diagrams.separable_figure(19, 19, 728, 728)        # one middle-flow separable conv
plt.show()
costs = mx.diagrams.separable_costs(19, 19, 728, 728)
assert costs["pointwise"] > 80 * costs["depthwise"]          # the pointwise half does almost all the arithmetic
assert np.isclose((costs["depthwise"] + costs["pointwise"]) / costs["regular"], 1 / 728 + 1 / 9)

# %% [markdown]
r"""
Multiply-adds are not seconds. We time `conv2d_forward` (im2col + one big matrix product)
against `separable_conv2d_forward` (depthwise + one matrix product) on this machine's CPU, for
$C = F$ growing. What to expect: the depthwise half does only 9 multiply-adds per value it
reads, so it is bound by memory traffic and runs at a far lower rate per multiply-add than a
matrix product; at small widths fixed per-call overheads dominate and the separable convolution
can even be the *slower* one. But the regular convolution is not free of memory traffic either:
its im2col patch array is 9 times the input, and once that no longer fits in the CPU's caches
its rate drops too — so at large widths the measured ratio can land on either side of the
multiply-add ratio. Read the printed ratios of this run (measured on a shared machine, so
noisy) as that trade-off, not as a constant. Chapter 9 looks at the GPU side.

A word on the paper's Table 3, which is easy to misread: Xception has slightly *fewer parameters*
than Inception V3 (22.9 M vs 23.6 M) and trained slightly *slower* (28 vs 31 steps per second on
60 K80 GPUs). That is not a separable convolution running slower than its count: parameters are
not compute. Xception spends its parameters at larger feature maps and does about **8.4 G
multiply-adds** per $299\times299$ image (chapter 6 counts them layer by layer) against about
**5.7 G** usually reported for Inception V3 — roughly 45% more arithmetic, for a 10% slower step.
"""

# %%
hw, batch, reps = (16, 4, 3) if FAST else (32, 8, 5)
widths = (16, 32, 64, 128) if FAST else (16, 32, 64, 128, 256)

def timeit(fn):
    """Best of ``reps`` runs after a warm-up: the least disturbed by whatever else the machine does."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

measured, predicted = [], []
for c in widths:
    x = rng.standard_normal((batch, hw, hw, c)).astype(np.float32)
    K = rng.standard_normal((3, 3, c, c)).astype(np.float32)
    D = rng.standard_normal((3, 3, c, 1)).astype(np.float32)
    P = rng.standard_normal((1, 1, c, c)).astype(np.float32)
    t_reg = timeit(lambda: F.conv2d_forward(x, K, padding="same"))
    t_sep = timeit(lambda: F.separable_conv2d_forward(x, D, P, padding="same"))
    measured.append(t_sep / t_reg)
    predicted.append(1 / c + 1 / 9)
    print(f"C = F = {c:4d}: regular {t_reg * 1e3:7.2f} ms, separable {t_sep * 1e3:6.2f} ms, "
          f"time ratio {t_sep / t_reg:.3f}, multiply-add ratio {1 / c + 1 / 9:.3f}")

fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(widths, predicted, "o-", label=r"multiply-adds: $1/F + 1/9$")
ax.plot(widths, measured, "s-", label="measured time (NumPy, this CPU)")
ax.axhline(1 / 9, color="gray", ls=":", label="1/9")
ax.set_xscale("log", base=2); ax.set_yscale("log")
ax.set_xlabel("channels C = F"); ax.set_ylabel("separable / regular")
ax.set_title(f"3x3 convolution, batch {batch}, {hw}x{hw}"); ax.legend(); plt.show()
assert measured[-1] < 1.0                  # at the widest layer the separable conv is faster
assert measured[0] > 2 * predicted[0]      # at the narrowest, overheads: far from the multiply-add ratio

# %% [markdown]
r"""
## 4. Depthwise filters on a photograph

A depthwise convolution gives each channel its own filter. On an RGB photograph we can see that
directly: below, the red channel is blurred, the green one goes through a horizontal-edge
filter and the blue one through a vertical-edge filter — three filters, one
`DepthwiseConv2D(3)` layer, with the kernel set by hand. The pointwise half then mixes the three
filtered channels at every pixel: here into "blurred brightness" and "edge energy".
"""

# %%
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = plt.imread(f)
step = 4 if FAST else 2
h, w = photo.shape[0] // step * step, photo.shape[1] // step * step
img = photo[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3)) / 255.0
x_photo = img[None].astype(np.float32)

blur = np.full((5, 5), 1 / 25, np.float32)
edge_h = np.zeros((5, 5), np.float32); edge_h[1:4, 1:4] = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
edge_v = edge_h.T.copy()
dw = mx.nn.DepthwiseConv2D(3, kernel_size=5, padding="same")
dw.kernel.data[...] = np.stack([blur, edge_h, edge_v], axis=-1)[..., None]   # (5, 5, 3, 1)
z = dw(x_photo)

pw = mx.nn.PointwiseConv2D(3, 2)
pw.kernel.data[...] = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)[None, None]  # (1, 1, 3, 2)
y = pw(np.abs(z))        # |edges| so that the two edge channels add instead of cancelling
assert z.shape == x_photo.shape and y.shape == x_photo.shape[:3] + (2,)
assert sum(p.size for p in dw.parameters()) == 5 * 5 * 3 and sum(p.size for p in pw.parameters()) == 3 * 2

fig, axes = plt.subplots(2, 3, figsize=(11, 8.5))
panels = [(img, "input"), (z[0, :, :, 0], "R * 5x5 blur"), (z[0, :, :, 1], "G * horizontal edges"),
          (z[0, :, :, 2], "B * vertical edges"), (y[0, :, :, 0], "pointwise out 0: R-blur"),
          (y[0, :, :, 1], "pointwise out 1: |G-edges| + |B-edges|")]
for ax, (a, title) in zip(axes.flat, panels):
    ax.imshow(a, cmap=None if a.ndim == 3 else "gray")
    ax.set_title(title); ax.set_xlabel("column (pixels)"); ax.set_ylabel("row (pixels)")
plt.tight_layout(); show_jpeg(fig)

# %% [markdown]
r"""
## 5. Two differences from the "extreme" Inception module

The paper (Section 1.2, "The continuum between convolutions and separable convolutions") calls
the extreme module "almost identical" to a depthwise separable convolution, with two differences:

1. **The order.** The extreme module (Figure 4) runs the $1\times1$ first, then one $3\times3$ per
   channel; the separable convolution runs the per-channel $3\times3$ first, then the $1\times1$.
   In a deep stack this hardly matters — a stack of either is the same alternation, cut at a
   different place — but it changes the count: $C_\text{in}F + 9F$ against $9C_\text{in} + C_\text{in}F$.
2. **The nonlinearity.** In Inception every convolution is followed by a ReLU, so the extreme
   module has a ReLU between its $1\times1$ and its $3\times3$. Xception's separable convolution has
   none: depthwise and pointwise together form one *linear* map (the rank-constrained
   convolution of section 1). The paper's Figure 10 found that adding a ReLU or ELU in between
   made things *worse*; chapter 8 repeats that experiment in miniature.

Both show up in numbers: the separable convolution stays equal to a single convolution,
the module with a ReLU in between does not.
"""

# %%
c_in, c_out = 16, 32
ext = inception.ExtremeInception(c_in, c_out, batchnorm=False, rng=1)
sep = inception.DepthwiseSeparable(c_in, c_out, batchnorm=False, relu=False, rng=1)
n_ext = sum(p.size for p in ext.parameters())
n_sep = sum(p.size for p in sep.parameters())
print(f"extreme module {c_in}->{c_out}: {n_ext} weights (= {c_in}*{c_out} + 9*{c_out})")
print(f"separable conv {c_in}->{c_out}: {n_sep} weights (= 9*{c_in} + {c_in}*{c_out})")
assert n_ext == inception.extreme_params(c_in, c_out) == c_in * c_out + 9 * c_out
assert n_sep == inception.separable_params(c_in, c_out) == 9 * c_in + c_in * c_out

x = rng.standard_normal((2, 8, 8, c_in))
Dk, Pk = rng.standard_normal((3, 3, c_in, 1)), rng.standard_normal((1, 1, c_in, c_out))
K_eq = Dk[:, :, :, 0][..., None] * Pk[0, 0][None, None]
y_conv, _ = F.conv2d_forward(x, K_eq, None, padding="same")
for act in (None, "relu", "elu"):
    y, _ = F.separable_conv2d_forward(x, Dk, Pk, intermediate=act)
    gap = np.abs(y - y_conv).max() / np.abs(y_conv).max()
    print(f"intermediate={act!s:5}: relative distance from the single linear conv = {gap:.2e}")
    assert (gap < 1e-12) if act is None else (gap > 0.05)

# %% [markdown]
r"""
## Summary

* Depthwise: one $k\times k$ filter per channel (a block-diagonal regular conv, checked);
  pointwise: one $C\times F$ matrix product per pixel. Together: a regular convolution with
  kernel $K_{u,v,c,f} = D_{u,v,c}P_{c,f}$ (checked).
* Backward: $\partial L/\partial P = Z^\top\Delta$, $\delta^z = \Delta P^\top$, then the depthwise
  gradients channel by channel — all within $10^{-7}$ of central differences.
* Cost ratio $1/F + 1/k^2$ in parameters and multiply-adds *of one layer*; in seconds the saving is
  smaller, because the depthwise half is memory-bound. A whole network's parameters and
  multiply-adds are separate counts: Xception has Inception V3's parameters but more arithmetic.
* Versus the extreme module: the order of the two halves, and no nonlinearity in between.

## Exercises

1. A *depth multiplier* $m$ gives each input channel $m$ depthwise filters (Keras's
   `depth_multiplier`). Write the kernel shapes and the cost ratio against a regular
   convolution; for which $m$ does the separable convolution stop being cheaper?
   <details><summary>Hint</summary>Depthwise (k, k, C, m) makes mC channels; the pointwise kernel
   is then (1, 1, mC, F).</details>
2. Show that for stride 1 and `"same"` padding (odd $k$) the depthwise input gradient is a
   depthwise convolution of $\delta^z$ with the kernel rotated by 180°, and check it numerically
   with `F.depthwise_conv2d_forward`.
   <details><summary>Hint</summary>Chapter 1's transposed-convolution identity, one channel at a
   time: "same" padding with odd k pads (k-1)/2 on each side, which is what the flipped
   convolution needs.</details>
3. Given a regular kernel $K$, the best separable approximation of each input slice
   $K_{:,:,c,:}$ (a $k^2\times F$ matrix) is its leading singular pair. Build $D$ and $P$ from an SVD of
   a random $K$ and measure how much of $\|K\|_F^2$ the separable kernel keeps.
   <details><summary>Hint</summary><code>U, S, Vt = np.linalg.svd(K[:, :, c, :].reshape(9, F))</code>;
   D[:, :, c] = S[0] U[:, 0] and P[c] = Vt[0] (or split S[0] between them).</details>
4. **Write the depthwise convolution yourself**, tap by tap: `z = sum over (u, v) of
   x_pad[:, u:u+H, v:v+W, :] * D[u, v, :, 0]` (stride 1, "same"), and its backward pass from
   section 2. Check both against central differences with `mx.gradcheck.check_function`, and the
   forward against `F.depthwise_conv2d_forward`.
   <details><summary>Hint</summary>The backward of each tap's multiply-add: dD[u, v, c] gets
   sum(x_pad[:, u:u+H, v:v+W, c] * dz[..., c]) and dx_pad[:, u:u+H, v:v+W, :] gets dz * D[u, v, :, 0];
   crop the padding off dx_pad at the end.</details>

## Solutions
"""

# %%
# 1. shapes (k, k, C, m) and (1, 1, mC, F); per pixel k^2 mC + mCF against k^2 CF:
#    ratio m (1/F + 1/k^2) -- cheaper while m < 1 / (1/F + 1/9), i.e. m <= 8 for F >= 72 with k = 3
for F_out in (64, 128, 728):
    m_max = max(m for m in range(1, 20) if m * (1 / F_out + 1 / 9) < 1)
    print(f"F = {F_out}: separable cheaper up to depth multiplier {m_max}")
    assert m_max == (7 if F_out < 72 else 8)

# %%
# 2. the depthwise input gradient, stride 1 "same": a depthwise conv of dz with the rotated kernel
x = rng.standard_normal((2, 7, 6, 4)); Dk = rng.standard_normal((3, 3, 4, 1))
z, cache = F.depthwise_conv2d_forward(x, Dk, padding="same")
dz = rng.standard_normal(z.shape)
dx, _ = F.depthwise_conv2d_backward(dz, cache)
dx_rot, _ = F.depthwise_conv2d_forward(dz, Dk[::-1, ::-1], padding="same")
assert np.allclose(dx, dx_rot)

# %%
# 3. separable approximation by SVD, per input channel
K = rng.standard_normal((3, 3, 16, 32))
D_svd, P_svd = np.zeros((3, 3, 16, 1)), np.zeros((1, 1, 16, 32))
for c in range(16):
    U, S, Vt = np.linalg.svd(K[:, :, c, :].reshape(9, 32), full_matrices=False)
    D_svd[:, :, c, 0] = (S[0] * U[:, 0]).reshape(3, 3); P_svd[0, 0, c] = Vt[0]
K_sep = D_svd[:, :, :, 0][..., None] * P_svd[0, 0][None, None]
kept = 1 - np.sum((K - K_sep) ** 2) / np.sum(K ** 2)
print(f"the best separable kernel keeps {kept:.0%} of a random kernel's energy")
assert 0.1 < kept < 0.5      # a random 9x32 slice spreads its energy over 9 singular values: ~1/4 kept
# A trained kernel may be closer to rank one; Xception does not approximate a trained network --
# it trains the separable form from the start.

# %%
# 4. depthwise convolution by taps, forward and backward, gradient-checked
def my_depthwise_forward(x, D):
    k = D.shape[0]; p = k // 2
    x_pad = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    H, W = x.shape[1:3]
    z = sum(x_pad[:, u:u + H, v:v + W, :] * D[u, v, :, 0] for u in range(k) for v in range(k))
    return z, (x_pad, D, x.shape)

def my_depthwise_backward(dz, cache):
    x_pad, D, (N, H, W, C) = cache
    k = D.shape[0]; p = k // 2
    dD, dx_pad = np.zeros_like(D), np.zeros_like(x_pad)
    for u in range(k):
        for v in range(k):
            dD[u, v, :, 0] = (x_pad[:, u:u + H, v:v + W, :] * dz).sum(axis=(0, 1, 2))
            dx_pad[:, u:u + H, v:v + W, :] += dz * D[u, v, :, 0]
    return dx_pad[:, p:p + H, p:p + W, :], dD

x, Dk = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((3, 3, 3, 1))
errs = mx.gradcheck.check_function(my_depthwise_forward, my_depthwise_backward, [x, Dk])
print("my depthwise conv vs central differences: dx %.1e, dD %.1e" % tuple(errs))
assert max(errs) < 1e-7
assert np.allclose(my_depthwise_forward(x, Dk)[0], F.depthwise_conv2d_forward(x, Dk, padding="same")[0])
