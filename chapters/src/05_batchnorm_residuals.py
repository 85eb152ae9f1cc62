# %% [markdown]
r"""
# Chapter 5 — Batch norm and residual connections

A separable convolution alone does not make Xception trainable at 36 layers. Two more pieces
do: **batch normalisation** after every convolution, and **residual connections** around every
block but the first and the last. This chapter derives batch norm's backward pass (the least
obvious one in the network), checks it numerically, and then watches gradients travel down a
deep stack of separable convolutions with and without residual connections.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import functional as F
from minixception import nn

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
print("mode:", "fast" if FAST else "full")
rng = np.random.default_rng(0)
plt.rcParams.update({"figure.dpi": 72})

# %% [markdown]
r"""
## 1. Batch norm, forward

For each channel $c$, over the $M = N H W$ values $x_1 \dots x_M$ of that channel in the batch
(NHWC: a column of the $(NHW)\times C$ matrix):

$$ \mu = \frac{1}{M}\sum_m x_m,\qquad \sigma^2 = \frac{1}{M}\sum_m (x_m-\mu)^2,\qquad
   \hat x_m = \frac{x_m-\mu}{\sqrt{\sigma^2+\epsilon}},\qquad y_m = \gamma\,\hat x_m + \beta . $$

Keras's defaults, which Xception uses: $\epsilon = 10^{-3}$, the *biased* variance, and moving
statistics updated as $\text{moving} \leftarrow 0.99\cdot\text{moving} + 0.01\cdot\text{batch statistic}$.
Training uses the batch statistics; evaluation uses the moving ones, so a trained network's
output on one image does not depend on the rest of the batch.
"""

# %%
bn = nn.BatchNorm2D(4)
x = (3.0 + 2.0 * rng.standard_normal((8, 5, 5, 4))).astype(np.float32)
y = bn(x)                                             # training mode: batch statistics
per_channel = y.reshape(-1, 4)
print("after BN, per-channel mean:", np.round(per_channel.mean(0), 6), " variance:", np.round(per_channel.var(0), 4))
assert np.allclose(per_channel.mean(0), 0, atol=1e-5)
assert np.allclose(per_channel.var(0), x.reshape(-1, 4).var(0) / (x.reshape(-1, 4).var(0) + 1e-3), atol=1e-4)
assert (bn.eps, bn.momentum) == (1e-3, 0.99)
# one training step moved the moving mean 1% of the way from 0 towards the batch mean
assert np.allclose(bn.moving_mean, 0.01 * x.reshape(-1, 4).mean(0), rtol=1e-5)

# %% [markdown]
r"""
The package's `batchnorm_forward`, with the four formulas marked. The input is viewed as the
$(NHW)\times C$ matrix, so every statistic is a reduction over axis 0, one value per channel.
"""

# %%
bn_fwd = mx.diagrams.show_source(F.batchnorm_forward, {
    r"mean\s*=|mu\s*=.*(sum|mean)": "mu = (1/M) sum x",
    r"var\s*=": "sigma^2 = (1/M) sum (x - mu)^2  (biased)",
    r"inv_std\s*=|rstd\s*=": "s = 1 / sqrt(sigma^2 + eps)",
    r"moving_mean\s*\+=|moving_mean\s*=": "moving <- 0.99 moving + 0.01 batch statistic",
    r"gamma\s*\*|\*\s*gamma": "y = gamma xhat + beta",
})

# %% [markdown]
r"""
The moving statistics follow an exponential moving average: after $t$ batches from a fixed
distribution the moving mean has covered $1 - 0.99^t$ of the way to the true mean — 63% after
100 steps, 99% after 460. A freshly trained small model evaluated too early is therefore
normalised with statistics that are still wrong: one reason evaluation accuracy lags training
accuracy in the first epochs (chapter 7).
"""

# %%
bn = nn.BatchNorm2D(1)
steps = 300 if FAST else 600
history = []
for t in range(steps):
    bn(5.0 + rng.standard_normal((16, 4, 4, 1)).astype(np.float32))
    history.append(float(bn.moving_mean[0]))
t = np.arange(1, steps + 1)
fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(t, history, label="moving_mean (measured)")
ax.plot(t, 5.0 * (1 - 0.99 ** t), "--", label=r"$5\,(1-0.99^t)$")
ax.axhline(5.0, color="gray", ls=":", label="true mean 5")
ax.set_xlabel("training step t"); ax.set_ylabel("moving mean"); ax.legend(); plt.show()
assert abs(history[99] - 5.0 * (1 - 0.99 ** 100)) < 0.1

# %% [markdown]
r"""
## 2. Batch norm, backward

Let $\delta_m = \partial L/\partial y_m$. The parameters are easy:

$$ \frac{\partial L}{\partial \beta} = \sum_m \delta_m, \qquad \frac{\partial L}{\partial \gamma} = \sum_m \delta_m \hat x_m . $$

The input is harder, because every $x_m$ also moves $\mu$ and $\sigma^2$ and therefore every
$\hat x_{m'}$. Write $s = 1/\sqrt{\sigma^2+\epsilon}$ and $g_m = \gamma\delta_m = \partial L/\partial \hat x_m$. With
$\partial\mu/\partial x_m = 1/M$ and $\partial\sigma^2/\partial x_m = 2(x_m-\mu)/M$,

$$ \frac{\partial \hat x_{m'}}{\partial x_m} = s\Big(\mathbb 1[m=m'] - \frac1M\Big) - \frac{s}{M}\,\hat x_{m'}\hat x_m , $$

and summing $g_{m'}$ times that over $m'$:

$$ \boxed{\;\frac{\partial L}{\partial x_m} = \gamma s\Big(\delta_m - \frac1M\sum_{m'}\delta_{m'}
   - \hat x_m\,\frac1M\sum_{m'}\delta_{m'}\hat x_{m'}\Big)
   = \frac{\gamma s}{M}\Big(M\delta_m - \frac{\partial L}{\partial\beta} - \hat x_m\frac{\partial L}{\partial\gamma}\Big)\;} $$

Read geometrically: the upstream gradient is *projected* onto the subspace orthogonal to the
constant vector $\mathbf 1$ and to $\hat x$ — the two directions in which a change of $x$ is
undone by the normalisation (shifting all values, scaling them). Two consequences we check
below: an upstream gradient that is constant per channel, or proportional to $\hat x$, gives
$\partial L/\partial x = 0$ (exactly for the constant; for $\hat x$ exactly when $\epsilon = 0$ — with
$\epsilon > 0$ a fraction $\epsilon/(\sigma^2+\epsilon)$ leaks through). That is why gradient checks must use a *random* $\delta$:
with $\delta$ all ones, any backward pass that returns zeros would "pass".

In evaluation mode $\mu$ and $\sigma^2$ are constants and the backward pass is just
$\gamma s\,\delta$.
"""

# %%
x = rng.standard_normal((4, 3, 3, 5)) * 2 + 1
gamma, beta = rng.standard_normal(5), rng.standard_normal(5)

def bn_train(x, gamma, beta):
    return F.batchnorm_forward(x, gamma, beta, np.zeros(5), np.ones(5), training=True)

def bn_eval(x, gamma, beta):
    return F.batchnorm_forward(x, gamma, beta, np.full(5, 0.5), np.full(5, 2.0), training=False)

err_train = mx.gradcheck.check_function(bn_train, F.batchnorm_backward, [x, gamma, beta], seed=3)
err_eval = mx.gradcheck.check_function(bn_eval, F.batchnorm_backward, [x, gamma, beta], seed=3)
layer = nn.BatchNorm2D(5, dtype="float64")
err_layer = mx.gradcheck.check_layer(layer, x, seed=4)
print("training mode  dx, dgamma, dbeta:", ["%.1e" % e for e in err_train])
print("eval mode      dx, dgamma, dbeta:", ["%.1e" % e for e in err_eval])
print("BatchNorm2D layer:", {k: "%.1e" % v for k, v in err_layer.items()})
assert max(err_train + err_eval + list(err_layer.values())) < 1e-7

# the two blind directions: a per-channel constant and xhat itself. (Exactly blind for eps = 0;
# with eps > 0, sum(xhat^2) = M var / (var + eps) < M and the xhat direction leaks a factor eps / (var + eps).)
y, cache = F.batchnorm_forward(x, gamma, beta, np.zeros(5), np.ones(5), training=True, eps=0.0)
xhat = (y - beta) / gamma
for name, dy in [("dy = ones", np.ones_like(y)), ("dy = per-channel constant", np.ones_like(y) * rng.standard_normal(5)),
                 ("dy = xhat", xhat.copy()), ("dy = random", rng.standard_normal(y.shape))]:
    dx, _, _ = F.batchnorm_backward(dy, cache)
    print(f"{name:26s} -> max |dx| = {np.abs(dx).max():.1e}")
    assert (np.abs(dx).max() < 1e-12) == (name != "dy = random")

# %% [markdown]
r"""
The boxed formula is what `batchnorm_backward` computes — $\partial L/\partial\beta$ and
$\partial L/\partial\gamma$ first, then the projection, in training mode; $\gamma s\,\delta$ in evaluation mode:
"""

# %%
bn_bwd = mx.diagrams.show_source(F.batchnorm_backward, {
    r"^\s*(dbeta|db)\b[^=]*=": "dL/dbeta = sum delta",
    r"^\s*(dgamma|dg)\s*=": "dL/dgamma = sum delta xhat",
    r"/\s*m\b|\bm\s*\*|1\.0\s*/\s*m|inv_m": "(gamma s / M)(M delta - dL/dbeta - xhat dL/dgamma)",
})

# %% [markdown]
r"""
## 3. Gradients through a deep stack

A stack of $L$ blocks $x_{l+1} = f_l(x_l)$ passes gradients back by the chain rule,

$$ \frac{\partial L}{\partial x_l} = J_l^\top J_{l+1}^\top \cdots J_{L-1}^\top \frac{\partial L}{\partial x_L},
\qquad J_l = \frac{\partial f_l}{\partial x_l}, $$

a product of $L$ matrices whose norm can shrink or grow geometrically with depth. A residual
block $x_{l+1} = x_l + f_l(x_l)$ changes every factor to $I + J_l$:

$$ \frac{\partial L}{\partial x_l} = (I + J_l)^\top \cdots (I+J_{L-1})^\top \frac{\partial L}{\partial x_L}
 = \frac{\partial L}{\partial x_L} + \text{(terms through the blocks)} , $$

so the gradient at the output always reaches every layer directly, whatever the blocks do. In
`mx.nn.Residual` this is one line of `backward`: the main path's input gradient plus the
shortcut's (the identity passes $\delta$ through unchanged):

We build Xception's middle-flow block in small — ReLU, separable $3\times3$, batch norm — stack it,
and compare four variants at initialisation: plain, with batch norm, residual, residual with
batch norm (what Xception does). For each we feed a batch forward, send a random gradient back
from the top, and record the gradient norm at every block's input and at every block's
separable kernels.
"""

# %%
res_src = mx.diagrams.show_source(nn.Residual.backward, {
    r"shortcut\.backward|else dy": "identity shortcut: dL/dx gets delta unchanged",
    r"return .*\+": "(I + J)^T delta = delta + J^T delta"})

# %%
depth = 16 if FAST else 36
C, hw, batch = (16, 8, 8) if FAST else (32, 12, 16)

def make_stack(residual, batchnorm, seed=0):
    r = np.random.default_rng(seed)
    blocks = []
    for i in range(depth):
        layers = [nn.ReLU(), nn.SeparableConv2D(C, C, rng=r)]
        if batchnorm:
            layers.append(nn.BatchNorm2D(C))
        body = nn.Sequential(*layers)
        blocks.append(nn.Residual(body) if residual else body)
    return blocks

def gradient_profile(blocks, seed=1):
    r = np.random.default_rng(seed)
    h = r.standard_normal((batch, hw, hw, C)).astype(np.float32)
    for b in blocks:
        h = b(h)
    dy = r.standard_normal(h.shape).astype(np.float32)
    act_norms = []
    for b in reversed(blocks):
        dy = b.backward(dy)
        act_norms.append(float(np.linalg.norm(dy)))
    kern_norms = [float(np.sqrt(sum((p.grad.astype(np.float64) ** 2).sum() for n, p in b.named_parameters()
                                    if "kernel" in n))) for b in blocks]
    return np.array(act_norms[::-1]), np.array(kern_norms), float(np.abs(h).mean())

variants = {"plain": (False, False), "batch norm": (False, True),
            "residual": (True, False), "residual + batch norm (Xception)": (True, True)}
profiles = {}
for name, (res, bnorm) in variants.items():
    profiles[name] = gradient_profile(make_stack(res, bnorm))
    a, k, out = profiles[name]
    print(f"{name:34s} |dL/dx| at block 1 / at block {depth}: {a[0] / a[-1]:9.2e}   mean |output| {out:9.3g}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.3))
for name, (a, k, _) in profiles.items():
    a, k = np.where(a > 0, a, np.nan), np.where(k > 0, k, np.nan)    # an underflowed 0 has no log
    axes[0].semilogy(np.arange(1, depth + 1), a, "o-", ms=3, label=name)
    axes[1].semilogy(np.arange(1, depth + 1), k, "o-", ms=3, label=name)
axes[0].set_xlabel("block (1 = input side)"); axes[0].set_ylabel(r"$\|\partial L/\partial x_l\|$ at the block's input")
axes[1].set_xlabel("block (1 = input side)"); axes[1].set_ylabel("norm of the block's kernel gradients")
axes[0].set_title("gradient reaching each block"); axes[1].set_title("gradient each block's weights receive")
axes[0].legend(fontsize=9); plt.tight_layout(); plt.show()

# %% [markdown]
r"""
What the figure shows, at initialisation:

* **plain**: the forward signal *and* the gradient shrink by a roughly constant factor per block
  — the straight line on the log scale. In the full-mode run the gradient underflows float32 to
  exactly zero before it reaches the first blocks (missing points), and every plain block's
  weights get a vanishing gradient (right panel). *Depth* multiplies the factor, but the factor
  itself comes mostly from the **initialisation** — the next section measures it.
* **batch norm** fixes the scale of the *forward* signal but not the product of Jacobians: here the
  gradient *grows* geometrically towards the input instead (exploding, by a factor of hundreds
  over 36 blocks).
* **residual**: the identity path carries the top gradient to every block undiminished; the
  blocks' own paths add a little on the way.
* **residual + batch norm** (Xception): the gradient grows only slowly with depth (about an order
  of magnitude over 36 blocks, against hundreds without the shortcuts), and every block's weights
  receive a gradient of comparable size.

Chapter 8 trains the with/without-residual pair.
"""

# %%
ratio = {name: a[0] / a[-1] for name, (a, _, _) in profiles.items()}
# residual connections keep the first block's gradient at least as large as the last block's
assert ratio["residual"] >= 0.99 and ratio["residual + batch norm (Xception)"] >= 0.99
# without them the gradient at the bottom is far weaker than with them
assert ratio["plain"] < 0.1 * ratio["residual"]
# batch norm alone lets the gradient grow with depth; the shortcuts tame it
assert ratio["residual + batch norm (Xception)"] < ratio["batch norm"]
# and the residual identity is exact: dx = main.backward(dy) + dy
blk = nn.Residual(nn.Sequential(nn.ReLU(), nn.SeparableConv2D(4, 4, dtype="float64", rng=0)))
xs = rng.standard_normal((2, 5, 5, 4)); ys = blk(xs); g = rng.standard_normal(ys.shape)
dx = blk.backward(g)
main = blk.main; main(xs); assert np.allclose(dx, main.backward(g) + g)
assert max(mx.gradcheck.check_layer(blk, xs).values()) < 1e-7

# %% [markdown]
r"""
## 4. Is it depth, or the initialisation?

The plain stack's collapse is not depth alone. Keras's default initialiser, which `minixception`
copies so that Keras weights and our fresh models agree, is Glorot uniform with fan-in and fan-out
computed from the kernel's shape: for a depthwise kernel `(3, 3, C, 1)` that is
$\text{fan}_\text{in} = 9C$, $\text{fan}_\text{out} = 9$, a weight variance of $2/(9C + 9)$. But a
depthwise output sums only **9** products, not $9C$. For an input of second moment $q$:

* the ReLU keeps half of it: $q/2$ (a symmetric input);
* the depthwise conv multiplies it by $9 \cdot \frac{2}{9(C+1)} = \frac{2}{C+1}$ — the culprit;
* the pointwise conv (`(1, 1, C, C)`, variance $2/(2C)$, a sum of $C$ products) keeps it: $\times 1$.

So each plain block scales the signal's second moment by about $\frac{1}{C+1}$ — $1/33$ at $C=32$ —
and 36 blocks by $33^{-36} \approx 10^{-55}$. An initialisation that counts the depthwise fan-in as
what it is (9 taps; He's variance $2/9$ for the ReLU in front) and the pointwise one as $C$
(variance $1/C$) makes the per-block factor about 1. We measure the factor, and rerun the plain
stack with that initialisation:
"""

# %%
def reinit_fan_in(blocks, seed=5):
    """Depthwise: N(0, 2/9) (He, fan-in = the 9 taps); pointwise: N(0, 1/C) (fan-in C)."""
    r = np.random.default_rng(seed)
    for b in blocks:
        for m in b.modules():
            if isinstance(m, nn.SeparableConv2D):
                d, p = m.depthwise_kernel.data, m.pointwise_kernel.data
                d[...] = r.standard_normal(d.shape) * np.sqrt(2 / 9)
                p[...] = r.standard_normal(p.shape) * np.sqrt(1 / p.shape[2])
    return blocks

def signal_powers(blocks, seed=1):
    """Second moment of the signal at the input and after every block (float64 sums)."""
    h = np.random.default_rng(seed).standard_normal((batch, hw, hw, C)).astype(np.float32)
    q = [float(np.mean(h.astype(np.float64) ** 2))]
    with nn.inference_mode():
        for b in blocks:
            h = b(h)
            q.append(float(np.mean(h.astype(np.float64) ** 2)))
    return np.array(q)

q_keras = signal_powers(make_stack(False, False))
q_fanin = signal_powers(reinit_fan_in(make_stack(False, False)))
ok = q_keras[1:] > 0                                   # before float32 underflows to zero
factor_keras = np.exp(np.mean(np.log(q_keras[1:][ok] / q_keras[:-1][ok])))
factor_fanin = np.exp(np.mean(np.log(q_fanin[1:] / q_fanin[:-1])))
a_fanin, _, _ = gradient_profile(reinit_fan_in(make_stack(False, False)))
print(f"per-block factor of the signal's second moment, Keras (Glorot) init: {factor_keras:.4f} "
      f"(predicted 1/(C+1) = {1 / (C + 1):.4f})")
print(f"per-block factor with the fan-in init:                              {factor_fanin:.3f} (predicted ~1)")
print(f"plain stack, gradient at block 1 / at block {depth}: Keras init {profiles['plain'][0][0] / profiles['plain'][0][-1]:.1e}, "
      f"fan-in init {a_fanin[0] / a_fanin[-1]:.1e}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
axes[0].semilogy(np.arange(depth + 1), np.where(q_keras > 0, q_keras, np.nan), "o-", ms=3, label="Keras init (depthwise fan-in 9C)")
axes[0].semilogy(np.arange(depth + 1), q_fanin, "o-", ms=3, label="fan-in init (depthwise fan-in 9)")
axes[0].semilogy(np.arange(depth + 1), (1 / (C + 1)) ** np.arange(depth + 1), "k:", label=r"predicted $(C+1)^{-l}$")
axes[0].set_xlabel("block l"); axes[0].set_ylabel("second moment of the signal after block l")
axes[0].set_title("plain stack, forward signal"); axes[0].legend(fontsize=9)
a_keras = profiles["plain"][0]
axes[1].semilogy(np.arange(1, depth + 1), np.where(a_keras > 0, a_keras, np.nan), "o-", ms=3, label="Keras init")
axes[1].semilogy(np.arange(1, depth + 1), a_fanin, "o-", ms=3, label="fan-in init")
axes[1].set_xlabel("block (1 = input side)"); axes[1].set_ylabel(r"$\|\partial L/\partial x_l\|$")
axes[1].set_title("plain stack, gradient reaching each block"); axes[1].legend(fontsize=9)
plt.tight_layout(); plt.show()

# the claims, in this run
assert 0.5 / (C + 1) < factor_keras < 2 / (C + 1)                    # the init's factor, as derived
assert 0.5 < factor_fanin < 2                                         # the fan-in init keeps the scale
assert a_fanin[0] / a_fanin[-1] > 1e-3 > 1e6 * profiles["plain"][0][0] / profiles["plain"][0][-1]

# %% [markdown]
r"""
With the fan-in initialisation the plain stack's signal and gradient no longer collapse: they
wander up and down by a block's random factor, a random walk in $\log$ that depth still widens
(the first block's gradient is within a couple of orders of magnitude of the last's instead of
zero). So: the initialisation makes most of the vanishing, depth turns what is left into drift.
Batch norm and residual connections each remove the dependence on the initialisation in their
own way — batch norm by rescaling the forward signal, the shortcut by giving the gradient a path
that is not a product — which is why Xception, with Keras's initialisation, still trains.

## Summary

* Batch norm's input gradient is the upstream gradient projected away from the constant and
  $\hat x$ directions, scaled by $\gamma/\sqrt{\sigma^2+\epsilon}$: checked to $\sim10^{-10}$, and its two blind
  directions shown to give exactly zero.
* Moving statistics are exponential averages with momentum 0.99: about 460 steps to settle.
* In a deep stack, residual connections turn a product of Jacobians into a product of
  $I + J$: the gradient reaches the first block at full strength.
* The plain stack's vanishing signal at initialisation comes mostly from the depthwise kernel's
  Glorot initialisation (fan-in $9C$ for a sum of 9 products: a factor $\approx 1/(C+1)$ per block);
  a fan-in-9 initialisation keeps the scale, and depth leaves a random drift.

## Exercises

1. Derive $\partial L/\partial x$ in evaluation mode. Then, in training mode: why does
   `BatchNorm2D` refuse an input of shape `(1, 1, 1, C)`, and what does it compute for a batch of
   *one* image of size $H\times W > 1$ — is its output constant per channel?
   <details><summary>Hint</summary>The statistics are over M = N*H*W values per channel. With M = 1,
   x - mu = 0 for every value. With one image, M = H*W.</details>
2. Replace the ReLU in `make_stack` by `nn.ELU()` and measure the plain stack's per-block factor
   with Keras's initialisation. Then scale the separable kernels by 2 after construction: what
   happens to the plain stack's factor, and to the residual one's gradient ratio?
   <details><summary>Hint</summary>Scaling both kernels by 2 scales each block's output by 4, its
   second moment by 16.</details>
3. Xception's entry-flow blocks use a *strided* $1\times1$ convolution + batch norm on the shortcut,
   not the identity. Write $\partial L/\partial x$ for such a block and say when the argument of
   section 3 still holds.
   <details><summary>Hint</summary>The shortcut's Jacobian is no longer I: it is S, the 1x1
   convolution followed by batch norm.</details>
4. **Write batch norm's backward pass yourself** from the boxed formula (training mode; the
   forward may be yours or `F.batchnorm_forward`, whose cache you would then have to read — easier:
   write a small forward that returns `(y, (xhat, gamma, inv_std))`) and check it with
   `mx.gradcheck.check_function` in float64.
   <details><summary>Hint</summary>With dy as an (M, C) matrix: dbeta = dy.sum(0),
   dgamma = (dy * xhat).sum(0), dx = gamma * inv_std / M * (M * dy - dbeta - xhat * dgamma).</details>

## Solutions
"""

# %%
# 1. eval mode: mu, sigma^2 are constants -> dL/dx = gamma * dy / sqrt(moving_var + eps).
#    Training mode with M = 1: x - mu = 0, the output is beta whatever x is (and the gradient 0):
#    refused. One image with H*W > 1: M = H*W, each channel normalised over the image's pixels --
#    not constant (only a 1x1 map would be).
bn1 = nn.BatchNorm2D(3)
try:
    bn1(np.ones((1, 1, 1, 3), np.float32)); refused = False
except ValueError as e:
    refused = True; print("refused:", e)
one_image = bn1(rng.standard_normal((1, 6, 6, 3)).astype(np.float32))
per_channel_std = one_image.reshape(-1, 3).std(0)
print("one 6x6 image in training mode, per-channel std of the output:", np.round(per_channel_std, 3))
assert refused and np.all(per_channel_std > 0.9)
bn_e = nn.BatchNorm2D(3, dtype="float64"); bn_e.eval()
xe = rng.standard_normal((2, 4, 4, 3)); bn_e(xe); ge = rng.standard_normal(xe.shape)
assert np.allclose(bn_e.backward(ge), ge * bn_e.gamma.data / np.sqrt(bn_e.moving_variance + bn_e.eps))

# %%
# 2. ELU instead of ReLU, and kernels x2 (Keras init, plain and residual)
def stack_with(act, scale, residual):
    r = np.random.default_rng(0); blocks = []
    for _ in range(depth):
        sep = nn.SeparableConv2D(C, C, rng=r)
        sep.depthwise_kernel.data *= scale; sep.pointwise_kernel.data *= scale
        body = nn.Sequential(act(), sep)
        blocks.append(nn.Residual(body) if residual else body)
    return blocks

for act, scale in [(nn.ReLU, 1), (nn.ELU, 1), (nn.ReLU, 2)]:
    q = signal_powers(stack_with(act, scale, False)[:4])
    a_res, _, _ = gradient_profile(stack_with(act, scale, True))
    print(f"{act.__name__} x{scale}: plain per-block factor {np.exp(np.mean(np.log(q[1:] / q[:-1]))):.3f}, "
          f"residual gradient ratio {a_res[0] / a_res[-1]:.2f}")
# ELU keeps a bit more than ReLU (negative inputs are not zeroed); x2 multiplies the factor by 16:
# still < 1 for the plain stack at this width, while the residual stack's gradient grows faster.

# %%
# 3. y = main(x) + S(x) with S = BN(conv1x1/2(x)): dL/dx = J_main^T delta + J_S^T delta. The direct
#    path is no longer the identity, but it is a single (linear, in eval mode) layer, not a product
#    of many: only 4 such shortcuts lie between the output and the input of Xception, so the
#    argument holds as long as those few S^T do not shrink delta much (batch norm rescales them).

# %%
# 4. batch norm backward from the boxed formula, gradient-checked
def my_bn_forward(x, gamma, beta, eps=1e-3):
    x2 = x.reshape(-1, x.shape[-1])
    mu, var = x2.mean(0), x2.var(0)
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (x2 - mu) * inv_std
    return (gamma * xhat + beta).reshape(x.shape), (xhat, gamma, inv_std, x.shape)

def my_bn_backward(dy, cache):
    xhat, gamma, inv_std, shape = cache
    dy2 = dy.reshape(xhat.shape); M = dy2.shape[0]
    dbeta, dgamma = dy2.sum(0), (dy2 * xhat).sum(0)
    dx = gamma * inv_std / M * (M * dy2 - dbeta - xhat * dgamma)
    return dx.reshape(shape), dgamma, dbeta

xb, gb, bb = rng.standard_normal((3, 4, 4, 5)) * 2 + 1, rng.standard_normal(5), rng.standard_normal(5)
errs = mx.gradcheck.check_function(my_bn_forward, my_bn_backward, [xb, gb, bb])
print("my batch norm backward vs central differences: dx %.1e, dgamma %.1e, dbeta %.1e" % tuple(errs))
assert max(errs) < 1e-7
