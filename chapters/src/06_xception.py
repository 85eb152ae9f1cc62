# %% [markdown]
r"""
# Chapter 6 — The full Xception

Xception is "a linear stack of depthwise separable convolution layers with residual
connections" (the paper, Section 3, "The Xception architecture"): 36 convolution layers in 14 modules, all but the first and
the last module wrapped in a residual connection. This chapter builds it with
`mx.models.Xception` — exactly Keras's `keras.applications.Xception`, layer names included —
walks through its three flows, prints its summary, checks its parameter count against the
paper's Table 3, splits parameters and cost between the depthwise and pointwise halves, and
then tells the rest of the paper's story: how it was trained, what it found on JFT and ImageNet,
and what it cost.
"""

# %%
import io
import os
from pathlib import Path

import matplotlib.cbook as cbook
import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import nn
from minixception.models import keras_weights
from minixception.summary import trace_shapes

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
plt.rcParams.update({"figure.dpi": 72})

# %% [markdown]
r"""
## 1. Three flows

The paper's Figure 5, with the output shapes at a $299\times299\times3$ input:

* **Entry flow.** The stem: a $3\times3$ stride-2 convolution (32, `"valid"`: $299\to149$) and a $3\times3$
  convolution (64, $\to147$), each with batch norm and ReLU. Then three *downsampling* modules
  (128, 256, 728 channels): [ReLU] separable conv → BN → ReLU → separable conv → BN →
  $3\times3$ stride-2 max pool, added to a shortcut $1\times1$ stride-2 convolution + BN of the module's
  input. $147 \to 74 \to 37 \to 19$.
* **Middle flow.** Eight identical modules at $19\times19\times728$: three times (ReLU, separable conv
  728, BN), added to the module's input (identity shortcut).
* **Exit flow.** One more downsampling module (728 then 1024 channels, $19\to10$), two separable
  convolutions (1536, 2048) each with BN and ReLU, global average pooling, and the classifier
  (a dense layer to 1000 classes, the only layer with a bias).

Each module is built from the pieces of the earlier chapters: `SeparableConv2D` (chapter 4),
`BatchNorm2D` and `Residual` (chapter 5), `Conv2D` (chapter 1), `MaxPool2D`.
"""

# %%
model = mx.models.Xception(rng=0)                  # random weights, Keras's architecture
leaves = model.leaf_layers()                       # [(name, layer)] in forward order
seps = [n for n, l in leaves if isinstance(l, nn.SeparableConv2D)]
convs = [n for n, l in leaves if isinstance(l, nn.Conv2D)]
stem = [n for n in convs if "shortcut" not in n]
shortcuts = [n for n in convs if "shortcut" in n]
print(f"{len(stem)} stem convolutions + {len(seps)} separable convolutions = {len(stem) + len(seps)} conv layers")
print("shortcut 1x1 convolutions:", shortcuts)
print("modules (blocks):", sorted({int(n.split("_")[0][5:]) for n in seps + stem}))
assert len(stem) + len(seps) == 36 and len(shortcuts) == 4
assert len({n.split("_")[0] for n in seps + stem}) == 14
residuals = [m for m in model.modules() if isinstance(m, nn.Residual)]
assert len(residuals) == 12                        # every module but the first (stem) and the last (block 14)

# %% [markdown]
r"""
The paper's Figure 5, drawn by `mx.diagrams.xception_figure` from this `model` object: it walks the
model's modules, puts the run of identity-shortcut modules in the middle flow (drawn once, with
the repeat count the model has), everything before it in the entry flow and everything after in
the exit flow, and labels every box from its layer. Batch norm, which follows every convolution,
is not drawn (the paper says so in its caption). The shapes come from one traced forward pass.
The paper's figure also shows "optional fully-connected layers" before the classifier: the
JFT experiments below tried them; Keras's model, and ours, have none.
"""

# %%
records, out_shape = trace_shapes(model, (299, 299, 3))
fig5 = mx.diagrams.xception_figure(model, shapes={r[0]: r[3] for r in records})
plt.show()
flows = mx.diagrams.xception_flows(model)
drawn = mx.diagrams.box_labels(fig5)
assert len(flows["middle"]) == 8 and "repeated 8 times" in fig5.axes[1].get_title()
assert sum(v.startswith("SeparableConv") for v in drawn.values()) == len(seps) - 7 * 3   # middle drawn once
assert drawn["block13_shortcut:shortcut"] == "Conv 1024, 1x1, stride 2x2"

# %% [markdown]
r"""
## 2. The summary table

`mx.summary` runs one image through the model (evaluation mode, no caches kept) to learn every
layer's output shape, and counts parameters and multiply-adds per layer, like Keras's
`model.summary()`. The first column holds Keras's layer names, so this table lines up with
Keras's own, with the paper's Figure 5 and with the keys of the state dict
(`"block5_sepconv2/pointwise_kernel"`, …).
"""

# %%
table = mx.summary(model, (299, 299, 3))

# %%
trainable = mx.count_params(model)
with_buffers = mx.count_params(model, include_buffers=True)
notop = mx.count_params(mx.models.Xception(include_top=False, rng=0), include_buffers=True)
print(f"trainable parameters:               {trainable:>12,}")
print(f"with BN moving statistics (Keras):  {with_buffers:>12,}")
print(f"include_top=False (Keras):          {notop:>12,}")
assert trainable == 22_855_952                     # exactly the paper's Table 3
assert with_buffers == 22_910_480 and notop == 20_861_480
assert "Trainable params: 22,855,952" in table

# %% [markdown]
r"""
The paper (Table 3) compares it with Inception V3 at the same size, and (Table 1) on ImageNet:

| | parameters | training steps/s (60 K80 GPUs) | top-1 | top-5 |
|---|---:|---:|---:|---:|
| Inception V3 | 23,626,728 | 31 | 0.782 | 0.941 |
| Xception | 22,855,952 | 28 | 0.790 | 0.945 |

Slightly *fewer* parameters and slightly better accuracy: the paper's reading is that the gain is
not capacity but a more efficient use of the parameters. Parameters are not compute, though:
section 3 counts Xception's multiply-adds, and they are *more* than Inception V3's.
"""

# %%
inception_v3 = 23_626_728
fig, ax = plt.subplots(figsize=(6, 3.3))
ax.barh(["Inception V3\n(paper, Table 3)", "Xception\n(mx.models.Xception)"], [inception_v3 / 1e6, trainable / 1e6],
        color=["tab:gray", "tab:blue"])
for i, v in enumerate([inception_v3, trainable]):
    ax.text(v / 1e6 - 0.3, i, f"{v:,}", va="center", ha="right", color="w")
ax.set_xlabel("trainable parameters (millions)"); ax.set_title("the same budget, differently spent")
plt.tight_layout(); plt.show()
assert trainable < inception_v3 and (inception_v3 - trainable) / inception_v3 < 0.04

# %% [markdown]
r"""
## 3. Where the parameters and the multiply-adds are

The footer of the summary splits the model by kind of layer. Chapter 4 predicted the answer: a
separable convolution from $C$ to $F$ channels holds $9C$ depthwise and $CF$ pointwise weights, so
for $F$ in the hundreds nearly everything is pointwise. Per module:
"""

# %%
kinds = ("depthwise", "pointwise", "regular conv", "dense")
per_block = {}
for name, layer, sin, sout in records:
    block = name.split("_")[0] if name.startswith("block") else "head"
    hw = sout[1] * sout[2] if len(sout) == 4 else 1
    acc = per_block.setdefault(block, {k: [0, 0] for k in kinds})
    if isinstance(layer, nn.SeparableConv2D):
        c, f = layer.in_channels, layer.out_channels
        acc["depthwise"][0] += 9 * c; acc["depthwise"][1] += hw * 9 * c
        acc["pointwise"][0] += c * f; acc["pointwise"][1] += hw * c * f
    elif isinstance(layer, nn.Conv2D):
        n = layer.kernel.size
        acc["regular conv"][0] += n; acc["regular conv"][1] += hw * n
    elif isinstance(layer, nn.Dense):
        n = layer.kernel.size
        acc["dense"][0] += n + layer.bias.size; acc["dense"][1] += n

blocks = list(per_block)
fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
for ax, idx, label in [(axes[0], 0, "parameters (millions)"), (axes[1], 1, "multiply-adds per image (G)")]:
    bottom = np.zeros(len(blocks))
    scale = 1e6 if idx == 0 else 1e9
    for k in kinds:
        vals = np.array([per_block[b][k][idx] for b in blocks]) / scale
        ax.bar(blocks, vals, bottom=bottom, label=k)
        bottom += vals
    ax.set_ylabel(label); ax.set_xlabel("module"); ax.tick_params(axis="x", rotation=60); ax.margins(y=0.08)
axes[0].legend(); axes[0].set_title("parameters per module"); axes[1].set_title("cost per module at 299x299")
plt.tight_layout(); plt.show()

tot = {k: [sum(per_block[b][k][i] for b in blocks) for i in (0, 1)] for k in kinds}
all_p, all_m = sum(v[0] for v in tot.values()), sum(v[1] for v in tot.values())
for k, (p, m) in tot.items():
    print(f"{k:13s} {p:>11,} weights ({100 * p / all_p:5.1f}%)   {m / 1e9:6.3f} G multiply-adds ({100 * m / all_m:5.1f}%)")
assert tot["pointwise"][0] > 20 * tot["depthwise"][0] and tot["pointwise"][1] > 20 * tot["depthwise"][1]
assert all_p + 2 * sum(l.channels for _, l in leaves if isinstance(l, nn.BatchNorm2D)) == trainable
assert 8.3e9 < all_m < 8.45e9                      # ~8.4 G multiply-adds per 299x299 image
assert all_m > 1.4 * 5.7e9                         # > 40% more than Inception V3's ~5.7 G (published figure)
print(f"multiply-adds per trainable parameter: Xception {all_m / trainable:.0f}, "
      f"Inception V3 ~{5.7e9 / 23_626_728:.0f} (from its published ~5.7 G)")
assert 350 < all_m / trainable < 380

# %% [markdown]
r"""
The depthwise convolutions hold under 1% of the weights and do under 2% of the multiply-adds
(about 8.4 G in all per $299\times299$ image); the $1\times1$ pointwise convolutions hold 85% and do
over 90%. Xception's spatial filtering is almost free — and, as chapter 4 measured, the
depthwise half is nonetheless a large share of the *time*, because it is memory-bound.

**Parameters are not compute.** Xception has about as many parameters as Inception V3 (3% fewer)
but is *not* cheaper to run: about 8.4 G multiply-adds per image against about 5.7 G usually
reported for Inception V3 at $299\times299$ — some 45% more arithmetic. How many multiply-adds a
weight costs depends on the map it is used at: 361 per image at $19\times19$, 21,609 at $147\times147$;
on average Xception's weights are used at larger maps (about 370 multiply-adds per parameter,
against about 240 for Inception V3). More arithmetic is the plain reason to expect a slower step —
it trained at 28 steps per second against Inception V3's 31 (Table 3, Section 4.5.2 "Size and
speed") — and the memory-bound depthwise layers of chapter 4 may add to it.

## 4. Feature-map shapes through the network

The spatial size halves at the stem's stride-2 convolution and at each of the four max pools,
while the width grows from 32 to 2048:
"""

# %%
names = [r[0] for r in records if len(r[3]) == 4]
hs = [r[3][1] for r in records if len(r[3]) == 4]
cs = [r[3][3] for r in records if len(r[3]) == 4]
fig, ax1 = plt.subplots(figsize=(13, 4))
ax1.step(range(len(hs)), hs, where="post", color="tab:blue", label="height = width")
ax1.set_ylabel("feature-map height = width (pixels)", color="tab:blue"); ax1.set_yscale("log")
ax2 = ax1.twinx()
ax2.step(range(len(cs)), cs, where="post", color="tab:orange", label="channels")
ax2.set_ylabel("channels", color="tab:orange"); ax2.set_yscale("log")
ticks = [i for i, n in enumerate(names) if n.endswith(("conv1", "sepconv1"))]
ax1.set_xticks(ticks); ax1.set_xticklabels([names[i].split("_")[0] for i in ticks], rotation=60)
ax1.set_xlabel("layer (ticks: first convolution of each module)")
ax1.set_title("Xception at 299x299x3: spatial size and width, layer by layer"); plt.tight_layout(); plt.show()

shape_of = {r[0]: r[3] for r in records}
for name in ("block1_conv1", "block1_conv2", "block2_pool", "block3_pool", "block4_pool", "block12_sepconv3_bn",
             "block13_pool", "block14_sepconv2_act", "predictions"):
    print(f"{name:22s} {shape_of[name]}")
assert shape_of["block1_conv1"] == (1, 149, 149, 32) and shape_of["block1_conv2"] == (1, 147, 147, 64)
assert [shape_of[f"block{b}_pool"][1] for b in (2, 3, 4, 13)] == [74, 37, 19, 10]
assert shape_of["block14_sepconv2_act"] == (1, 10, 10, 2048) and out_shape == (1, 1000)

# %% [markdown]
r"""
## 5. How the paper trained it, and what it found

Section 4 of the paper ("Experimental evaluation") compares Xception with Inception V3 on two
datasets (4.1: JFT, Google's internal 350-million-image, 17,000-class dataset, evaluated on the
FastEval14k set with MAP@100; and ImageNet). The parts of the story a reader should not miss:

* **The training settings were Inception V3's.** Section 4.2 ("Optimization configuration"):
  ImageNet — SGD, momentum 0.9, learning rate 0.045 decayed by 0.94 every 2 epochs; JFT — RMSprop,
  momentum 0.9, learning rate 0.001 decayed by 0.9 every 3 million samples. The paper says these
  were tuned for Inception V3 and *not* re-tuned for Xception — the comparison, if anything, favours
  the baseline.
* **Regularisation** (Section 4.3): L2 weight decay $10^{-5}$ for Xception (Inception V3's $4\cdot10^{-5}$,
  tuned for it, was found quite suboptimal for Xception); **dropout 0.5** before the classifier on ImageNet (none on JFT, whose
  size makes overfitting unlikely); no auxiliary classifier tower.
* **Polyak averaging at inference**: the weights evaluated are an exponential moving average
  of the trained weights, not the last iterate.
* **Training infrastructure** (Section 4.4): 60 NVIDIA K80 GPUs — the setting in which Table 3
  measured the steps per second.
* **JFT is the headline result** (Table 2, FastEval14k MAP@100, higher is better):

| | without FC layers | with FC layers |
|---|---:|---:|
| Inception V3 | 6.36 | 6.50 |
| Xception | **6.70** | **6.78** |

  Here "FC layers" are the optional fully-connected layers before the classifier of Figure 5.
  On JFT Xception's relative gain (about 5% without FC layers, 4% with, computed below) is several
  times its ImageNet gain (Table 1: 0.790 vs 0.782 top-1, 1%). The paper's reading: Inception V3 was developed
  against ImageNet, so its design may be "over-fit" to that dataset, while Xception was not tuned
  for either.

In this package, dropout before the classifier is one argument, and it adds no parameter:
"""

# %%
with_dropout = mx.models.Xception(dropout=0.5, rng=0)
head = [(n, type(l).__name__) for n, l in with_dropout.leaf_layers()][-3:]
print("the head with dropout:", head)
assert head == [("avg_pool", "GlobalAvgPool2D"), ("dropout", "Dropout"), ("predictions", "Dense")]
assert mx.count_params(with_dropout) == trainable

jft = {"Inception V3": (6.36, 6.50), "Xception": (6.70, 6.78)}             # Table 2, MAP@100
imagenet_top1 = {"Inception V3": 0.782, "Xception": 0.790}                 # Table 1
gain_no_fc = jft["Xception"][0] / jft["Inception V3"][0] - 1
gain_fc = jft["Xception"][1] / jft["Inception V3"][1] - 1
gain_imagenet = imagenet_top1["Xception"] / imagenet_top1["Inception V3"] - 1
print(f"JFT relative gain: {gain_no_fc:.1%} without FC layers, {gain_fc:.1%} with; ImageNet top-1: {gain_imagenet:.1%}")
assert gain_no_fc > gain_fc > 3 * gain_imagenet

# %% [markdown]
r"""
### Xception beside Inception V3, built from the same layers

`mx.models.InceptionV3` is Keras's Inception V3 built from this package's layers (the tests check
its logits against Keras's own model on the same weights), so the two networks can be set side by
side on this machine: parameters, multiply-adds counted layer by layer, and the measured time of a
forward pass and of a training step (`minixception.compare.compare`, also
`python -m minixception compare`). Keras's Inception V3 has 23,817,352 parameters, not the paper's
23,626,728; where the 190,624 difference comes from is not known (see the model's docstring). The
fully connected layers of the paper's JFT models ("with FC layers", `fc_layers=(4096, 4096)`) add
the same count to either network.
"""

# %%
size = 75 if FAST else 299                  # 75x75: Inception V3's smallest input, for the quick run
side = mx.compare.compare(input_size=size, batch_size=2, repeats=1, timing=True)   # batch norm needs 2
x_row, v_row = side["Xception"], side["Inception V3"]
assert x_row["params"] == 22_855_952 and v_row["params"] == 23_817_352
assert x_row["fc_params"] == v_row["fc_params"] == 27_222_016
if not FAST:
    assert 5.6e9 < v_row["mult_adds"] < 5.8e9                 # Inception V3: about 5.7 G per 299x299 image
    assert x_row["mult_adds"] > 1.4 * v_row["mult_adds"]      # Xception: over 40% more arithmetic
print(f"this run: Xception's training step took {x_row['train_step_s'] / v_row['train_step_s']:.1f}x "
      f"Inception V3's, for {x_row['mult_adds'] / v_row['mult_adds']:.2f}x the multiply-adds")

# %% [markdown]
r"""
The counts confirm the paper's point from the other side: about as many parameters (Xception 4%
fewer than Keras's Inception V3), but some 46% more multiply-adds per image. The measured times
above are one batch of two images on this machine's CPU, with the package's own kernels; they show
what this run showed, not what a GPU does (the paper's 60 K80s ran Xception at 28 steps per second
against Inception V3's 31).

## 6. Classifying a photograph with Keras's ImageNet weights

`mx.models.Xception(weights="imagenet")` loads Keras's pretrained weight file into our NumPy
model — matched layer by layer in Keras's order, every shape checked — and then the whole
forward pass runs in pure NumPy. The file (88 MB) is downloaded once and cached; this cell uses
it only if it is already cached (ours, or Keras's `~/.keras/models`) or can be downloaded. On a
machine without network access it says so and moves on.

Preprocessing is Keras's: the RGB image resized to $299\times299$ and scaled to $[-1, 1]$ by $x/127.5 - 1$.
"""

# %%
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photo = plt.imread(f)                                       # (600, 512, 3) uint8
from PIL import Image                                           # installed with matplotlib
side = min(photo.shape[:2])
top = (photo.shape[0] - side) // 2
square = photo[top:top + side, :side]                            # centre crop to a square
x299 = np.asarray(Image.fromarray(square).resize((299, 299), Image.BILINEAR))
x_in = keras_weights.preprocess_input(x299[None])                # (1, 299, 299, 3) float32 in [-1, 1]
assert x_in.shape == (1, 299, 299, 3) and x_in.min() >= -1 and x_in.max() <= 1


def find_weights():
    """A path to the ImageNet weight file, or None with the reason printed."""
    keras_copy = Path.home() / ".keras" / "models" / keras_weights.FILENAMES[True]
    if keras_copy.exists():
        return keras_copy
    try:
        return keras_weights.get_imagenet_weights(include_top=True)   # cached, or downloaded now
    except Exception as e:                                        # offline, or a bad checksum
        print("ImageNet weights unavailable, skipping the classification:")
        print("   ", str(e).split(". ")[0] + ".")
        return None


def classify(model, x):
    """Top-5 ImageNet classes of one preprocessed image, in eval mode without caches."""
    model.eval()
    with nn.inference_mode():
        logits = model(x)
    return keras_weights.decode_predictions(logits, top=5)[0]


weights_path = find_weights()
if weights_path is not None:
    pretrained = mx.models.Xception()
    keras_weights.load_keras_weights(pretrained, weights_path)
    top5 = classify(pretrained, x_in)
    for wnid, label, p in top5:
        print(f"{label:25s} {p:6.1%}")
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    a0.imshow(x299); a0.set_xlabel("column (pixels)"); a0.set_ylabel("row (pixels)"); a0.set_title("input, 299x299")
    a1.barh([t[1] for t in top5][::-1], [t[2] for t in top5][::-1]); a1.set_xlabel("probability")
    a1.set_title("Xception (Keras's ImageNet weights), NumPy forward pass"); plt.tight_layout(); plt.show()
else:
    # the same code path with the random weights: it runs, but its guesses mean nothing
    top5 = classify(model, x_in)
    print("with random weights the top-5 is noise:", [t[1] for t in top5])
assert len(top5) == 5 and all(0 <= t[2] <= 1 for t in top5)

# %% [markdown]
r"""
## Summary

* `mx.models.Xception` is Keras's Xception: 36 convolution layers in 14 modules (12 with
  residual connections), 4 shortcut $1\times1$ convolutions, 22,855,952 trainable parameters —
  the paper's Table 3 figure exactly, 3% fewer than Inception V3's 23,626,728.
* About 85% of the weights and 90% of the multiply-adds are in the pointwise convolutions; the
  depthwise ones are under 1% and 2%.
* Spatial size $299 \to 149 \to 147 \to 74 \to 37 \to 19 \to 10 \to 1$, width $3 \to 2048$.
* About as many parameters as Inception V3, but about 8.4 G multiply-adds per image against ~5.7 G:
  not cheaper to run.
* Trained with Inception V3's (untuned) optimisation settings, weight decay $10^{-5}$, dropout 0.5
  on ImageNet, Polyak-averaged weights at inference; its largest gain is on JFT (Table 2:
  6.70 vs 6.36 MAP@100, 6.78 vs 6.50 with FC layers).

## Exercises

1. Count the parameters of the middle flow alone and compare them with the entry and exit flows.
   How many middle-flow modules could you add before the model has Inception V3's size?
   (`mx.models.Xception(middle_blocks=...)`.)
   <details><summary>Hint</summary>A middle module is three separable 728 -> 728 convolutions with
   batch norm: 3 * (9*728 + 728*728 + 2*728) parameters.</details>
2. Keras refuses inputs smaller than $71\times71$. Using chapter 1's arithmetic (only the stem's
   `"valid"` convolutions can fail; the pools use `"same"`), find the smallest input *our* model
   accepts and the shape of its last feature map at $71\times71$. Check with `mx.summary`.
   <details><summary>Hint</summary>3x3 stride 2 valid: (n - 3) // 2 + 1; then 3x3 valid: minus 2.
   Both must be at least 1.</details>
3. Replace every separable convolution by a regular $3\times3$ convolution with the same input and
   output widths. How many parameters and multiply-adds would the model have?
   <details><summary>Hint</summary>Per layer: 9 C F weights instead of 9 C + C F, used H W times.
   The per-module records of section 3 have C, F and the map size.</details>

## Solutions
"""

# %%
# 1. the middle flow, and how many more modules fit into Inception V3's budget
per_module = 3 * (9 * 728 + 728 * 728 + 2 * 728)
middle = sum(per_block[f"block{b}"][k][0] for b in range(5, 13) for k in ("depthwise", "pointwise")) \
    + sum(2 * l.channels for n, l in leaves if isinstance(l, nn.BatchNorm2D) and 5 <= int(n.split("_")[0][5:] or 0) <= 12)
extra_modules = (23_626_728 - trainable) // per_module
print(f"middle flow: {middle:,} parameters ({middle / trainable:.0%}); one module {per_module:,}; "
      f"{extra_modules} more would still fit under Inception V3's 23,626,728")
assert middle == 8 * per_module
assert mx.count_params(mx.models.Xception(middle_blocks=8 + extra_modules, include_top=True, rng=0)) < 23_626_728 \
    < mx.count_params(mx.models.Xception(middle_blocks=9 + extra_modules, include_top=True, rng=0))

# %%
# 2. smallest input: (n - 3) // 2 + 1 - 2 >= 1  =>  n >= 7; at 71x71 the last map is 3x3x2048
def stem_out(n):
    return (n - 3) // 2 + 1 - 2
smallest = min(n for n in range(3, 100) if stem_out(n) >= 1)
recs71, _ = trace_shapes(mx.models.Xception(include_top=False, input_shape=(71, 71, 3), rng=0), (71, 71, 3))
print("smallest accepted input:", smallest, "| last feature map at 71x71:", recs71[-1][3])
assert smallest == 7 and recs71[-1][3] == (1, 3, 3, 2048)
_ = trace_shapes(mx.models.Xception(include_top=False, input_shape=(7, 7, 3), rng=0), (7, 7, 3))
try:
    trace_shapes(mx.models.Xception(include_top=False, input_shape=(6, 6, 3), rng=0), (6, 6, 3)); ok6 = True
except ValueError:
    ok6 = False
assert not ok6

# %%
# 3. regular 3x3 convolutions in place of the separable ones
reg_p = reg_m = 0
for name, layer, sin, sout in records:
    if isinstance(layer, nn.SeparableConv2D):
        w9 = 9 * layer.in_channels * layer.out_channels
        reg_p += w9 - (9 * layer.in_channels + layer.in_channels * layer.out_channels)
        reg_m += sout[1] * sout[2] * (w9 - 9 * layer.in_channels - layer.in_channels * layer.out_channels)
print(f"with regular 3x3 convolutions: {(trainable + reg_p) / 1e6:.0f} M parameters, "
      f"{(all_m + reg_m) / 1e9:.0f} G multiply-adds per image")
assert 7 < (trainable + reg_p) / trainable < 9
