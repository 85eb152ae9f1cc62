# %% [markdown]
r"""
# Chapter 8 — The paper's ablations in miniature

The paper tests two design choices of Xception with training curves on ImageNet:

* **Figure 9, residual connections** (Section 4.6). Xception without any residual connection
  converges much slower and to a worse result than with them.
* **Figure 10, an activation between depthwise and pointwise** (Section 4.7). Inception puts a ReLU after every
  convolution, so the extreme Inception module has one between its two halves. Xception's separable
  convolutions have none. Adding a ReLU or an ELU there made results *worse*: no activation was
  best, then ELU, then ReLU.

We repeat both experiments with `mini_xception` on the built-in shapes data, with the paper's
optimiser, changing one switch at a time: `residual=False` and `intermediate="relu" | "elu"`.
The runs are small and short, so read the curves as an illustration, not a measurement: a
single seed on a couple of thousand images is noisy.
"""

# %%
import os
import tempfile
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
import minixception.train  # noqa: F401  (mx.train.fit)
from minixception import nn

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
plt.rcParams.update({"figure.dpi": 72})
os.environ["TQDM_DISABLE"] = "1"               # one line per epoch; no per-step bar in the saved notebook
warnings.filterwarnings("ignore", message="IProgress not found")

# %% [markdown]
r"""
## 1. The variants

All variants share the architecture of chapter 7 but with **eight middle modules**, as in the
full Xception: residual connections matter more the deeper the stack (chapter 5). The switches:

* `residual=False` drops every shortcut — the identity ones of the middle flow *and* the
  $1\times1$ stride-2 convolutions of the downsampling modules (three in `mini_xception`: its two
  entry modules and its exit module; the full Xception has four) — leaving a plain stack;
* `intermediate="relu"` or `"elu"` inserts that activation between the depthwise and the pointwise
  half of every separable convolution. It adds no parameter.
"""

# %%
MIDDLE = 8
variants = {
    "Xception (residual, no intermediate activation)": dict(residual=True, intermediate=None),
    "no residual connections": dict(residual=False, intermediate=None),
    "ReLU between depthwise and pointwise": dict(residual=True, intermediate="relu"),
    "ELU between depthwise and pointwise": dict(residual=True, intermediate="elu"),
}
counts = {}
for name, kw in variants.items():
    m = mx.models.mini_xception(num_classes=10, middle_blocks=MIDDLE, rng=0, **kw)
    counts[name] = mx.count_params(m)
    n_res = sum(isinstance(mod, nn.Residual) for mod in m.modules())
    print(f"{name:50s} {counts[name]:>8,} parameters, {n_res:2d} residual connections")
base = counts["Xception (residual, no intermediate activation)"]
assert counts["ReLU between depthwise and pointwise"] == counts["ELU between depthwise and pointwise"] == base
assert counts["no residual connections"] < base          # the 1x1 shortcut convolutions and their BN are gone
shortcut_convs = [n for n, l in mx.models.mini_xception(middle_blocks=MIDDLE, rng=0).leaf_layers()
                  if isinstance(l, nn.Conv2D) and "shortcut" in n]
print("1x1 shortcut convolutions removed by residual=False:", shortcut_convs)
assert len(shortcut_convs) == 3

# the switch really changes the function: same weights, different outputs
x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
a = mx.models.mini_xception(middle_blocks=MIDDLE, rng=0).eval()
b = mx.models.mini_xception(middle_blocks=MIDDLE, rng=0, intermediate="relu").eval()
b.load_state_dict(a.state_dict())
with nn.inference_mode():
    assert not np.allclose(a(x), b(x))

# %% [markdown]
r"""
## 2. Training them

Same data, same seed for the weights and for the data order, same optimiser (SGD with
momentum 0.9, 0.045 decayed ×0.94 every 2 epochs, L2 $10^{-5}$): only the switch differs.
"""

# %%
n_train, epochs = (192, 2) if FAST else (1500, 6)
data = mx.data.load_dataset("shapes", subset_size=n_train, seed=0)
histories, seconds, models = {}, {}, {}
for name, kw in variants.items():
    print(f"--- {name}")
    model = mx.models.mini_xception(num_classes=10, middle_blocks=MIDDLE, rng=0, **kw)
    t0 = time.perf_counter()
    histories[name] = mx.train.fit(model, data, out=tempfile.mkdtemp(prefix="minixception_ch8_"), epochs=epochs,
                                   batch_size=64, lr=0.045, momentum=0.9, weight_decay=1e-5,
                                   schedule="step", seed=0, progress=True)
    seconds[name] = time.perf_counter() - t0
    models[name] = model
assert all(len(h) == epochs and np.isfinite(h[-1]["train_loss"]) for h in histories.values())

# %% [markdown]
r"""
Chapter 7 showed that in such short runs at the paper's high learning rate, the test accuracy
measured with batch norm's *moving* statistics lags far behind the model. To compare the variants
fairly at the end we re-estimate every batch norm layer's statistics for the final weights (the
same procedure as in chapter 7; no weight changes) and then evaluate on the test set. During
training we follow the training loss and accuracy, which use batch statistics.
"""

# %%
mean, std = mx.data.channel_stats(data["x_train"])

def reestimate_bn(model):
    """Moving statistics := the mean of the batch statistics over one pass of the training set."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2D)]
    model.train()
    with nn.inference_mode():
        it = mx.data.BatchIterator(data["x_train"], data["y_train"], 128, mean, std, shuffle=True, rng=1)
        for t, (xb, _) in enumerate(it):
            for m in bns:
                m.momentum = t / (t + 1)
            model(xb)
    for m in bns:
        m.momentum = 0.99

final_acc = {}
for name, model in models.items():
    reestimate_bn(model)
    final_acc[name] = mx.train.evaluate(model, data["x_test"], data["y_test"], 256, mean, std)[1]

print(f"{'variant':50s} {'final train loss':>16s} {'final train acc':>15s} {'test acc*':>9s} {'time':>6s}")
for name, h in histories.items():
    print(f"{name:50s} {h[-1]['train_loss']:16.3f} {h[-1]['train_acc']:15.3f} {final_acc[name]:9.3f} {seconds[name]:5.0f}s")
print("* test accuracy after re-estimating batch norm's statistics for the final weights")
final = {name: h[-1]["train_loss"] for name, h in histories.items()}
print("ranked by final training loss (lower is better):", " < ".join(sorted(final, key=final.get)))
left_chance = [name for name, h in histories.items() if h[-1]["train_acc"] > 0.2]
print("left chance (final training accuracy above 0.2, twice chance):", left_chance or "none")

# %%
def plot_group(names, title):
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    for name in names:
        h = histories[name]
        ep = [r["epoch"] for r in h]
        line, = axes[0].plot(ep, [r["train_loss"] for r in h], "o-", label=name)
        axes[1].plot(ep, [r["train_acc"] for r in h], "o-", color=line.get_color(), label=name)
        axes[2].barh(name.replace(" between ", "\nbetween ").replace(" (", "\n("), final_acc[name], color=line.get_color())
    axes[0].set_ylabel("training loss (epoch mean)"); axes[1].set_ylabel("training accuracy (epoch mean)")
    for ax in axes[:2]:
        ax.set_xlabel("epoch")
    axes[1].axhline(0.1, color="gray", ls=":", label="chance"); axes[1].set_ylim(0, 1)
    axes[2].set_xlabel("test accuracy at the end*"); axes[2].set_xlim(0, 1); axes[2].axvline(0.1, color="gray", ls=":")
    axes[2].invert_yaxis(); axes[2].tick_params(axis="y", labelsize=8)
    axes[0].legend(fontsize=8); fig.suptitle(title); plt.tight_layout(); plt.show()

names = list(variants)
plot_group(names[:2], "Figure 9 in miniature: residual connections")
plot_group([names[0], names[3], names[2]], "Figure 10 in miniature: activation between depthwise and pointwise")

# %% [markdown]
r"""
## 3. What we see, and why

**Residual connections.** Chapter 5 showed the mechanism at initialisation: without shortcuts,
the gradient reaching the first modules of a deep stack is scaled by a product of many Jacobians,
and the early layers learn slowly, while with shortcuts the top gradient reaches every module
directly. Which variants left chance in six epochs is printed above the figures. In the
committed full-mode run the plain stack (34 convolutions at this setting) stayed at chance at
the paper's learning rate, and the residual one barely moved off it (its final training accuracy
under the twice-chance mark, its training loss lower than the plain stack's); an earlier full-mode
run of this chapter, made before the package's kernels changed, had the residual stack reach
about 0.4 training accuracy. So at this size and learning rate, six epochs do not separate the
two clearly, and the outcome has changed from one version of the code to the next: one short
single-seed run, at a learning rate chosen for neither, does not measure the size of the effect. Batch norm after every convolution did not rescue the plain stack here (chapter 5: it
fixes the scale of the forward signal, not the product of Jacobians).

The paper itself qualifies its Figure 9 (Section 4.6). Both models were trained with the same
optimisation settings (those tuned for Inception V3), not settings found for a deep plain stack,
so the comparison may well be "uncharitable" to the non-residual model. And it says the result shows that residual
connections matter *for this architecture*, not that stacks of separable convolutions need them:
it reports excellent results with non-residual VGG-style models whose convolutions were all
replaced by separable ones. A fair miniature would tune the learning rate per variant (exercise 1).

**The intermediate activation.** The paper's explanation: in Inception, the $3\times3$ convolutions
act on the deep, many-channel feature spaces produced by the $1\times1$ convolutions, where a
nonlinearity is useful; in a separable convolution the depthwise half acts on *one channel at a
time*, a one-dimensional space, where a ReLU mostly destroys information (about half of every
channel's values are zeroed before the pointwise convolution can mix them) rather than adding
expressiveness. ELU destroys less (negative values are squashed, not erased). In the committed
full-mode run only the ELU variant left chance in six epochs; the variant without intermediate
activation and the ReLU variant both stayed below the twice-chance mark, ReLU with the lower
training loss of the two. (An earlier full-mode run, before the package's kernels changed, had the
variant without activation leave chance as well.) That does not reproduce the paper's order — no
activation best, then ELU, then ReLU — and one short, single-seed run at a learning rate tuned for
none of them cannot confirm or refute it; exercise 1 asks what survives several seeds and a tuned
learning rate.

### A probe of that explanation

The argument is about the *depth* of the feature space the nonlinearity acts on. We can test its
core without training anything: take $C$-dimensional vectors $x$, map them to $dC$ dimensions with a
random matrix ($d$ = the depth of the feature space per input dimension), apply a ReLU, and ask how
much of $x$ a *linear* map — what the next pointwise convolution can do — recovers from the result
(the $R^2$ of a least-squares fit). $d = 1$ is the separable convolution's case: the ReLU acts on a
space no wider than the signal. Without the ReLU, everything is recoverable at any $d$.
"""

# %%
def recoverable(d, act, c=16, n=4000, seed=0):
    """R^2 of the best linear reconstruction of x from act(W x), W: (c, d*c) random."""
    r = np.random.default_rng(seed)
    xs = r.standard_normal((n, c))
    h = act(xs @ r.standard_normal((c, d * c)))
    h1 = np.hstack([h, np.ones((n, 1))])                    # + a bias
    coef, *_ = np.linalg.lstsq(h1, xs, rcond=None)
    return 1 - ((h1 @ coef - xs) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum()

relu = lambda v: np.maximum(v, 0)                                        # noqa: E731
elu = lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0)))           # noqa: E731
depths = [1, 2, 4, 8]
r2 = {name: [recoverable(d, f) for d in depths] for name, f in [("none", lambda v: v), ("ELU", elu), ("ReLU", relu)]}
for name, vals in r2.items():
    print(f"{name:5s} R^2 for d = {depths}: " + "  ".join(f"{v:.3f}" for v in vals))
fig, ax = plt.subplots(figsize=(6, 3.8))
for name, vals in r2.items():
    ax.plot(depths, vals, "o-", label=f"activation: {name}")
ax.set_xscale("log", base=2); ax.set_xlabel("depth of the feature space d (channels per input dimension)")
ax.set_ylabel("linearly recoverable share of x (R²)"); ax.set_ylim(0, 1.05); ax.legend()
ax.set_title("information a nonlinearity leaves for the next linear layer"); plt.tight_layout(); plt.show()

# what the text claims, in this probe
assert min(r2["none"]) > 0.999                                  # linear: nothing lost
assert r2["ReLU"][0] < 0.9 < r2["ReLU"][-1]                     # shallow space: ReLU loses a lot; deep: little
assert r2["ReLU"][0] < r2["ELU"][0] < r2["none"][0]             # ELU loses less than ReLU at d = 1
assert all(np.diff(r2["ReLU"]) > 0)                             # the deeper the space, the less is lost

# %% [markdown]
r"""
In this probe a ReLU on a one-deep space leaves a linear reader only part of the signal, ELU more,
no activation all of it; on an eight-times-deeper space the ReLU loses little. That is the paper's
suggested mechanism in isolation — the order of its Figure 10 — not a proof that it is what happens
inside a trained Xception.

## Summary

* `residual=False` removes `mini_xception`'s 3 shortcut convolutions (4 in the full Xception) and
  all identity shortcuts; `intermediate` adds an activation without parameters — one switch each,
  everything else identical.
* The paper (ImageNet, full size): residual connections are essential for convergence speed;
  no intermediate activation beats ELU, which beats ReLU.
* The paper's own caveats: its settings were tuned for Inception V3, its residual ablation may be
  uncharitable to the plain model, and separable stacks without shortcuts can work well.
* In miniature the mechanisms are the same (chapters 4 and 5), but six epochs on 1500 images are
  too short and noisy to reproduce the paper's orders (the committed run does not: only the ELU
  variant left chance); a linear-readout probe reproduces the Figure 10 order for the paper's
  information-loss argument.

## Exercises

1. Repeat the four runs with three seeds each (`rng=` for the weights, `seed=` for the data
   order), and give every variant its own learning rate from a small grid (say 0.01, 0.045, 0.1),
   as a fair comparison must. Plot the mean and the spread of the final training loss. Which
   differences survive the noise?
   <details><summary>Hint</summary>Pick each variant's best learning rate on one seed, then run
   the other seeds at it; an ordering "holds" if it holds for every seed.</details>
2. Set `MIDDLE = 0` and then `MIDDLE = 16`. How does the gap between the residual and the plain
   stack change with depth? Start with the gradient at initialisation (chapter 5's tool), then train.
   <details><summary>Hint</summary>Compare the gradient norm at the first layer's kernel with
   and without residual connections, at each depth.</details>
3. `python -m minixception ablate` runs the same four variants from the command line (see
   `--help`; `--data cifar10 --device gpu` on a GPU machine). Run it for more epochs: do the
   paper's orderings persist, and does the plain stack eventually catch up?
   <details><summary>Hint</summary>Read the loss curves, not only the last point: "slower" and
   "worse" are different claims.</details>
4. In the probe above, replace the random map by the identity ($d = 1$, $W = I$). How much does
   a ReLU lose then, and why is $W = [I, -I]$ ($d = 2$) lossless?
   <details><summary>Hint</summary>relu(v) - relu(-v) = v.</details>

## Solutions
"""

# %%
# 1. a fair, multi-seed comparison (the recipe; it needs ~20 CPU minutes, so it runs only when asked)
RUN_LONG = False
def fair_runs(seeds=(0, 1, 2), grid=(0.01, 0.045, 0.1), n=1500, ep=6):
    small = mx.data.load_dataset("shapes", subset_size=n, seed=0)
    out = {}
    for name, kw in variants.items():
        best = min(grid, key=lambda lr: mx.train.fit(
            mx.models.mini_xception(num_classes=10, middle_blocks=MIDDLE, rng=0, **kw), small,
            out=tempfile.mkdtemp(), epochs=ep, lr=lr, momentum=0.9, weight_decay=1e-5, seed=0)[-1]["train_loss"])
        out[name] = (best, [mx.train.fit(mx.models.mini_xception(num_classes=10, middle_blocks=MIDDLE, rng=s, **kw),
                                         small, out=tempfile.mkdtemp(), epochs=ep, lr=best, momentum=0.9,
                                         weight_decay=1e-5, seed=s)[-1]["train_loss"] for s in seeds])
    return out
if RUN_LONG:
    for name, (lr, losses) in fair_runs().items():
        print(f"{name:50s} lr {lr}: final train loss {np.mean(losses):.3f} +- {np.std(losses):.3f}")

# %%
# 2. depth and the residual gap at initialisation: gradient norm reaching block1_conv1's kernel
def first_kernel_grad(middle, residual):
    m = mx.models.mini_xception(num_classes=10, middle_blocks=middle, residual=residual, rng=0)
    xb = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype(np.float32)
    out = m(xb)
    m.backward(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    return float(np.linalg.norm(dict(m.named_parameters())["block1_conv1/kernel"].grad))
for middle in (0, 16):
    g_res, g_plain = first_kernel_grad(middle, True), first_kernel_grad(middle, False)
    print(f"middle blocks {middle:2d}: |grad| at block1_conv1, residual {g_res:.2e}, plain {g_plain:.2e}, "
          f"ratio {g_res / max(g_plain, 1e-30):.1e}")
# At initialisation, with batch norm in every block, the plain stack's gradient at the bottom does
# not vanish: it *grows* with depth (chapter 5's "batch norm" curve), by orders of magnitude at
# 16 middle modules, while the shortcuts keep it moderate. At one fixed learning rate, both a
# vanishing and an exploding gradient make a deep plain stack hard to train; training the pair
# (the second half of the exercise) shows how much of that gap the optimiser can close.

# %%
# 4. W = I: relu keeps only the positive half of each coordinate -> R^2 well below 1;
#    W = [I, -I]: relu(v) - relu(-v) = v recovers x exactly with a linear map.
xs = np.random.default_rng(0).standard_normal((2000, 16))
h_id, h_pm = relu(xs), relu(np.hstack([xs, -xs]))
fit = lambda h: 1 - ((h @ np.linalg.lstsq(h, xs, rcond=None)[0] - xs) ** 2).sum() / (xs ** 2).sum()   # noqa: E731
print(f"W = I: R^2 {fit(np.hstack([h_id, np.ones((2000, 1))])):.3f};  W = [I, -I]: R^2 {fit(h_pm):.6f}")
assert fit(h_pm) > 1 - 1e-9 and fit(np.hstack([h_id, np.ones((2000, 1))])) < 0.9
