# %% [markdown]
r"""
# Chapter 7 — Training a small Xception

Everything so far ran forward and backward once. Now we train. The model is
`mx.models.mini_xception`: Xception's structure — stem, downsampling modules with $1\times1$
stride-2 shortcuts, identity middle modules, exit module, global pooling, classifier — at
$32\times32$ and with few channels, so that it trains on a laptop CPU in minutes. The optimiser and
schedule are the paper's ImageNet recipe; the data is the package's built-in *shapes* dataset,
generated on the spot (no download). With a GPU, the same code trains on CIFAR-10.

After training we look inside: the curves, the confusion between classes, batch norm's moving
statistics, and the filters the first layers learned.
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

# The trainer shows a per-step progress bar (tqdm) and prints one line per epoch. The bar is for
# a live session; in a saved notebook it would leave hundreds of lines, so it is off here.
# Set LIVE_BAR = True when you run the chapter yourself.
LIVE_BAR = False
if not LIVE_BAR:
    os.environ["TQDM_DISABLE"] = "1"
warnings.filterwarnings("ignore", message="IProgress not found")


def show_jpeg(fig):
    """Show a figure of (noisy) images as a JPEG: as a PNG it would weigh ten times more in the notebook."""
    import io
    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=72, bbox_inches="tight", pil_kwargs={"quality": 85})
    plt.close(fig)
    display(Image(buf.getvalue()))

# %% [markdown]
r"""
## 1. The data

`mx.data.load_dataset("shapes")` generates $32\times32$ RGB images in 10 classes — six shapes (disk,
square, triangle, ring, plus, X) and four textures (horizontal, vertical, diagonal stripes,
checkerboard) — each with a random position, size, colours, a background gradient, a distracting
line and pixel noise. Colour and position say nothing about the class; local edges and
orientations, wherever they are, say everything: a task for convolutions.
"""

# %%
n_train, epochs = (640, 2) if FAST else (4000, 8)
data = mx.data.load_dataset("shapes", subset_size=n_train, seed=0)
classes = data["classes"]
print({k: v.shape for k, v in data.items() if k != "classes"})
assert data["x_train"].shape == (n_train, 32, 32, 3) and data["x_train"].dtype == np.uint8
assert len(classes) == 10 and set(np.unique(data["y_train"])) == set(range(10))

fig, axes = plt.subplots(3, 10, figsize=(14, 4.6))
for c in range(10):
    idx = np.nonzero(data["y_train"] == c)[0][:3]
    for r, i in enumerate(idx):
        axes[r, c].imshow(data["x_train"][i]); axes[r, c].set_xticks([]); axes[r, c].set_yticks([])
    axes[0, c].set_title(classes[c], fontsize=10)
axes[2, 0].set_xlabel("32 px"); axes[2, 0].set_ylabel("32 px")
plt.tight_layout(); show_jpeg(fig)

# %% [markdown]
r"""
## 2. The model

`mini_xception` keeps Xception's layer names and structure: a stride-1 stem (8, 16 channels at
$32\times32$), two downsampling modules (32 channels at $16\times16$, 64 at $8\times8$), two middle modules, the
exit module to $4\times4$ and two final separable convolutions — about 110 thousand parameters.
"""

# %%
model = mx.models.mini_xception(num_classes=10, rng=0)
initial = model.state_dict()                      # the random start, kept to compare the filters with later
table = mx.summary(model, (32, 32, 3))
n_params = mx.count_params(model)
assert 50_000 < n_params < 300_000 and "Output shape: (None, 10)" in table

# %% [markdown]
r"""
## 3. The recipe

The paper (Section 4.2, "Optimization configuration") trains on ImageNet with **SGD, momentum 0.9**, an initial learning rate of **0.045**
multiplied by **0.94 every 2 epochs**, and **L2 weight decay $10^{-5}$** (on the kernels, not on batch
norm's $\gamma, \beta$ or the biases). With momentum $\mu$, weight decay $\lambda$ and learning rate
$\eta_t$, one step on a mini-batch gradient $g$ is

$$ v \leftarrow \mu\, v + (g + \lambda w), \qquad w \leftarrow w - \eta_t\, v, \qquad
   \eta_t = 0.045 \cdot 0.94^{\lfloor t_\text{epoch} / 2 \rfloor} . $$

The loss is the softmax cross-entropy, whose gradient with respect to the logits $z$ is simply
$\mathrm{softmax}(z) - \text{onehot}(y)$, divided by the batch size. `mx.train.fit` runs the loop —
shuffle and augment (random crops and flips), forward, loss, backward, `SGD.step` — evaluates on
the test set after every epoch (evaluation mode: batch norm's moving statistics), and writes
`metrics.csv`, `curves.png` and a resumable `checkpoint.npz` into the run folder.

Two more facts from the paper: these settings were tuned for Inception V3 and used unchanged for
Xception, and $10^{-5}$ is Xception's own weight decay (Inception V3's $4\cdot10^{-5}$ was found quite
suboptimal for it; Section 4.3). Here is the update as the package computes it, `mx.optim.sgd_update`
(what `SGD.step` runs for each parameter; on a GPU the kernel table swaps in one fused kernel that
is tested equal to it), with the three formulas marked:
"""

# %%
# the update's reference code: SGD.step runs it per parameter through the kernel table
sgd_src = mx.diagrams.show_source(mx.optim.sgd_update, {
    r"weight_decay\s*\*": "g + lambda w  (L2, only for kernels: p.regularize)",
    r"buf\s*\+=|momentum\s*\*\s*buf": "v <- mu v + (g + lambda w)",
    r"(\.data|\bw)\s*-=": "w <- w - eta_t v",
})

# %%
# the same update by hand, three steps, against the optimiser: equal to the last bit
w0 = np.random.default_rng(1).standard_normal((3, 3, 2, 4))
p = nn.Parameter(w0.copy())
opt = mx.optim.SGD([p], lr=0.045, momentum=0.9, weight_decay=1e-5)
w, v = w0.copy(), np.zeros_like(w0)
for t in range(3):
    g = np.random.default_rng(10 + t).standard_normal(w0.shape)
    p.grad[...] = g; opt.step()
    v = 0.9 * v + (g + 1e-5 * w); w = w - 0.045 * v
assert np.array_equal(p.data, w)

# %%
sched = mx.optim.make_schedule("step", 0.045)
print("learning rate at epochs 0..6:", [round(sched(e), 5) for e in range(7)])
assert sched(0) == sched(1.9) == 0.045 and np.isclose(sched(2), 0.045 * 0.94) and np.isclose(sched(4.5), 0.045 * 0.94 ** 2)

# the loss gradient, checked on a tiny batch
logits = np.random.default_rng(0).standard_normal((4, 10))
labels = np.array([1, 0, 9, 3])
loss, dlogits = mx.losses.softmax_cross_entropy(logits, labels)
p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
assert np.allclose(dlogits, (p - np.eye(10)[labels]) / 4)

# %%
run = tempfile.mkdtemp(prefix="minixception_ch7_")
t0 = time.perf_counter()
history = mx.train.fit(model, data, out=run, epochs=epochs, batch_size=64, lr=0.045, momentum=0.9,
                       weight_decay=1e-5, schedule="step", seed=0, progress=True, polyak=0.99,
                       settings={"title": "mini_xception on shapes (the paper's recipe)"})
train_seconds = time.perf_counter() - t0
print(f"trained {epochs} epochs of {n_train} images in {train_seconds:.0f} s; run folder: {run}")
assert len(history) == epochs and sorted(os.listdir(run)) == ["checkpoint.npz", "curves.png", "metrics.csv"]
assert np.isfinite(history[-1]["train_loss"])

# %% [markdown]
r"""
## 4. The curves
"""

# %%
ep = [r["epoch"] for r in history]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
axes[0].plot(ep, [r["train_loss"] for r in history], "o-", label="train")
axes[0].plot(ep, [r["test_loss"] for r in history], "s-", label="test")
axes[0].set_ylabel("cross-entropy loss")
axes[1].plot(ep, [r["train_acc"] for r in history], "o-", label="train")
axes[1].plot(ep, [r["test_acc"] for r in history], "s-", label="test")
axes[1].axhline(0.1, color="gray", ls=":", label="chance"); axes[1].set_ylabel("accuracy"); axes[1].set_ylim(0, 1)
axes[2].plot(ep, [r["lr"] for r in history], "o-"); axes[2].set_ylabel("learning rate")
for ax in axes:
    ax.set_xlabel("epoch")
axes[0].legend(); axes[1].legend(); plt.tight_layout(); plt.show()

first, last = history[0], history[-1]
print(f"train loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}; test accuracy {first['test_acc']:.3f} -> {last['test_acc']:.3f}")
assert last["train_loss"] < first["train_loss"]              # it learns
if not FAST:
    assert max(r["test_acc"] for r in history) > 0.5          # well above chance (0.1) in the full run

# %% [markdown]
r"""
The test accuracy can sit far below the training accuracy for several epochs, and jump around
from one epoch to the next, even near chance. That is batch norm (chapter 5): evaluation uses the
*moving* statistics, which start at mean 0, variance 1 and move only 1% per step. With a learning
rate as high as 0.045 the weights — and with them the statistics of every layer's input — change
faster than that average follows, so the moving statistics describe a mixture of recent models
rather than the current one. Training accuracy, measured with batch statistics, does not see the
problem.

We can check that explanation directly: re-estimate every batch norm layer's moving statistics for
the *final* weights — average the batch statistics over a pass of training batches (setting the
layer's momentum to $t/(t+1)$ at batch $t$ makes the moving value the plain mean), without
changing any weight — and evaluate again. If the gap was the statistics' lag, it closes. The
package's `mx.train.recompute_bn_statistics` does exactly that:
"""

# %%
x_train, y_train = data["x_train"], data["y_train"]
mean, std = mx.data.channel_stats(x_train)
loss_before, acc_before = mx.train.evaluate(model, data["x_test"], data["y_test"], 256, mean, std)

bn_src = mx.diagrams.show_source(mx.train.recompute_bn_statistics, {
    r"m\.momentum = t / \(t \+ 1\)": "momentum t/(t+1): the moving value becomes the plain mean",
    r"model\(xb\)": "a forward pass in training mode updates the statistics",
})


def reestimate_bn(model):
    mx.train.recompute_bn_statistics(model, x_train, y_train, 128, mean, std)


saved = model.state_dict()
reestimate_bn(model)
loss_after, acc_after = mx.train.evaluate(model, data["x_test"], data["y_test"], 256, mean, std)
print(f"test accuracy with the trained moving statistics:    {acc_before:.3f} (loss {loss_before:.3f})")
print(f"test accuracy with statistics re-estimated for the final weights: {acc_after:.3f} (loss {loss_after:.3f})")
changed = [k for k in saved if not np.array_equal(saved[k], model.state_dict()[k])]
assert changed and all(k.endswith(("moving_mean", "moving_variance")) for k in changed)   # no weight touched
assert np.isclose(acc_before, history[-1]["test_acc"])
if not FAST:
    assert acc_after > 0.8 and acc_after >= acc_before - 0.02

# %% [markdown]
r"""
### Polyak averaging

The paper evaluates not the last weights of its runs but a moving average of the weights along
the run (Polyak averaging; Section 4.2). The run above kept one (`fit(..., polyak=0.99)`): after
every SGD step, for every trainable parameter,

$$ a \leftarrow d\,a + (1-d)\,w, \qquad d = 0.99, $$

an average whose weights decay by $d$ per step, so it remembers roughly the last $1/(1-d) = 100$
steps (about 1.6 epochs here). The idea: at a high learning rate the weights keep jumping around a
valley of the loss; their average can sit nearer its floor than any single iterate. Here is the
update as `mx.optim.PolyakAverage` computes it (batch norm's moving statistics are buffers, not
parameters, and are not averaged):
"""

# %%
polyak_src = mx.diagrams.show_source(mx.optim.PolyakAverage.update, {
    r"a \*= ": "a <- d a",
    r"a \+= ": "   + (1 - d) w",
})

# %% [markdown]
r"""
`fit` evaluated the averaged weights on the test set after every epoch (with the moving batch
norm statistics that training left). The checkpoint holds the average itself; `mx.train.load_polyak`
reads it, and `with avg.applied():` lends its weights to the model for the duration of a block. As
for the last weights above, we also re-estimate batch norm's statistics for the averaged weights:
statistics gathered along the run belong to no single set of weights.
"""

# %%
avg = mx.train.load_polyak(os.path.join(run, "checkpoint.npz"), model)
steps_per_epoch = -(-n_train // 64)
assert avg.decay == 0.99 and avg.updates == epochs * steps_per_epoch      # one update per step
last = model.state_dict()                                 # last weights, statistics re-estimated above
with avg.applied():
    moved = np.mean([np.linalg.norm(p.data - last[n]) / np.linalg.norm(last[n]) for n, p in model.named_parameters()])
    reestimate_bn(model)
    loss_avg, acc_avg = mx.train.evaluate(model, data["x_test"], data["y_test"], 256, mean, std)
model.load_state_dict(last)                               # the last weights' own statistics back
assert all(np.array_equal(p.data, last[n]) for n, p in model.named_parameters())
print(f"the average differs from the last weights by {moved:.1%} of their norm (mean over parameters)")
print(f"{'test accuracy':42s} {'last weights':>12s} {'Polyak average':>15s}")
print(f"{'with the moving statistics of training':42s} {history[-1]['test_acc']:12.3f} {history[-1]['polyak_test_acc']:15.3f}")
print(f"{'with statistics re-estimated':42s} {acc_after:12.3f} {acc_avg:15.3f}")

fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(ep, [r["test_acc"] for r in history], "s-", label="last weights of each epoch")
ax.plot(ep, [r["polyak_test_acc"] for r in history], "^--", label="Polyak average (d = 0.99)")
ax.axhline(0.1, color="gray", ls=":", label="chance")
ax.set_xlabel("epoch"); ax.set_ylabel("test accuracy\n(moving BN statistics)"); ax.set_ylim(0, 1); ax.legend()
plt.tight_layout(); plt.show()
assert moved > 0
if not FAST:     # what the text below says of this run
    assert any(r["polyak_test_acc"] < r["test_acc"] for r in history[:-1])   # the average lagged ...
    assert history[-1]["polyak_test_acc"] > history[-1]["test_acc"]        # ... and overtook at the end
    assert abs(acc_avg - acc_after) < 0.02                                  # equal, each with its own statistics

# %% [markdown]
r"""
In the committed run the average lagged behind the last weights for most of the run — it still
carries the weights of the last hundred or so steps, when the network was worse — and overtook
them only in the last epoch, where it scored clearly higher with the moving statistics of
training. With batch norm's statistics re-estimated for each, the two ended about equal (the
table above). So in this run most of the average's lead came through batch norm: the moving
statistics are themselves an average over roughly the last hundred steps (momentum 0.99), the
same window as the weights' average ($d = 0.99$), so they fit the averaged weights better than
the last ones. The paper's runs are far longer, at a slowly decaying rate, where there is much
more jitter for an average to smooth; one short run says nothing about the size of the effect
there.
"""
# %% [markdown]
r"""
## 5. A look inside

**Which classes get confused?** The confusion matrix on the test set, in evaluation mode (with
the re-estimated statistics):
"""

# %%
x_test, y_test = data["x_test"], data["y_test"]
model.eval()
preds = []
with nn.inference_mode():
    for xb, _ in mx.data.BatchIterator(x_test, y_test, 256, mean, std):
        preds.append(model(xb).argmax(1))
preds = np.concatenate(preds)
conf = np.zeros((10, 10), int)
np.add.at(conf, (y_test, preds), 1)
acc = np.trace(conf) / conf.sum()
assert np.isclose(acc, acc_after)                              # the same evaluation as mx.train.evaluate

fig, ax = plt.subplots(figsize=(6.5, 5.5))
im = ax.imshow(conf / conf.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1)
ax.set_xticks(range(10)); ax.set_xticklabels(classes, rotation=60); ax.set_yticks(range(10)); ax.set_yticklabels(classes)
ax.set_xlabel("predicted class"); ax.set_ylabel("true class"); ax.set_title(f"test confusion (accuracy {acc:.1%})")
fig.colorbar(im, label="fraction of the true class"); plt.tight_layout(); plt.show()

# %% [markdown]
r"""
**Batch norm's statistics.** Every `BatchNorm2D` carries the running mean and variance of its
input, per channel (here: the ones re-estimated above for the final weights). They tell how large
the signal is at each depth, and $\gamma$ shows how much each channel is used after normalisation.
"""

# %%
bns = [(n, m) for n, m in model.leaf_layers() if isinstance(m, nn.BatchNorm2D)]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
pos = np.arange(len(bns))
axes[0].boxplot([np.asarray(m.moving_mean) for _, m in bns], positions=pos, showfliers=False)
axes[1].boxplot([np.sqrt(np.asarray(m.moving_variance)) for _, m in bns], positions=pos, showfliers=False)
axes[2].boxplot([np.asarray(m.gamma.data) for _, m in bns], positions=pos, showfliers=False)
for ax, lab in zip(axes, ["moving mean", "moving std", r"$\gamma$"]):
    ax.set_ylabel(lab + " (per channel)"); ax.set_xlabel("batch norm layer (input side -> output side)")
    ax.set_xticks(pos[::3]); ax.set_xticklabels(pos[::3])
axes[1].set_yscale("log")
plt.tight_layout(); plt.show()
# the claim "they tell how large the signal is": the first BN layer's statistics against the
# actual mean and variance of its input (block1_conv1's output) over the training images
layers = dict(model.leaf_layers())
conv1, bn1 = layers["block1_conv1"], layers["block1_conv1_bn"]
outs = []
with nn.inference_mode():
    for xb, _ in mx.data.BatchIterator(x_train, y_train, 256, mean, std):
        outs.append(conv1(xb).reshape(-1, conv1.out_channels))
outs = np.concatenate(outs).astype(np.float64)
scale = np.sqrt(outs.var(0))
print("block1_conv1_bn: |moving mean - true mean| / true std, max over channels:",
      f"{np.max(np.abs(np.asarray(bn1.moving_mean) - outs.mean(0)) / scale):.3f};",
      f"moving variance / true variance: {np.round(np.asarray(bn1.moving_variance) / outs.var(0), 2)}")
assert np.allclose(bn1.moving_mean, outs.mean(0), atol=0.05 * scale.max())
assert np.allclose(bn1.moving_variance, outs.var(0), rtol=0.15)

# %% [markdown]
r"""
**Learned filters?** The first convolution (`block1_conv1`, $3\times3\times3\to8$) looks at colour
pixels directly, so its filters can be drawn as small RGB images; the depthwise filters of the
first separable convolution are one $3\times3$ patch per channel. It is tempting to see "edge
detectors" in such pictures — but a random $3\times3$ patch looks like an edge detector too. So we
draw each filter **before** training (the random initialisation), **after**, and the **change**, and
measure how far training moved them. Only the change is what was learned.
"""

# %%
trained = model.state_dict()
k1_0, k1 = initial["block1_conv1/kernel"], trained["block1_conv1/kernel"]                      # (3, 3, 3, 8)
dw_0 = initial["block2_sepconv1/depthwise_kernel"][:, :, :, 0]                                # (3, 3, 16)
dw = trained["block2_sepconv1/depthwise_kernel"][:, :, :, 0]
fig, axes = plt.subplots(6, 16, figsize=(14, 5.6))
rgb = lambda f: (f - f.min()) / (f.max() - f.min() + 1e-12)                                   # noqa: E731
for i in range(16):
    for ax in axes[:, i]:
        ax.set_xticks([]); ax.set_yticks([])
    for r, f in enumerate((k1_0, k1, k1 - k1_0)):
        if i < f.shape[3]:
            axes[r, i].imshow(rgb(f[:, :, :, i]))
        else:
            axes[r, i].axis("off")
    for r, f in enumerate((dw_0, dw, dw - dw_0), start=3):
        v = np.abs(f[:, :, i]).max() + 1e-12
        axes[r, i].imshow(f[:, :, i], cmap="RdBu", vmin=-v, vmax=v)
for r, lab in enumerate(["conv1\nbefore", "conv1\nafter", "conv1\nchange", "depthwise\nbefore",
                         "depthwise\nafter", "depthwise\nchange"]):
    axes[r, 0].set_ylabel(lab, fontsize=8)
axes[5, 0].set_xlabel("3x3 taps")
plt.tight_layout(); plt.show()

def dc_share(f):
    """Share of a 3x3 filter's energy in its mean (1 = flat blur, 0 = no response to a flat patch, as an edge filter)."""
    f = f.reshape(9, -1)
    return float(np.mean(f.sum(0) ** 2 / (9 * (f ** 2).sum(0))))

moved_conv1 = np.linalg.norm(k1 - k1_0) / np.linalg.norm(k1_0)
moved_dw = np.linalg.norm(dw - dw_0) / np.linalg.norm(dw_0)
print(f"relative change from the initialisation: block1_conv1 {moved_conv1:.0%}, block2 depthwise {moved_dw:.0%}")
print(f"share of energy in the filter mean (random 3x3: ~1/9 = 0.11): depthwise before {dc_share(dw_0):.2f}, "
      f"after {dc_share(dw):.2f}; conv1 per colour before {dc_share(k1_0):.2f}, after {dc_share(k1):.2f}")
assert k1.shape == (3, 3, 3, 8) and dw.shape == (3, 3, 16)
assert moved_conv1 > 0.01 and moved_dw > 0.01              # training did move them (the change row is not noise-free zero)

# %% [markdown]
r"""
What this run shows: the printed relative change says how far training moved the filters from
their random start, and the "change" rows are that movement. Where the change is small next to
the initial filter, the "after" picture is mostly the random initialisation, and calling it an
edge detector would be reading the initialisation. The mean-energy share is a crude test for
edge-like filters (an edge or line filter ignores a flat patch, share near 0): compare it before
and after rather than trusting the eye. Longer training (exercise 1) moves the filters further.

## 6. The checkpoint

The run folder's `checkpoint.npz` holds the weights, batch norm's statistics, the momentum buffers,
the data generator's state and the history — plain arrays, no pickle. Loading it into a fresh
model gives back the same predictions:
"""

# %%
fresh = mx.models.mini_xception(num_classes=10, rng=123)
meta = mx.load_checkpoint(os.path.join(run, "checkpoint.npz"), fresh)
restored = fresh.state_dict()
identical = all(np.array_equal(restored[k], saved[k]) for k in saved)   # `saved`: the model as training left it
model.load_state_dict(saved)                                            # undo the re-estimated statistics
fresh.eval(); model.eval()
xb = next(iter(mx.data.BatchIterator(x_test, y_test, 32, mean, std)))[0]
with nn.inference_mode():
    same = np.allclose(fresh(xb), model(xb), atol=1e-5)
print("checkpoint epoch:", meta["epoch"], "| identical arrays:", identical, "| identical predictions:", same)
assert identical and same and int(meta["epoch"]) == epochs

# %% [markdown]
r"""
## 7. With a GPU: CIFAR-10

On a machine with a CUDA GPU and CuPy, the same call trains on CIFAR-10 (downloaded once, MD5
checked, cached) with `device="gpu"`; `width=4` gives a 1.6-million-parameter model worth the
GPU. From the command line: `python -m minixception train --data cifar10 --device gpu`. This
cell runs only where a GPU is present (and the dataset can be had).
"""

# %%
if mx.gpu_available():
    try:
        cifar = mx.data.load_dataset("cifar10", subset_size=5000 if FAST else None)
    except Exception as e:                                   # offline and not cached
        cifar = None
        print("CIFAR-10 unavailable:", e)
    if cifar is not None:
        gpu_model = mx.models.mini_xception(num_classes=10, width=4, rng=0)
        gpu_run = tempfile.mkdtemp(prefix="minixception_ch7_gpu_")
        gpu_hist = mx.train.fit(gpu_model, cifar, out=gpu_run, epochs=1 if FAST else 10, batch_size=128,
                                lr=0.045, momentum=0.9, weight_decay=1e-5, schedule="step", device="gpu")
        print("CIFAR-10 test accuracy per epoch:", [round(r["test_acc"], 3) for r in gpu_hist])
else:
    print("no CUDA GPU here (mx.gpu_available() is False): the CIFAR-10 run is skipped")

# %% [markdown]
r"""
## Summary

* `mx.train.fit` = the paper's optimiser (SGD, momentum 0.9, L2 $10^{-5}$ on kernels, 0.045 × 0.94
  every 2 epochs) around the hand-written forward and backward passes.
* A 110-thousand-parameter Xception learns the shapes dataset on a CPU in minutes. Its test
  accuracy lags and jumps because batch norm's moving statistics trail the fast-changing weights;
  re-estimating them for the final weights closes most of the gap, no weight changed.
* Inside: the confusion matrix, per-layer batch norm statistics (checked against the real input
  statistics of the first layer), first-layer and depthwise filters before and after training with
  how far they moved, and a checkpoint that restores the model exactly.
* The paper evaluates **Polyak-averaged** weights (an exponential moving average of the weights
  over training) rather than the last iterate. Kept with `fit(..., polyak=0.99)` and read back with
  `mx.train.load_polyak`, the average lagged the last weights for most of this run and overtook
  them at the end; with batch norm statistics re-estimated for each, the two were about equal.
* The paper also uses dropout 0.5 before the classifier on ImageNet (`mini_xception(dropout=0.5)`);
  this short run does not.

## Exercises

1. Train with `schedule="cosine"` and with `schedule="constant"` at the same initial rate. Which
   reaches the better test accuracy in the same number of epochs? First compute the three
   schedules over the run: why is the paper's step decay almost constant over a short run?
   <details><summary>Hint</summary>0.94 every 2 epochs: after 8 epochs the rate is 0.94^4 = 78% of
   its start. The paper trains for far more epochs.</details>
2. Set `weight_decay=0` and then `5e-4`. Which parameters does weight decay touch, and how fast
   would it shrink a kernel whose loss gradient were zero?
   <details><summary>Hint</summary>With g = 0 the update is v <- mu v + lambda w, w <- w - eta v:
   a linear recurrence; for small eta lambda the weights shrink by about eta lambda / (1 - mu)
   per step.</details>
3. Evaluate the trained model in *training* mode (batch statistics) on test batches of size 256,
   then of size 2. Explain the difference with chapter 5.
   <details><summary>Hint</summary>Batch statistics over 2 images are noisy estimates of the
   statistics the model was trained with.</details>
4. **Write the loss's backward pass yourself**: softmax cross-entropy of logits $z$ (N, K) and
   labels $y$, $L = -\frac1N\sum_n \log \mathrm{softmax}(z_n)_{y_n}$, forward returning
   `(loss, cache)` and backward returning $\partial L/\partial z$ times the upstream scalar. Check it
   with `mx.gradcheck.check_function` and against `mx.losses.softmax_cross_entropy`.
   <details><summary>Hint</summary>Subtract the row maximum before exponentiating (it changes
   nothing mathematically and avoids overflow); the gradient is (softmax(z) - onehot(y)) / N.</details>

## Solutions
"""

# %%
# 1. the three schedules over a short run: step decay has barely moved after 8 epochs
total = 8
for name in ("step", "cosine", "constant"):
    sch = mx.optim.make_schedule(name, 0.045, total_epochs=total)
    print(f"{name:8s}", [round(sch(e), 4) for e in range(total + 1)])
assert np.isclose(mx.optim.make_schedule("step", 0.045)(8), 0.045 * 0.94 ** 4)     # 78% of the start
assert mx.optim.make_schedule("cosine", 0.045, total_epochs=total)(total - 0.01) < 0.001

# %%
# 2. weight decay: only parameters with p.regularize (kernels), never BN's gamma/beta or biases;
#    with zero loss gradient a kernel decays geometrically
regularized = sorted({n.split("/")[-1] for n, p in model.named_parameters() if p.regularize})
not_regularized = sorted({n.split("/")[-1] for n, p in model.named_parameters() if not p.regularize})
print("decayed:", regularized, "| not decayed:", not_regularized)
assert "gamma" in not_regularized and "beta" in not_regularized and "gamma" not in regularized
q = nn.Parameter(np.ones(4))
opt = mx.optim.SGD([q], lr=0.045, momentum=0.9, weight_decay=5e-4)
for _ in range(1000):
    q.grad[...] = 0; opt.step()
rate = 0.045 * 5e-4 / (1 - 0.9)
print(f"after 1000 steps with zero loss gradient: w = {q.data[0]:.3f} (about exp(-1000 * {rate:.2e}) = {np.exp(-1000 * rate):.3f})")
assert abs(q.data[0] - np.exp(-1000 * rate)) < 0.02

# %%
# 3. training-mode evaluation with batches of 256 and of 2: small batches give noisy statistics
model.load_state_dict(saved)
def train_mode_accuracy(bs):
    model.train()
    correct = 0
    with nn.inference_mode():
        for xb, yb in mx.data.BatchIterator(x_test, y_test, bs, mean, std):
            correct += int((model(xb).argmax(1) == yb).sum())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2D):
            m.moving_mean[...] = saved_bn[id(m)][0]; m.moving_variance[...] = saved_bn[id(m)][1]
    model.eval()
    return correct / len(y_test)
saved_bn = {id(m): (np.array(m.moving_mean), np.array(m.moving_variance)) for m in model.modules()
            if isinstance(m, nn.BatchNorm2D)}
acc_256, acc_2 = train_mode_accuracy(256), train_mode_accuracy(2)
print(f"test accuracy with batch statistics: batches of 256 {acc_256:.3f}, batches of 2 {acc_2:.3f}")
if not FAST:                       # (the fast run's model is near chance either way)
    assert acc_2 < acc_256

# %%
# 4. softmax cross-entropy, forward and backward by hand, gradient-checked
def my_ce_forward(z, labels):
    zs = z - z.max(1, keepdims=True)
    p = np.exp(zs); p /= p.sum(1, keepdims=True)
    n = z.shape[0]
    return np.array(-np.log(p[np.arange(n), labels]).mean()), (p, labels)

def my_ce_backward(dloss, cache):
    p, labels = cache
    g = p.copy(); g[np.arange(len(labels)), labels] -= 1
    return dloss * g / len(labels)

z = np.random.default_rng(3).standard_normal((5, 10)); lab = np.array([0, 3, 9, 3, 1])
errs = mx.gradcheck.check_function(lambda z: my_ce_forward(z, lab), my_ce_backward, [z])
ref_loss, ref_grad = mx.losses.softmax_cross_entropy(z, lab)
print(f"my cross-entropy backward vs central differences: {errs[0]:.1e}")
assert errs[0] < 1e-7 and np.isclose(my_ce_forward(z, lab)[0], ref_loss)
assert np.allclose(my_ce_backward(1.0, my_ce_forward(z, lab)[1]), ref_grad)
