# %% [markdown]
r"""
# Chapter 2 — The Inception module

Xception starts from a hypothesis about Inception. An Inception module (the paper's Figure 1)
does not choose one kernel size: it runs several **towers** side by side on the same input and
concatenates their outputs along the channel axis. Each tower first looks at *cross-channel*
correlations with a $1\times1$ convolution, mapping the input into a smaller space, and only then
at *spatial* correlations with $3\times3$ or $5\times5$ convolutions. The paper's reading: Inception
works because it partly decouples the two kinds of correlation (the paper's Section 1.1, "The
Inception hypothesis"). Xception pushes that to the end.

This chapter builds Inception V3's canonical $35\times35$ module, runs it on a photograph, shows
what each tower produces, and counts what each tower costs.
"""

# %%
import io
import os

import matplotlib.cbook as cbook
import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import nn
from minixception.models import inception

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
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
## 1. The module

Inception V3's first three mixed layers (torchvision's `InceptionA`) work on a $35\times35$ map of
192 (then 256, 288) channels and have four towers, concatenated in this order:

| tower | operations | output channels |
|---|---|---|
| `branch1x1` | $1\times1$ conv | 64 |
| `branch5x5` | $1\times1$ conv (48) → $5\times5$ conv | 64 |
| `branch3x3dbl` | $1\times1$ conv (64) → $3\times3$ conv (96) → $3\times3$ conv | 96 |
| `branch_pool` | $3\times3$ average pool, stride 1 → $1\times1$ conv | `pool_features` (32) |

Every convolution is a *conv unit*: convolution without bias → batch norm ($\epsilon=10^{-3}$) → ReLU,
with `"same"` padding, so all towers keep the $35\times35$ grid and can be concatenated:
$64+64+96+32 = 256$ channels. `mx.models.InceptionV3Module` is this module, made of the layers of
chapters 1 and 5 and the `Concat` container.
"""

# %%
module = inception.InceptionV3Module(in_channels=192, pool_features=32, rng=0)
x = np.random.default_rng(1).standard_normal((2, 35, 35, 192)).astype(np.float32)
y = module(x)
print("input", x.shape, "-> output", y.shape)
assert y.shape == (2, 35, 35, 64 + 64 + 96 + 32)

# the four towers, in concatenation order (each a Sequential of conv units)
# (the paper's Figure 1, drawn from this very module object below)
towers = dict(zip(["branch1x1", "branch5x5", "branch3x3dbl", "branch_pool"], module._children))
for name, branch in towers.items():
    print(f"{name:13s}", " -> ".join(u.name for u in branch))
    assert all(u.name.startswith(name) for u in branch)

# %% [markdown]
r"""
The paper's Figure 1, drawn by `mx.diagrams.inception_figure` from the module object we just built:
each box's label is read off the layer it stands for (kernel size, output channels), so the picture
cannot drift from the code. (This is the module as Inception V3's implementations build it —
torchvision's `InceptionA`, Keras's first mixed blocks — with its $5\times5$ tower; the paper's
Figure 1 is a schematic of the same four-tower idea.)
"""

# %%
fig1 = mx.diagrams.inception_figure(1, module=module)
plt.show()
labels = mx.diagrams.box_labels(fig1)
assert [labels[f"tower2/{i}"] for i in (1, 2)] == ["1x1 conv, 48", "5x5 conv, 64"]
assert labels["tower4/1"] == "3x3 avg pool"

# %% [markdown]
r"""
Because the module is trainable, the backward pass through `Concat` must slice the upstream
gradient per tower and *add* the four input gradients (every tower read the same input). A
float64 gradient check of a small module, on sampled coordinates:
"""

# %%
small = inception.InceptionV3Module(in_channels=6, pool_features=4, dtype="float64", rng=2)
xs = np.random.default_rng(3).standard_normal((2, 6, 6, 6))
errs = mx.gradcheck.check_layer(small, xs, samples=12)
print(f"{len(errs)} arrays checked, worst relative error {max(errs.values()):.1e}")
assert max(errs.values()) < 1e-6        # ReLUs and BN: inputs kept off the kinks by chance, a looser bound

# %% [markdown]
r"""
## 2. What each tower costs

From chapter 1, a $k\times k$ convolution from $C$ to $F$ channels has $k^2CF$ weights and, at stride 1
with `"same"` padding, $H W k^2 C F$ multiply-adds. Batch norm adds $2F$ trainable parameters
($\gamma,\beta$) and $2F$ moving statistics. We read each convolution's shape off the layers,
count, and check our totals against `mx.count_params`.
"""

# %%
H = W = 35
rows = []
for name, branch in towers.items():
    weights = macs = bn_params = 0
    for unit in branch:
        if isinstance(unit, inception.ConvUnit):
            conv = unit.conv
            kh, kw = conv.kernel_size
            w_ = kh * kw * conv.in_channels * conv.out_channels
            weights += w_
            macs += H * W * w_
            bn_params += 2 * conv.out_channels
    assert weights + bn_params == mx.count_params(branch)
    rows.append((name, weights, bn_params, macs))
    print(f"{name:13s} {weights:>8,} weights + {bn_params:4d} BN = {weights + bn_params:>8,} params, "
          f"{macs / 1e6:7.1f} M multiply-adds at 35x35")
total_params = sum(r[1] + r[2] for r in rows)
total_macs = sum(r[3] for r in rows)
print(f"{'module':13s} {total_params:>8,} trainable params, {mx.count_params(module, include_buffers=True):,} "
      f"with BN moving statistics, {total_macs / 1e6:.1f} M multiply-adds")
assert total_params == mx.count_params(module) == 255_904
assert [r[1] for r in rows] == [192 * 64, 192 * 48 + 25 * 48 * 64, 192 * 64 + 9 * 64 * 96 + 9 * 96 * 96, 192 * 32]

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
names = [r[0] for r in rows]
axes[0].bar(names, [r[1] + r[2] for r in rows], color="tab:blue")
axes[0].set_ylabel("trainable parameters"); axes[0].set_xlabel("tower")
axes[1].bar(names, [r[3] / 1e6 for r in rows], color="tab:orange")
axes[1].set_ylabel("multiply-adds per image (millions)"); axes[1].set_xlabel("tower")
for ax in axes:
    ax.tick_params(axis="x", labelsize=9)
axes[0].set_title("parameters per tower"); axes[1].set_title("cost per tower at 35x35")
plt.tight_layout(); plt.show()

# %% [markdown]
r"""
The double-$3\times3$ tower is the most expensive: two stacked $3\times3$ convolutions see a $5\times5$
window (like the $5\times5$ tower) with $9\cdot64\cdot96 + 9\cdot96\cdot96$ weights instead of $25\cdot48\cdot64$, but
at a greater width. The $1\times1$ "bottlenecks" are what makes all this affordable: a single
regular $5\times5$ convolution from 192 to 256 channels would need
$25\cdot192\cdot256 = 1{,}228{,}800$ weights, almost five times the whole module.
"""

# %%
# the claim, with real layers: one 5x5 conv with the module's input and output widths
regular = nn.Conv2D(192, 256, 5, padding="same", use_bias=False, rng=0)
regular_5x5 = mx.count_params(regular)
y_regular = regular(x)
print(f"one regular 5x5 conv 192 -> 256: {regular_5x5:,} weights = {regular_5x5 / total_params:.1f}x the module; "
      f"output {y_regular.shape}, the module's {y.shape}")
assert y_regular.shape == y.shape                                     # the same map, the same width
assert regular_5x5 == 25 * 192 * 256 and 4.5 < regular_5x5 / mx.count_params(module) < 5
assert 35 * 35 * regular_5x5 > 4.5 * total_macs                       # and ~5x the multiply-adds too

# %% [markdown]
r"""
## 3. What each tower sees

The towers differ in their **receptive field**: how large a patch of the input one output pixel
depends on. $1\times1$: one pixel. $1\times1\to5\times5$: $5\times5$. $1\times1\to3\times3\to3\times3$: also $5\times5$
($3 + 3 - 1$). Pool → $1\times1$: $3\times3$.

The backward pass measures this directly: send a gradient of 1 into a single output pixel of a
tower and see which input pixels get a non-zero gradient. (We make all weights positive and use
a positive input so that no ReLU switches a path off.)
"""

# %%
probe = inception.InceptionV3Module(in_channels=3, pool_features=8, dtype="float64", rng=4)
for p in probe.parameters():
    p.data[...] = np.abs(p.data) + 0.01
probe.eval()                                             # BN with its (initial) moving statistics
xp = np.ones((1, 15, 15, 3))
fields = {}
for (name, branch) in zip(towers, probe._children):
    out = branch(xp)
    g = np.zeros_like(out); g[0, 7, 7, 0] = 1.0            # one output pixel, one channel
    dx = branch.backward(g)
    reach = np.abs(dx[0]).sum(-1) > 0
    rows_hit, cols_hit = np.nonzero(reach)
    fields[name] = (rows_hit.max() - rows_hit.min() + 1, cols_hit.max() - cols_hit.min() + 1)
    print(f"{name:13s} receptive field {fields[name][0]}x{fields[name][1]}")
assert fields == {"branch1x1": (1, 1), "branch5x5": (5, 5), "branch3x3dbl": (5, 5), "branch_pool": (3, 3)}

# %% [markdown]
r"""
### On a photograph

Now a module with 3 input channels (RGB) runs on Grace Hopper's portrait from matplotlib's
sample data. Its weights are random — nothing here is trained — so the feature maps show
*structure*, not meaning: the $1\times1$ tower can only recolour pixels, the pooling tower sees a
slightly blurred image, and the $5\times5$ and double-$3\times3$ towers respond to edges and textures
at a larger scale. In training mode, each channel is batch-normalised over the image, so every map
shows its full contrast.
"""

# %%
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = plt.imread(f)
step = 4 if FAST else 2
h, w = photo.shape[0] // step * step, photo.shape[1] // step * step
img = photo[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3)) / 255.0
x_photo = (img[None] * 2 - 1).astype(np.float32)               # scaled to [-1, 1], as Xception's input

rgb_module = inception.InceptionV3Module(in_channels=3, pool_features=32, rng=5)
maps = rgb_module(x_photo)
splits = np.cumsum([64, 64, 96])
tower_maps = dict(zip(towers, np.split(maps[0], splits, axis=-1)))
assert [m.shape[-1] for m in tower_maps.values()] == [64, 64, 96, 32]
assert maps.shape[1:3] == x_photo.shape[1:3]                    # "same" everywhere: the grid is kept

fig, axes = plt.subplots(4, 5, figsize=(13, 12))
for r, (name, fm) in enumerate(tower_maps.items()):
    axes[r, 0].imshow(img); axes[r, 0].set_ylabel(name, fontsize=12)
    axes[r, 0].set_title("input" if r == 0 else "")
    order = np.argsort(-fm.reshape(-1, fm.shape[-1]).std(0))[:4]   # the four most varied channels
    for k, ch in enumerate(order):
        axes[r, k + 1].imshow(fm[:, :, ch], cmap="magma")
        axes[r, k + 1].set_title(f"channel {ch}")
for ax in axes.flat:
    ax.set_xticks([]); ax.set_yticks([])
for ax in axes[-1]:
    ax.set_xlabel("column")
for ax in axes[:, 1]:
    ax.set_ylabel("row")
fig.suptitle("Inception V3 module (random weights) on a photograph: four feature maps per tower", y=1.0)
plt.tight_layout(); show_jpeg(fig)

# %% [markdown]
r"""
## Summary

* The Inception V3 module runs four towers on one input and concatenates them: 256 channels,
  255,904 trainable parameters at 192 input channels, about 312 M multiply-adds at $35\times35$.
* Every tower but the pooling one starts with a $1\times1$ convolution: cross-channel correlations
  first, spatial ones second, in a reduced space.
* The towers see $1\times1$, $5\times5$, $5\times5$ and $3\times3$ windows — measured through the backward pass.

The next chapter simplifies this module until its towers become one operation with a single
knob — the number of *segments* — whose far end is the depthwise separable convolution.

## Exercises

1. Replace the $5\times5$ tower by a $1\times1\to3\times3\to3\times3$ tower of the same widths
   (48 → 64 → 64; Inception V3 did this kind of factorisation in its later modules). Count the
   weights and multiply-adds saved at $35\times35$, and check your count with a real `nn.Sequential`.
   <details><summary>Hint</summary>A 5x5 kernel from 48 to 64 channels has 25*48*64 weights;
   two 3x3 kernels 48 -> 64 -> 64 have 9*48*64 + 9*64*64.</details>
2. Compute the receptive field of two stacked $3\times3$ convolutions when the first has stride 2,
   then check it with the backward-pass probe of section 3.
   <details><summary>Hint</summary>After a stride-2 layer, one step of the next layer's window is
   two input pixels: r = 3 + (3 - 1) * 2.</details>
3. `pool_features` is 32 in the first module and 64 in the next two. How do the output width,
   the parameter count and the cost change? Check with `mx.count_params`.
   <details><summary>Hint</summary>Only the pooling tower's 1x1 convolution (and its batch norm)
   depends on pool_features.</details>

## Solutions
"""

# %%
# 1. 5x5 tower vs two 3x3 convolutions, same widths
w5 = 48 * 64 * 25
w33 = 48 * 64 * 9 + 64 * 64 * 9
two_3x3 = nn.Sequential(nn.Conv2D(48, 64, 3, padding="same", use_bias=False),
                        nn.Conv2D(64, 64, 3, padding="same", use_bias=False))
assert mx.count_params(two_3x3) == w33 and mx.count_params(nn.Conv2D(48, 64, 5, use_bias=False)) == w5
print(f"5x5: {w5:,} weights; 3x3 -> 3x3: {w33:,}; saved {w5 - w33:,} weights, "
      f"{35 * 35 * (w5 - w33) / 1e6:.1f} M multiply-adds at 35x35 ({1 - w33 / w5:.0%})")

# %%
# 2. receptive field of 3x3/2 then 3x3/1: 3 + (3 - 1) * 2 = 7, measured with the backward pass
stack = nn.Sequential(nn.Conv2D(1, 1, 3, stride=2, padding="same", use_bias=False, dtype="float64"),
                      nn.Conv2D(1, 1, 3, padding="same", use_bias=False, dtype="float64"))
for p in stack.parameters():
    p.data[...] = 1.0
out = stack(np.ones((1, 21, 21, 1)))
g = np.zeros_like(out); g[0, 5, 5, 0] = 1.0
hit_rows, hit_cols = np.nonzero(stack.backward(g)[0, :, :, 0])
field = (hit_rows.max() - hit_rows.min() + 1, hit_cols.max() - hit_cols.min() + 1)
print("receptive field of 3x3/2 -> 3x3:", field)
assert field == (7, 7)

# %%
# 3. pool_features 32 -> 64: +32 output channels, +192*32 weights and +2*32 batch norm parameters
m32 = inception.InceptionV3Module(192, pool_features=32, rng=0)
m64 = inception.InceptionV3Module(192, pool_features=64, rng=0)
extra = mx.count_params(m64) - mx.count_params(m32)
assert (m64.out_channels, m32.out_channels) == (288, 256) and extra == 192 * 32 + 2 * 32
print(f"pool_features 64: {m64.out_channels} channels, +{extra:,} parameters, "
      f"+{35 * 35 * 192 * 32 / 1e6:.1f} M multiply-adds at 35x35")
