# %% [markdown]
r"""
# Chapter 10 — Many GPUs: synchronous data-parallel SGD

The paper trained each network on **60 NVIDIA K80 GPUs** with synchronous gradient descent, and its
Table 3 reports Xception at **28 steps per second** against Inception V3's 31. This chapter shows
what "synchronous data parallel" means, with the package's own implementation
(`minixception.distributed`, on MPI through mpi4py):

1. why K workers that each see $B/K$ images and average their gradients run *the same algorithm*
   as one worker with $B$ images — and why batch norm breaks that unless it is synchronised;
2. the allreduce that does the averaging: the ring algorithm drawn, simulated and costed, next to
   the package's calls, and measured on this machine;
3. the equivalence run live: `mpiexec -n 2` against one process, in float64;
4. the paper's 60 GPUs in numbers.
"""

# %%
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minixception as mx
from minixception import distributed as D
from minixception.losses import softmax_cross_entropy
from minixception.train import read_metrics

FAST = os.environ.get("MINIXCEPTION_FAST", "0") == "1"
try:
    import mpi4py  # noqa: F401
    MPIEXEC = shutil.which("mpiexec")
except ImportError:
    MPIEXEC = None
ROOT = Path(mx.__file__).resolve().parent.parent      # the package's tree, for the launched ranks
RECORDED = ROOT / "chapters" / "src" / "10_recorded_run.json"   # shown when MPI is missing
print("mode:", "fast" if FAST else "full", "| mpiexec:", MPIEXEC or "not available (recorded results shown)")
plt.rcParams.update({"figure.dpi": 72})

# %% [markdown]
r"""
## 1. K workers with $B/K$ images each = one worker with $B$ images

SGD's step uses the gradient of the mean loss over the batch. Split the batch into K slices
$S_1, \dots, S_K$ of sizes $B_r$ (rank $r$ holds $S_r$):

$$
g = \nabla \frac{1}{B}\sum_{i=1}^{B} \ell_i
  = \sum_{r=1}^{K} \frac{B_r}{B}\; \underbrace{\nabla \frac{1}{B_r} \sum_{i \in S_r} \ell_i}_{g_r\ \text{(rank } r\text{'s gradient)}}
  \;=\; \frac{1}{K}\sum_r g_r \quad (B_r = B/K).
$$

So if every rank starts from the same weights, computes $g_r$ on its slice, and the ranks
**sum** $\frac{B_r}{B} g_r$ (an *allreduce*), every rank holds the full-batch gradient $g$, takes
the same SGD step, and the copies never diverge. The identity needs one thing: that each image's
loss $\ell_i$ depends on that image only. A network without batch norm satisfies it; let us check
with a small float64 model whose batch norm layers are switched to eval mode (fixed statistics,
so each image is processed independently):
"""

# %%
rng = np.random.default_rng(0)
B, K = 16, 2
x = rng.standard_normal((B, 32, 32, 3))
y = rng.integers(0, 10, B)


def gradient(model, xs, ys, weight=1.0):
    """The parameters' gradient of weight * mean loss over (xs, ys), as a list of arrays."""
    model.zero_grad()
    _, dlogits = softmax_cross_entropy(model(xs), ys)
    model.backward(dlogits * weight)
    return [p.grad.copy() for p in model.parameters()]


def max_rel(gs, hs):
    return max(np.linalg.norm(g - h) / np.linalg.norm(g) for g, h in zip(gs, hs))


model = mx.models.mini_xception(10, width=0.25, middle_blocks=1, rng=0, dtype="float64")
for m in model.modules():                       # batch norm with fixed statistics: per-image independence
    if isinstance(m, mx.nn.BatchNorm2D):
        m.train(False)
full = gradient(model, x, y)
halves = [gradient(model, x[r * B // K:(r + 1) * B // K], y[r * B // K:(r + 1) * B // K], weight=1 / K)
          for r in range(K)]
summed = [sum(parts) for parts in zip(*halves)]
err_fixed = max_rel(full, summed)
print(f"fixed-statistics BN: sum of the {K} weighted slice gradients vs the full-batch gradient, "
      f"worst relative L2 error over {len(full)} arrays: {err_fixed:.1e}")
assert err_fixed < 1e-12

# %% [markdown]
r"""
**Batch norm in training mode breaks the identity.** It normalises every image with the mean and
variance *of its batch*, so an image's loss depends on the other images in the batch. If each rank
normalises its own slice — all an ordinary batch norm layer on one rank can do, since it sees
only that rank's images — K workers compute a different function from one worker: each slice's statistics are noisier
estimates of the full batch's. The same check in training mode:
"""

# %%
model.train()
full = gradient(model, x, y)
halves = [gradient(model, x[r * B // K:(r + 1) * B // K], y[r * B // K:(r + 1) * B // K], weight=1 / K)
          for r in range(K)]
err_per_rank = max_rel(full, [sum(p) for p in zip(*halves)])
print(f"per-slice BN: worst relative L2 error {err_per_rank:.2f}")
assert err_per_rank > 1e-2

# the statistics themselves: the first batch norm layer's per-channel mean, whole batch vs each half
layers = dict(model.named_modules())
bn1, conv1 = layers["block1_conv1_bn"], layers["block1_conv1"]
feats = [conv1(x).reshape(-1, bn1.channels)] + \
        [conv1(x[r * B // K:(r + 1) * B // K]).reshape(-1, bn1.channels) for r in range(K)]
fig, ax = plt.subplots(figsize=(8, 3))
w = 0.27
for j, (f, lab) in enumerate(zip(feats, ["whole batch (16)", "rank 0's slice (8)", "rank 1's slice (8)"])):
    ax.bar(np.arange(bn1.channels) + (j - 1) * w, f.mean(axis=0), w, label=lab)
ax.set_xlabel("channel of the first conv"); ax.set_ylabel("batch mean")
ax.set_title("The statistics batch norm would use: each slice's differ from the whole batch's")
ax.legend(fontsize=8); fig.tight_layout(); plt.show()
assert np.abs(feats[1].mean(0) - feats[0].mean(0)).max() > 1e-3

# %% [markdown]
r"""
**Synchronised batch norm** restores the identity. Each rank computes, per channel, the sum
and the sum of squares of its slice; one allreduce adds them over the ranks, and every rank then
normalises with the global batch's mean and variance. The backward pass needs two more sums
over the whole batch — $\sum \delta y$ and $\sum \delta y\,(x-\mu)$, the terms through $\mu$ and
$\sigma^2$ derived in chapter 5 — so it allreduces those too. This is `SyncBatchNorm2D`'s
forward, as the package runs it (subtracting the moving mean first keeps
$\mathrm{E}[d^2]-\mathrm{E}[d]^2$ from cancelling catastrophically):
"""

# %%
print(inspect.getsource(D.SyncBatchNorm2D.forward))

# %% [markdown]
r"""
On one rank the allreduce is the identity and `SyncBatchNorm2D` must be exactly batch norm; on K
ranks it is batch norm of the concatenated slices (section 3 checks that with real processes):
"""

# %%
class OneRank:
    """A group of one process: every collective is the identity."""
    rank, size = 0, 1

    def allreduce_sum_(self, buf):
        return buf


a = mx.nn.BatchNorm2D(8, dtype="float64")
b = D.convert_sync_batchnorm(mx.nn.BatchNorm2D(8, dtype="float64"), OneRank())
xb = rng.standard_normal((4, 6, 6, 8)) * 2 + 3
dy = rng.standard_normal(xb.shape)
err_bn = max(np.abs(a(xb) - b(xb)).max(), np.abs(a.backward(dy) - b.backward(dy)).max())
print(type(b).__name__, "on one rank vs BatchNorm2D, forward and backward, max abs difference:", f"{err_bn:.1e}")
assert err_bn < 1e-12

# %% [markdown]
r"""
## 2. The allreduce

After the backward pass, every rank holds a vector of $n$ gradient numbers and needs the
element-wise sum over all K ranks. Sending everything to one rank and back would make that rank
move $2(K-1)\,n$ numbers; the **ring allreduce** spreads the work evenly. The ranks form a ring,
and each rank's vector is cut into K chunks:

* **reduce-scatter**, $K-1$ steps: at each step every rank sends one chunk to its right neighbour,
  which adds it to its own copy of that chunk. After $K-1$ steps rank $r$ holds the complete sum of
  chunk $r+1$.
* **allgather**, $K-1$ steps: the completed chunks travel once more around the ring, replacing the
  partial ones.

Each rank sends $2(K-1)$ chunks of $n/K$ numbers: $2\frac{K-1}{K}\,n$, **almost independent of K**.
Here it is, simulated step by step (the numbers are real; the "network" is a Python list):
"""

# %%
def ring_allreduce(vectors, record=None):
    """Sum K equal-length vectors with the ring algorithm -> (K results, numbers sent per rank).

    record: an optional list receiving, after every step, a (K ranks, K chunks) array of how many
    ranks' contributions each rank's copy of each chunk holds.
    """
    k = len(vectors)
    chunks = [np.array_split(v.astype(np.float64), k) for v in vectors]
    count = np.ones((k, k), dtype=int)                          # each copy: its own contribution
    sent = np.zeros(k, dtype=int)
    for step in range(k - 1):                                   # reduce-scatter
        msgs = [(r, (r - step) % k, chunks[r][(r - step) % k].copy()) for r in range(k)]
        for r, c, data in msgs:
            dst = (r + 1) % k
            chunks[dst][c] = chunks[dst][c] + data
            count[dst, c] += count[r, c]
            sent[r] += data.size
        if record is not None:
            record.append(count.copy())
    for step in range(k - 1):                                   # allgather
        msgs = [(r, (r + 1 - step) % k, chunks[r][(r + 1 - step) % k].copy()) for r in range(k)]
        for r, c, data in msgs:
            dst = (r + 1) % k
            chunks[dst][c] = data
            count[dst, c] = count[r, c]
            sent[r] += data.size
        if record is not None:
            record.append(count.copy())
    return [np.concatenate(ch) for ch in chunks], sent


K4, n = 4, 1000
vecs = [rng.standard_normal(n) for _ in range(K4)]
steps = []
results, sent = ring_allreduce(vecs, steps)
assert all(np.allclose(r, sum(vecs), rtol=1e-12, atol=1e-12) for r in results)
assert all(s == 2 * (K4 - 1) * n // K4 for s in sent)
print(f"{K4} ranks, {n} numbers each: every rank ends with the sum; each sent {sent[0]} numbers "
      f"= 2(K-1)/K x n = {2 * (K4 - 1) / K4 * n:.0f}")

fig, axes = plt.subplots(1, len(steps), figsize=(2.1 * len(steps), 2.6))
for i, (ax, cnt) in enumerate(zip(axes, steps)):
    ax.imshow(cnt, cmap="Blues", vmin=0, vmax=K4)
    for (r, c), v in np.ndenumerate(cnt):
        ax.text(c, r, v, ha="center", va="center", fontsize=9, color="w" if v > K4 / 2 else "k")
    ax.set_xticks(range(K4)); ax.set_yticks(range(K4))
    ax.set_xlabel("chunk", fontsize=8)
    if i == 0:
        ax.set_ylabel("rank")
    ax.set_title(("reduce-scatter " if i < K4 - 1 else "allgather ") + f"{i % (K4 - 1) + 1}", fontsize=9)
fig.suptitle(f"Ring allreduce on {K4} ranks: how many ranks' contributions each copy of each chunk holds "
             f"after every step ({K4} = complete)", fontsize=10)
fig.tight_layout(); plt.show()
assert (steps[-1] == K4).all()

# %% [markdown]
r"""
**Cost.** With a per-message latency $\alpha$ and a bandwidth $\beta$ (bytes/s), a ring allreduce of
$n$ bytes takes

$$
T(n, K) \approx \underbrace{2(K-1)\,\alpha}_{\text{latency term}} \;+\; \underbrace{2\,\frac{K-1}{K}\,\frac{n}{\beta}}_{\text{bandwidth term}} .
$$

Small messages are latency-bound, large ones bandwidth-bound. This is why the package does **not**
allreduce each parameter on its own (hundreds of latency terms per step): `GradientBuckets` packs
the gradients, in the model's fixed order, into a few flat buffers of up to 25 MiB and allreduces
each buffer once. Every rank builds the same buckets from the same model, so the k-th call on every
rank carries the same parameters in the same places. The package's calls:
"""

# %%
print(inspect.getsource(D.make_buckets))
print(inspect.getsource(D.GradientBuckets.allreduce))
print(inspect.getsource(D.Group.allreduce_sum_))

# %% [markdown]
r"""
NumPy buffers go to MPI's `Allreduce` directly. On GPUs, `Group` uses NCCL through
`cupy.cuda.nccl` when CuPy can load it — the same collective, run between GPU buffers without a
trip through host memory — and otherwise stages each bucket through host memory. Which algorithm MPI picks inside
`Allreduce` is the library's choice; the cost model above is the one the bandwidth-optimal
algorithms share.

Measured here: two ranks on this machine (shared memory, no network), timing `Allreduce` for
message sizes from bytes to megabytes; $\alpha$ is read from the small messages, $\beta$ from the
largest (timings on a machine shared with other jobs: orders of magnitude, not benchmarks):
"""

# %%
ALLREDUCE_BENCH = r'''
import json, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
out = {}
for e in range(1, int(sys.argv[1]) + 1, 2):
    buf = np.ones(2 ** e, dtype=np.float32)
    reps = max(3, 400 // 2 ** max(e - 10, 0))
    comm.Allreduce(MPI.IN_PLACE, buf)
    best = float("inf")
    for _ in range(5):             # the best of 5 rounds: other jobs on the machine only add time
        comm.Barrier(); t0 = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, buf)
        best = min(best, comm.allreduce(time.perf_counter() - t0, op=MPI.MAX) / reps)
    out[buf.nbytes] = best
if comm.rank == 0:
    print(json.dumps(out))
'''


def launch_env():
    env = dict(os.environ, MINIXCEPTION_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


if MPIEXEC:
    script = Path(tempfile.mkdtemp()) / "allreduce_bench.py"
    script.write_text(ALLREDUCE_BENCH)
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), "21" if FAST else "23"],
                       capture_output=True, text=True, env=launch_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    timing = {int(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}
    source = "measured now, 2 ranks on this machine"
else:                               # recorded by this chapter's full run on a 2-core machine
    timing = {int(k): v for k, v in json.loads(RECORDED.read_text())["timing"].items()}
    source = "recorded earlier (no mpiexec here)"
sizes = np.array(sorted(timing)); t = np.array([timing[s] for s in sizes])
alpha = t[sizes <= 1024].min()                  # latency: the best small-message time
beta = sizes[-1] / t[-1]                        # bandwidth: the largest message (latency included)
print(f"{source}: latency ~ {alpha * 1e6:.1f} us per allreduce, bandwidth ~ {beta / 1e9:.2f} GB/s")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.loglog(sizes, t * 1e6, "o-", label=f"Allreduce, 2 ranks ({source})")
ax.loglog(sizes, (alpha + sizes / beta) * 1e6, "--", label=r"$\alpha + n/\beta$")
ax.axhline(alpha * 1e6, color="gray", lw=0.8); ax.text(sizes[0], alpha * 1e6 * 1.3, "latency-bound", fontsize=8)
ax.set_xlabel("message size (bytes)"); ax.set_ylabel("time (us)"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
ax.set_title("Small messages pay the latency, large ones the bandwidth")
fig.tight_layout(); plt.show()
print(f"in this run the largest message took {t[-1] / alpha:.0f}x the smallest's time")

# %% [markdown]
r"""
## 3. The equivalence, run live

Now the real thing: the command line, once as **one process** with a batch of 16, and as
**two MPI processes** with 8 images each, `--sync-bn`, both in float64 with the same seed, data
order and augmentation (`--batch-size` is always the global batch; each rank takes its contiguous
slice of every batch). Float64 matters: the two runs add the same numbers in different orders
(within each slice, then across the ranks), and training amplifies rounding differences step after
step; in float64 they start near $10^{-16}$, far enough below any tolerance that agreement shows
the two runs compute the same thing. A third run, two ranks *without*
`--sync-bn`, shows the per-rank batch norm of section 1 at work.
"""

# %%
n_train, epochs = (48, 1) if FAST else (128, 3)
common = ["--subset", str(n_train), "--batch-size", "16", "--epochs", str(epochs), "--width", "0.25",
          "--middle-blocks", "1", "--dtype", "float64", "--schedule", "step", "--no-progress"]
work = Path(tempfile.mkdtemp())


def train(name, ranks=1, extra=()):
    cmd = [sys.executable, "-m", "minixception", "train", "--out", str(work / name), *common, *extra]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd, "--distributed"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    launcher = f"mpiexec -n {ranks} " if ranks > 1 else ""
    flags = " --distributed" if ranks > 1 else ""
    print(f"$ {launcher}python -m minixception train{flags} {' '.join(extra)} {' '.join(common)}")
    print("\n".join(line for line in p.stdout.splitlines() if line.startswith("epoch")))   # rank 0's lines
    ck = np.load(work / name / "checkpoint.npz")
    arrays = {k: ck[k] for k in ck.files if k.startswith(("model/", "optim/momentum/"))}
    return read_metrics(work / name / "metrics.csv"), arrays


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


if MPIEXEC:
    one, w_one = train("one")
    sync, w_sync = train("two_sync", 2, ["--sync-bn"])
    per, w_per = train("two_per_rank", 2)
    names = sorted(w_one)
    live = dict(
        loss_diff=max(abs(a[k] - b[k]) for a, b in zip(one, sync) for k in ("train_loss", "test_loss")),
        sync=[rel_l2(w_one[k], w_sync[k]) for k in names],
        per_rank=[rel_l2(w_one[k], w_per[k]) for k in names],
        per_rank_loss_diff=max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one, per)),
        source="measured now")
    (work / "record.json").write_text(json.dumps(dict(timing=timing, live=live)))
else:
    live = json.loads(RECORDED.read_text())["live"]
    live["source"] = "recorded earlier (no mpiexec here)"
print(f"\n{live['source']}: largest loss difference, 2 ranks + sync BN vs 1 process: {live['loss_diff']:.1e}")
print(f"worst relative L2 difference over {len(live['sync'])} arrays (weights, BN statistics, momentum): "
      f"sync BN {max(live['sync']):.1e}, per-rank BN {max(live['per_rank']):.1e}")
assert live["loss_diff"] < 1e-9 and max(live["sync"]) < 1e-7
assert max(live["per_rank"]) > 1e-4

# %%
fig, ax = plt.subplots(figsize=(9, 3.5))
idx = np.arange(len(live["sync"]))
ax.semilogy(idx, np.maximum(live["per_rank"], 1e-18), ".", label="2 ranks, per-rank batch norm")
ax.semilogy(idx, np.maximum(live["sync"], 1e-18), ".", label="2 ranks, --sync-bn")
ax.axhline(1e-7, color="gray", lw=0.8, ls="--"); ax.text(0, 2e-7, "the tests' bound, 1e-7", fontsize=8)
ax.set_xlabel("array (parameters, BN moving statistics, momentum buffers)")
ax.set_ylabel("relative L2 difference\nfrom 1 process")
ax.set_title(f"After {epochs} epoch(s) in float64 ({live['source']})")
ax.legend(fontsize=8); fig.tight_layout(); plt.show()

# %% [markdown]
r"""
With `--sync-bn` every array agrees with the one-process run to rounding (float64's
$\approx 10^{-16}$, grown by a few steps of training): two processes ran *the same algorithm*.
Without it, the per-rank statistics changed the training itself, by far more than rounding —
section 1's difference, compounded over the steps. Neither is wrong: per-rank batch norm is a
legitimate (and cheaper) variant, but it is a different model of the batch.

Three more things the trainer does for these runs: rank 0 alone prints and writes the run folder
(the checkpoint is the ordinary single-process one, so `--resume` works with any number of
ranks); evaluation is sharded (each rank evaluates a slice of the test set and the sums are
reduced); and once an epoch the ranks compare an exact checksum of every weight, batch-norm
statistic and momentum buffer — the sum of their raw bits as 64-bit integers, which is
order-free and exact — and stop with an error naming the arrays if any rank has drifted:
"""

# %%
print(inspect.getsource(D._bit_sum))
w = np.linspace(-1, 1, 1000)
w2 = w.copy(); w2[123] = np.nextafter(w2[123], 2)        # one element, one unit in the last place
assert D._bit_sum(w) == D._bit_sum(w.copy()) and D._bit_sum(w) != D._bit_sum(w2)
print("checksum of a copy: equal; after a one-ulp change in one element: different")

# %% [markdown]
r"""
## 4. The paper's 60 K80s in numbers

Xception has 22,855,952 trainable parameters (chapter 6); in float32 one gradient is 4 bytes per
parameter. At the paper's 28 steps/s, the arithmetic of section 2 gives what each GPU had to
exchange if the averaging were a ring allreduce (the paper does not say how its gradients were
exchanged; this is the bandwidth-optimal lower bound of the scheme this package uses):
"""

# %%
P, steps_per_s, gpus = 22_855_952, 28, 60
grad_bytes = 4 * P
ring_per_gpu = 2 * (gpus - 1) / gpus * grad_bytes
print(f"gradient per step:                 {grad_bytes / 1e6:8.1f} MB")
print(f"ring allreduce, sent per GPU/step: {ring_per_gpu / 1e6:8.1f} MB  (2 x 59/60 of it)")
print(f"time per step at 28 steps/s:       {1e3 / steps_per_s:8.1f} ms")
print(f"needed per GPU, each direction:    {ring_per_gpu * steps_per_s / 1e9:8.2f} GB/s")
assert abs(grad_bytes / 1e6 - 91.4) < 0.1 and abs(ring_per_gpu * steps_per_s / 1e9 - 5.03) < 0.01
t_here = 2 * (gpus - 1) * alpha + ring_per_gpu / beta
print(f"\nWith the latency and bandwidth measured above ({source}), one 60-rank ring allreduce of "
      f"91.4 MB would take {t_here * 1e3:.0f} ms: {t_here * steps_per_s:.1f}x the paper's whole step budget"
      if t_here * steps_per_s > 1 else
      f"\nWith the latency and bandwidth measured above, one 60-rank ring allreduce would take "
      f"{t_here * 1e3:.0f} ms of the paper's {1e3 / steps_per_s:.0f} ms step")

fig, ax = plt.subplots(figsize=(7, 3.2))
ks = np.arange(2, 65)
ax.plot(ks, 2 * (ks - 1) / ks * grad_bytes * steps_per_s / 1e9, label="ring allreduce: sent per GPU")
ax.plot(ks, 2 * (ks - 1) * grad_bytes * steps_per_s / 1e9, label="one rank gathers and sends back: that rank")
ax.set_yscale("log"); ax.set_xlabel("GPUs (K)"); ax.set_ylabel("GB/s at 28 steps/s")
ax.axvline(60, color="gray", lw=0.8, ls="--"); ax.text(60.5, 3, "60", fontsize=8)
ax.set_title("Xception's gradient traffic per second, by algorithm")
ax.legend(fontsize=8); ax.grid(alpha=0.3); fig.tight_layout(); plt.show()

# %% [markdown]
r"""
The ring keeps each GPU's traffic near twice the gradient size, whatever K; a central rank's
grows with K. What this chapter's runs showed: the data-parallel algorithm is the one-process
algorithm when batch norm is synchronised (agreement to float64 rounding), a measurably different
one when it is not, and its cost per step is one allreduce of the gradient — a few bucketed calls,
each paying the latency once and the bandwidth for its bytes.

To run it yourself: `pip install -e ".[distributed]"`, then
`mpiexec -n 2 python -m minixception train --distributed --sync-bn` (add `--device gpu` for one
rank per GPU).
"""

# %% [markdown]
r"""
## Exercises

1. **Unequal slices.** With $B = 16$ images on $K = 2$ ranks holding 5 and 11 of them, each rank's
   mean-loss gradient must be weighted by $B_r/B$, not $1/K$. Check with the fixed-statistics
   model of section 1 that the weighted sum equals the full-batch gradient, and that weighting by
   $1/K$ does not.
   <details><summary>Hint</summary>`gradient(model, xs, ys, weight=...)` takes the weight; the
   identity of section 1 holds for any split as long as the weights are the slice shares.</details>
2. **Ring against a central rank.** Count the numbers each rank sends in `ring_allreduce` for
   $K = 2, \dots, 8$ ranks and $n = 840$ numbers each, and compare with what rank 0 sends in a
   "gather to rank 0, sum, send the sum back" scheme. From which $K$ does the ring's busiest rank
   send less?
   <details><summary>Hint</summary>Rank 0 of the central scheme sends the sum, n numbers, to each of
   the K-1 others (and receives as much); in the ring every rank sends 2 (K-1)/K n.</details>
3. **Why buckets.** With the latency $\alpha$ and bandwidth $\beta$ measured (or recorded) in
   section 2, use $T(n, K)$ to compare, for Xception's 91.4 MB gradient on 60 ranks: one allreduce
   of everything, 25 MiB buckets, and one allreduce per parameter array (say 200 arrays).
   <details><summary>Hint</summary>Every call pays the latency term 2 (K-1) α once; the bandwidth
   term depends only on the total bytes, however they are split.</details>

## Solutions
"""

# %%
# 1. slices of 5 and 11 images: weights B_r / B give the full-batch gradient, 1/K does not
ex_model = mx.models.mini_xception(10, width=0.25, middle_blocks=1, rng=0, dtype="float64")
for m in ex_model.modules():
    if isinstance(m, mx.nn.BatchNorm2D):
        m.train(False)
ex_full = gradient(ex_model, x, y)
cuts = [(0, 5), (5, 16)]
shares = [gradient(ex_model, x[a:b], y[a:b], weight=(b - a) / B) for a, b in cuts]
equal = [gradient(ex_model, x[a:b], y[a:b], weight=1 / len(cuts)) for a, b in cuts]
err_shares = max_rel(ex_full, [sum(p) for p in zip(*shares)])
err_equal = max_rel(ex_full, [sum(p) for p in zip(*equal)])
print(f"weights B_r/B: {err_shares:.1e};  weights 1/K: {err_equal:.1e}")
assert err_shares < 1e-12 and err_equal > 1e-3

# %%
# 2. numbers sent by the busiest rank: the ring's 2(K-1)/K n against a central rank's (K-1) n;
#    equal at K = 2, the ring sends less from K = 3 on (and its load stays below 2n for any K)
n_ex = 840
for k in range(2, 9):
    _, sent_k = ring_allreduce([rng.standard_normal(n_ex) for _ in range(k)])
    central = (k - 1) * n_ex                          # rank 0 sends the sum to each of the K-1 others
    print(f"K = {k}: ring, each rank sends {sent_k.max():5d};  the central rank sends {central:5d}")
    assert sent_k.max() == 2 * (k - 1) * n_ex // k
    assert (sent_k.max() == central) if k == 2 else (sent_k.max() < central)

# %%
# 3. the same 91.4 MB on 60 ranks in 1 call, in 25 MiB buckets, in 200 calls
n_bytes, k60 = 4 * 22_855_952, 60
bandwidth_term = 2 * (k60 - 1) / k60 * n_bytes / beta
calls = {"one call": 1, "25 MiB buckets": -(-n_bytes // (25 * 2**20)), "200 arrays, one call each": 200}
times_ex = {name: c * 2 * (k60 - 1) * alpha + bandwidth_term for name, c in calls.items()}
for name, t in times_ex.items():
    print(f"{name:28s} {calls[name]:4d} calls: {t * 1e3:9.1f} ms  (latency {calls[name] * 2 * (k60 - 1) * alpha * 1e3:8.1f} ms)")
assert times_ex["one call"] <= times_ex["25 MiB buckets"] < times_ex["200 arrays, one call each"]
