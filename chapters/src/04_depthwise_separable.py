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
"""

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
$1/9$. The parameter counts of the layers agree:
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

# %% [markdown]
r"""
Multiply-adds are not seconds. We time `conv2d_forward` (im2col + one big matrix product)
against `separable_conv2d_forward` (depthwise + one matrix product) on this machine's CPU, for
$C = F$ growing. The regular convolution is compute-bound and runs near the BLAS's peak; the
depthwise half does only 9 multiply-adds per value it reads, so it is bound by memory traffic
and runs at a far lower rate; at small widths fixed per-call overheads dominate and the
separable convolution can even be the slower one. The measured speed-up grows with the width
but stays smaller than the multiply-add count promises. The paper's Table 3 shows the same gap at full scale: Xception has
slightly fewer parameters than Inception V3 (22.9 M vs 23.6 M) yet trained slightly *slower*
(28 vs 31 steps per second on 60 K80 GPUs). Chapter 9 looks at the GPU side.
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
assert measured[-1] < 1.0      # at the widest layer the separable conv is faster, as promised

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

The paper (section 2) calls the extreme module "almost identical" to a depthwise separable
convolution, with two differences:

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
* Cost ratio $1/F + 1/k^2$ in parameters and multiply-adds; in seconds the saving is smaller,
  because the depthwise half is memory-bound.
* Versus the extreme module: the order of the two halves, and no nonlinearity in between.

## Exercises

1. A *depth multiplier* $m$ gives each input channel $m$ depthwise filters (Keras's
   `depth_multiplier`). Write the kernel shapes and the cost ratio against a regular
   convolution; for which $m$ does the separable convolution stop being cheaper?
2. Show that for stride 1 and `"same"` padding the depthwise input gradient is a depthwise
   convolution of $\delta^z$ with the kernel rotated by 180°, and check it numerically with
   `F.depthwise_conv2d_forward`.
3. Given a trained regular kernel $K$, the best separable approximation of each input slice
   $K_{:,:,c,:}$ is its leading singular pair. Build $D$ and $P$ from an SVD of a random $K$ and
   measure how much of $\|K\|_F^2$ the separable kernel keeps. What does that suggest about
   replacing the convolutions of a *trained* network by separable ones?
"""
