# %% [markdown]
r"""
# Chapter 3 — Towards "extreme" Inception

The paper's introduction (Sections 1.1, "The Inception hypothesis", and 1.2, "The continuum
between convolutions and separable convolutions") walks from the Inception module to Xception's
building block in three figures. This chapter walks the same path with code:

* **Figure 2**, the *simplified* module: only $3\times3$ towers, each $1\times1 \to 3\times3$, no pooling tower;
* **Figure 3**, its *strict reformulation*: one large $1\times1$ convolution, then $3\times3$ convolutions on
  non-overlapping **segments** of its output channels — the same function, shown numerically equal;
* **Figure 4**, the *extreme* module: as many segments as channels, one $3\times3$ per channel.

The number of segments is one knob with a discrete range, from 1 (a regular convolution) to $C$
(a depthwise one). We plot what it does to parameters and multiply-adds, and to run time.
"""

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import functional as F
from minixception.models import inception

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
rng = np.random.default_rng(0)
plt.rcParams.update({"figure.dpi": 72})

# %% [markdown]
r"""
## 1. The simplified module (Figure 2)

Take three towers, each a $1\times1$ convolution from $C_\text{in}$ to $m$ channels followed by a $3\times3$
convolution from $m$ to $o$ channels (every convolution followed by batch norm and ReLU, as in
Inception), and concatenate their outputs: $3o$ channels.
"""

# %%
c_in, mid, out, towers = 16, 8, 8, 3
simplified = inception.SimplifiedInception(c_in, mid, out, towers=towers, rng=1)
x = rng.standard_normal((4, 10, 10, c_in)).astype(np.float32)
y_simple = simplified(x)
print("simplified module:", x.shape, "->", y_simple.shape, "|", mx.count_params(simplified), "parameters")
assert y_simple.shape == (4, 10, 10, towers * out)
fig2 = mx.diagrams.inception_figure(2)
plt.show()
assert sum(v == "3x3 conv" for v in mx.diagrams.box_labels(fig2).values()) == towers

# %% [markdown]
r"""
## 2. The strict reformulation (Figure 3)

The three $1\times1$ convolutions all read the *same* input, so they are one $1\times1$ convolution
from $C_\text{in}$ to $3m$ channels whose kernel is the three kernels side by side:

$$ K^{1\times1} = \big[\,K^{1\times1}_1 \;\big|\; K^{1\times1}_2 \;\big|\; K^{1\times1}_3\,\big] \in \mathbb R^{C_\text{in}\times 3m}. $$

Each $3\times3$ convolution then reads only *its own* segment of those $3m$ channels. That is a
**grouped convolution** with 3 groups: group $g$ maps input channels $[gm, (g+1)m)$ to output channels
$[go, (g+1)o)$. Viewed as one full kernel of shape $(3, 3, 3m, 3o)$, it is block-diagonal in its
channel axes. Batch norm and ReLU act per channel, so they commute with the regrouping.

`ReformulatedInception(c_in, 3m, 3o, segments=3)` is this module, and
`simplified_to_reformulated` lays the simplified module's weights out for it. The two compute
the same function — forward *and* backward:
"""

# %%
reform = inception.ReformulatedInception(c_in, towers * mid, towers * out, segments=towers, rng=2)
inception.simplified_to_reformulated(simplified, reform)      # copy the weights across
assert mx.count_params(reform) == mx.count_params(simplified)

for mode in ("train", "eval"):
    simplified.train(mode == "train"); reform.train(mode == "train")
    a, b = simplified(x), reform(x)
    dy = rng.standard_normal(a.shape).astype(np.float32)
    da, db = simplified.backward(dy), reform.backward(dy)
    print(f"{mode:5s} mode: max |y_simplified - y_reformulated| = {np.abs(a - b).max():.1e}, "
          f"max |dx difference| = {np.abs(da - db).max():.1e}")
    assert np.allclose(a, b, atol=1e-5) and np.allclose(da, db, atol=1e-5)

# %%
fig3 = mx.diagrams.inception_figure(3, segments=towers)     # the paper's Figure 3
plt.show()

# %%
grouped = reform[1].conv                                     # the 3x3 conv of the reformulation
Kg = grouped.kernel.data                                     # (3, 3, 3m / 3, 3o): Keras layout for groups
full = np.zeros((3, 3, towers * mid, towers * out), np.float32)
for g in range(towers):                                      # block-diagonal full kernel
    full[:, :, g * mid:(g + 1) * mid, g * out:(g + 1) * out] = Kg[:, :, :, g * out:(g + 1) * out]
h = rng.standard_normal((2, 6, 6, towers * mid)).astype(np.float32)
y_g, _ = F.conv2d_forward(h, Kg, padding="same", groups=towers)
y_f, _ = F.conv2d_forward(h, full, padding="same")
assert Kg.shape == (3, 3, mid, towers * out) and np.allclose(y_g, y_f, atol=1e-5)

fig, ax = plt.subplots(figsize=(4.5, 4.2))
ax.imshow(np.abs(full).sum((0, 1)) > 0, cmap="Greys")
ax.set_xlabel("output channel of the 3x3 conv"); ax.set_ylabel("input channel (= 1x1 output)")
ax.set_title("3 segments: the non-zero blocks\nof the equivalent full kernel"); plt.show()

# %% [markdown]
r"""
### The package's grouped convolution

`conv2d_forward(..., groups=s)` is the same im2col as chapter 1, followed by a *batched* matrix
product: the patch matrix is cut into the $s$ groups' column blocks and each group multiplies its
own block by its own $(k^2 C/s) \times (F/s)$ slice of the kernel — the block-diagonal structure
above, without ever storing the zeros. The backward pass transposes the same batched product.
"""

# %%
grouped_src = mx.diagrams.show_source(F.conv2d_forward, {
    r"_grouped\(|grouped\(": "each group's patch matrix: the columns of its own C/s channels",
    r"matmul\(cols_g|matmul\(.*_g\b|einsum\(.*g": "one matrix product per group (batched over the groups)",
})

# %% [markdown]
r"""
## 3. The extreme module (Figure 4)

Now let the number of segments grow until each segment is a single channel: the $1\times1$
convolution maps $C_\text{in}$ to $C$ channels and *one* $3\times3$ filter runs on each of them. That
second step is a **depthwise** convolution — `ExtremeInception` writes it with
`DepthwiseConv2D`. The grouped kernel `(3, 3, 1, C)` and the depthwise kernel `(3, 3, C, 1)` hold
the same numbers, transposed:
"""

# %%
C = 12
extreme = inception.ExtremeInception(c_in, C, rng=3)
as_groups = inception.ReformulatedInception(c_in, C, C, segments=C, rng=4)
src = extreme.state_dict()
mapped = {}
for k in as_groups.state_dict():
    part, rest = k.split("/", 1)                        # e.g. "grouped3x3", "bn/gamma"
    if rest == "conv/kernel":
        mapped[k] = (src["pointwise/pointwise_kernel"] if part == "pointwise"
                     else src["depthwise/depthwise_kernel"].transpose(0, 1, 3, 2))
    else:                                               # BN: "bn/gamma" -> "pointwise_bn/gamma" or "depthwise_bn/gamma"
        mapped[k] = src[("pointwise_bn/" if part == "pointwise" else "depthwise_bn/") + rest.split("/", 1)[1]]
as_groups.load_state_dict(mapped)
ye, yg = extreme(x), as_groups(x)
print("extreme (depthwise) vs reformulated with segments = C:", np.abs(ye - yg).max())
assert np.allclose(ye, yg, atol=1e-5)
fig4 = mx.diagrams.inception_figure(4, channels=C)            # the paper's Figure 4
plt.show()
assert sum(k.startswith("3x3/") for k in mx.diagrams.box_labels(fig4)) == C
assert mx.count_params(extreme) == inception.extreme_params(c_in, C) + 4 * C     # + BN gamma, beta twice

# %% [markdown]
r"""
## 4. The spectrum of segments

Fix a $1\times1$ convolution from $C_\text{in}$ to $C$ channels followed by a $3\times3$ convolution from $C$ to $C$
channels in $s$ segments. Each segment maps $C/s$ channels to $C/s$, so the $3\times3$ part has
$9\,(C/s)^2\,s = 9C^2/s$ weights:

$$ \text{params}(s) = C_\text{in} C + \frac{9C^2}{s}, \qquad
   \text{multiply-adds}(s) = H W \Big( C_\text{in} C + \frac{9C^2}{s} \Big), \qquad s \mid C . $$

$s = 1$ is a regular $3\times3$ convolution after the $1\times1$; Inception V3 sits at a few segments;
$s = C$ is the extreme module, whose $3\times3$ part costs only $9C$ — at which point the $1\times1$
convolution holds nearly everything. Below, $C_\text{in} = C = 256$ at $19\times19$, alongside the depthwise
separable convolution ($9C_\text{in} + C_\text{in}C$, chapter 4).
"""

# %%
c_in_s, c_s, hw = 256, 256, 19
spectrum = inception.segment_spectrum(c_in_s, c_s, hw, hw)
for row in spectrum:
    print(f"{row['segments']:4d} segments x {row['channels_per_segment']:3d} channels: "
          f"{row['params']:>8,} params, {row['flops'] / 1e6:7.1f} M multiply-adds  ({row['kind']})")
seg = np.array([r["segments"] for r in spectrum])
params = np.array([r["params"] for r in spectrum])
assert seg[0] == 1 and seg[-1] == c_s and spectrum[0]["kind"] == "regular conv"
assert params[0] == c_in_s * c_s + 9 * c_s * c_s and params[-1] == inception.extreme_params(c_in_s, c_s)
assert np.all(np.diff(params) < 0)                                  # more segments, fewer weights

# the counts agree with real layers at both ends and in the middle
for s in (1, 8, c_s):
    layer = inception.ReformulatedInception(c_in_s, c_s, c_s, segments=s, batchnorm=False)
    assert mx.count_params(layer) == inception.segment_params(c_in_s, c_s, s)

# %% [markdown]
r"""
Counting is one thing; time is another. We time the $3\times3$ part along the spectrum on this
CPU: the grouped convolution (`conv2d_forward(..., groups=s)`, one batched matrix product over the
groups) and, at $s = C$, the dedicated depthwise kernel of chapter 4.
"""

# %%
tc, thw, tb, reps = (64, 16, 4, 3) if FAST else (128, 19, 8, 5)
times, segs_t = [], [s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256) if s <= tc]
h = rng.standard_normal((tb, thw, thw, tc)).astype(np.float32)

def best_time(fn):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)

for s in segs_t:
    Kt = rng.standard_normal((3, 3, tc // s, tc)).astype(np.float32)
    times.append(best_time(lambda: F.conv2d_forward(h, Kt, padding="same", groups=s)))
Dt = rng.standard_normal((3, 3, tc, 1)).astype(np.float32)
t_dw = best_time(lambda: F.depthwise_conv2d_forward(h, Dt, padding="same"))

def patch_copy():
    """Only the im2col copy: pad, then write the 9 shifted views into one patch array."""
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = np.empty((tb, thw, thw, 3, 3, tc), np.float32)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = hp[:, i:i + thw, j:j + thw, :]
    return cols

t_copy = best_time(patch_copy)

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
ax = axes[0]
ax.loglog(seg, params, "o-", label=r"params: $C_{in}C + 9C^2/s$")
ax.loglog(seg, [r["flops"] / 1e3 for r in spectrum], "s-", label="multiply-adds / 1000")
ax.axhline(inception.separable_params(c_in_s, c_s), color="gray", ls="--", label="depthwise separable conv (params)")
ax.axhline(c_in_s * c_s, color="gray", ls=":", label=r"the $1\times1$ alone (params)")
ax.set_xscale("log", base=2); ax.set_xlabel("segments s  (1 = regular conv ... C = extreme / depthwise)")
ax.set_ylabel("count"); ax.set_title(f"1x1 {c_in_s}->{c_s}, then 3x3 in s segments, at {hw}x{hw}"); ax.legend(fontsize=9)
ax = axes[1]
ax.loglog(segs_t, np.array(times) * 1e3, "o-", label="grouped conv2d_forward (measured)")
ax.loglog(segs_t, times[0] * 1e3 / np.array(segs_t), ":", color="gray", label=r"ideal: time(1) / s")
ax.loglog([tc], [t_dw * 1e3], "r*", ms=14, label="depthwise_conv2d_forward, s = C")
ax.axhline(t_copy * 1e3, color="tab:green", ls="--", label="the im2col copy alone (no arithmetic)")
ax.set_xscale("log", base=2); ax.set_xlabel("segments s"); ax.set_ylabel("forward time (ms)")
ax.set_title(f"3x3 part only, {tc} channels, batch {tb}, {thw}x{thw}, NumPy"); ax.legend(fontsize=9)
plt.tight_layout(); plt.show()
print(f"s = 1: {times[0] * 1e3:.2f} ms;  s = C as a grouped conv: {times[-1] * 1e3:.2f} ms "
      f"(the ideal time(1)/s: {times[0] / segs_t[-1] * 1e3:.2f} ms);  as a depthwise conv: {t_dw * 1e3:.2f} ms;  "
      f"the im2col copy alone: {t_copy * 1e3:.2f} ms")
print("time(s) / time(1):", " ".join(f"{s}:{t / times[0]:.2f}" for s, t in zip(segs_t, times)))
# what the text below claims, in this run:
assert times[-1] > 10 * times[0] / segs_t[-1]     # at s = C the grouped conv is far from the 1/s the count promises
assert all(t > 5 * times[0] / s for s, t in zip(segs_t, times) if s >= 16)   # nowhere near 1/s from s = 16 on
assert times[-1] > t_copy                          # it can never beat its own im2col copy
assert times[-1] > t_dw                            # the dedicated depthwise code beats the generic grouped GEMM

# %% [markdown]
r"""
The count falls as $1/s$ in the $3\times3$ part until the $1\times1$ convolution dominates; the
measured time does **not** follow it. In the printed ratios of this run it never comes near the
dotted $1/s$ line, and for some $s$ it is even *above* the $s = 1$ time (how much varies from run
to run and machine to machine). Two reasons, both visible in the code above:

* **The copies do not shrink with $s$.** im2col writes a patch array $k^2 = 9$ times the size of
  the input whatever $s$ is, and the grouped path copies it once more to regroup the columns per
  group. The green line is that first copy alone, with no arithmetic: at large $s$ the grouped
  convolution costs a few such copies. It has become **memory-bound** — its time is set by bytes
  moved, and the bytes do not depend on $s$.
* **Per-group overhead.** At $s$ groups the matrix product is $s$ small products of
  $(N H W) \times (9C/s)$ by $(9C/s) \times (C/s)$; BLAS runs small, thin products far below its
  peak, and at $s = C$ each "matrix product" is a dot product of length 9.

A dedicated depthwise implementation (one vectorised multiply-add per tap over all channels, no
patch array) is what makes the far end of the spectrum worth having: the red star, on this CPU —
and on GPUs (chapter 9).

## 5. From the extreme module to Xception

The paper's hypothesis: cross-channel and spatial correlations can be mapped *entirely*
separately. The extreme module is that hypothesis as an operation, and it is almost a depthwise
separable convolution — the two differences (the order of the two halves, and the ReLU between
them) are the subject of the end of chapter 4. Xception is a linear stack of depthwise separable
convolutions with residual connections: chapters 5 and 6.

## Summary

* The simplified Inception module *equals* a $1\times1$ convolution followed by a grouped $3\times3$
  convolution with one group per tower — forward and backward, checked.
* The number of segments $s$ spans regular convolution ($s=1$) to the extreme module ($s=C$, the
  grouped kernel is the depthwise kernel transposed — checked).
* Weights and multiply-adds of the $3\times3$ part fall as $1/s$; run time needs a dedicated depthwise
  implementation to follow.

## Exercises

1. Find $s$ at which the $3\times3$ part costs as much as the $1\times1$ part, as a function of
   $C_\text{in}$ and $C$. Where does it lie for Xception's middle flow ($C_\text{in} = C = 728$)?
   List the divisors of 728.
   <details><summary>Hint</summary>Set 9C^2/s = C_in C and solve for s; only divisors of C are
   allowed.</details>
2. Build a `SimplifiedInception` with towers of *different* widths. Can it still be written as
   one $1\times1$ convolution followed by a grouped $3\times3$ convolution? What would a grouped
   convolution need to allow for that?
   <details><summary>Hint</summary>Write the equivalent full 3x3 kernel: its non-zero blocks lie on
   the diagonal but are no longer all the same size.</details>
3. The reformulation puts batch norm and a ReLU after its $1\times1$ convolution, Inception style.
   Without them, the extreme module at $s = C$ — $1\times1$ with kernel $P$, then one $3\times3$
   filter $D_{:,:,f}$ per channel — equals one regular convolution. Write its kernel and compare
   it with the separable convolution's $K_{u,v,c,f} = D_{u,v,c}P_{c,f}$ of chapter 4.
   <details><summary>Hint</summary>Substitute z = x P into the depthwise sum: which channel index
   does the spatial filter carry, the input's or the output's?</details>
4. **Write a grouped convolution yourself** from `F.conv2d_forward` / `F.conv2d_backward` with
   `groups=1`: slice the input channels and the kernel per group, convolve each, concatenate.
   Write its backward pass the same way and check both passes with `mx.gradcheck.check_function`
   (float64), and the forward against `F.conv2d_forward(..., groups=s)`.
   <details><summary>Hint</summary>With the Keras layout (kh, kw, C/s, F) the kernel of group g is
   <code>K[..., g*F/s:(g+1)*F/s]</code>, and its input is <code>x[..., g*C/s:(g+1)*C/s]</code>. The
   input gradient is the concatenation of the groups' input gradients.</details>

## Solutions
"""

# %%
# 1. 9C^2/s = C_in C  =>  s = 9C/C_in; for C_in = C = 728: s = 9, not a divisor of 728 -> between 8 and 13
divisors = [d for d in range(1, 729) if 728 % d == 0]
print("divisors of 728:", divisors)
cost3 = {s: 9 * 728 * 728 // s for s in divisors}
assert cost3[8] > 728 * 728 > cost3[13] and 9 not in divisors

# %%
# 2. unequal towers (widths 4 and 12): still one 1x1 conv, then a block-diagonal 3x3 kernel with
#    blocks of unequal size -- a grouped convolution would need per-group widths
widths_mid, widths_out = (4, 12), (6, 10)
x2 = rng.standard_normal((2, 6, 6, 5))
P = rng.standard_normal((1, 1, 5, sum(widths_mid)))
Ks = [rng.standard_normal((3, 3, m, o)) for m, o in zip(widths_mid, widths_out)]
z2, _ = F.pointwise_conv2d_forward(x2, P)
towers_out = [F.conv2d_forward(part, K, padding="same")[0]
              for part, K in zip(np.split(z2, [widths_mid[0]], axis=-1), Ks)]
K_block = np.zeros((3, 3, sum(widths_mid), sum(widths_out)))
K_block[:, :, :4, :6], K_block[:, :, 4:, 6:] = Ks
assert np.allclose(np.concatenate(towers_out, -1), F.conv2d_forward(z2, K_block, padding="same")[0])

# %%
# 3. extreme module without BN/ReLU: y[f] = sum_{u,v} D[u,v,f] sum_c x[c] P[c,f]
#    => K[u,v,c,f] = P[c,f] D[u,v,f]  (spatial filter indexed by the OUTPUT channel f);
#    the separable conv's K[u,v,c,f] = D[u,v,c] P[c,f] indexes it by the INPUT channel c.
x3 = rng.standard_normal((2, 7, 7, 4))
P3, D3 = rng.standard_normal((1, 1, 4, 6)), rng.standard_normal((3, 3, 6, 1))
y_ext = F.depthwise_conv2d_forward(F.pointwise_conv2d_forward(x3, P3)[0], D3, padding="same")[0]
K_ext = P3[0, 0][None, None] * D3[:, :, :, 0][:, :, None, :]
assert np.allclose(y_ext, F.conv2d_forward(x3, K_ext, padding="same")[0])

# %%
# 4. a grouped convolution written as a loop over groups, forward and backward, gradient-checked
def my_grouped_forward(x, K, groups):
    cg, fg = x.shape[-1] // groups, K.shape[-1] // groups
    parts = [F.conv2d_forward(x[..., g * cg:(g + 1) * cg], K[..., g * fg:(g + 1) * fg], padding="same")
             for g in range(groups)]
    return np.concatenate([y for y, _ in parts], -1), ([c for _, c in parts], fg)

def my_grouped_backward(dy, cache):
    caches, fg = cache
    grads = [F.conv2d_backward(dy[..., g * fg:(g + 1) * fg], c) for g, c in enumerate(caches)]
    return np.concatenate([dx for dx, _, _ in grads], -1), np.concatenate([dk for _, dk, _ in grads], -1)

x4, K4 = rng.standard_normal((2, 6, 5, 6)), rng.standard_normal((3, 3, 2, 9))     # 3 groups of 2 -> 3
errs = mx.gradcheck.check_function(lambda x, K: my_grouped_forward(x, K, 3), my_grouped_backward, [x4, K4])
print("my grouped conv vs central differences: dx %.1e, dK %.1e" % tuple(errs))
assert max(errs) < 1e-7
assert np.allclose(my_grouped_forward(x4, K4, 3)[0], F.conv2d_forward(x4, K4, padding="same", groups=3)[0])
