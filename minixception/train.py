"""The training loop: SGD epochs, evaluation, metrics, curves, checkpoints, safe stops.

    history = mx.train.fit(model, data, out="runs/a", epochs=5, batch_size=64, lr=0.05)

Each epoch: shuffle + augment the training set (one seeded host generator), take SGD
steps (momentum, L2 on kernels, the learning rate from a schedule evaluated at the
fractional epoch), evaluate on the test set in eval mode under ``inference_mode()``,
then write the epoch's outputs in one place and in this order: check that the parameters,
batch norm's statistics and the test loss are finite (else :class:`NonFiniteState`, and the
last good checkpoint stays), save ``OUT/checkpoint.npz``, append a row to ``OUT/metrics.csv``,
redraw ``OUT/curves.png``. ``metrics.csv`` is only ever appended, after the checkpoint that
holds the same epochs, so the two never disagree.

The run folder is claimed first (``runfolder.claim``): writable, locked against a second
process, and refused when it holds another run unless ``resume=`` continues it or
``overwrite=True`` replaces it.

Resuming with another ``epochs`` follows one learning-rate policy. ``step`` and ``constant``
do not depend on the run's length and continue unchanged. ``cosine`` keeps the learning rate of
everything already trained and anneals from where the run stands: a new cosine from the current
learning rate down to 0 at the new last epoch. A run that had finished its cosine (learning
rate 0) restarts from the peak ``lr`` instead (a warm restart). Either is announced; the plan
is stored in the checkpoint, so later resumes follow it exactly.

Loss and accuracy are summed on the device inside the step; the host reads them
only every ``sync_every`` steps (for the progress bar and the NaN check) and at the
end of the epoch, so a GPU step never waits for a ``float()``. A non-finite loss
stops training with :class:`NonFiniteLoss` before anything is saved.

Ctrl-C finishes the current step, writes ``OUT/checkpoint.npz`` (mid-epoch: it records
the step and the data generator's state at the epoch's start) and re-raises
``KeyboardInterrupt``; ``resume=`` that file continues to exactly the result of an
uninterrupted run. A second Ctrl-C stops at once.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from .backend import check_device, get_array_module, to_device
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, rng_from_state, save_checkpoint
from .data.iterator import BatchIterator, channel_stats
from .kernels.cpu.threads import cpu_threads, num_threads
from .losses import softmax_cross_entropy
from .nn.layers import BatchNorm2D, Dropout
from .nn.module import inference_mode
from .optim import SGD, Cosine, PolyakAverage, make_schedule
from .runfolder import RunFolderError, claim

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.csv"
CURVES = "curves.png"
FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "epoch_time_s")
# with Polyak averaging (``polyak=decay``): the test set evaluated with the averaged weights
POLYAK_FIELDS = ("polyak_test_loss", "polyak_test_acc")


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteState(NonFiniteLoss):
    """Parameters, batch-norm statistics or the test loss are not finite: the epoch is not saved."""


# -- small helpers ----------------------------------------------------------------------

def _dropout_states(model):
    return [m.rng_state() for m in model.modules() if isinstance(m, Dropout)]


def _set_dropout_states(model, states):
    drops = [m for m in model.modules() if isinstance(m, Dropout)]
    for m, st in zip(drops, states or []):
        m.set_rng_state(st)


def _catch_up_metrics(path, history, fields=FIELDS):
    """On resume: append the checkpoint's rows that ``metrics.csv`` lacks (a run killed between its
    save and its append, or a resume into a new folder). Rows it already has are left alone; a file
    that records epochs the checkpoint does not know is refused (it belongs to another run)."""
    have = read_metrics(path) if os.path.exists(path) else []
    epochs, known = [r["epoch"] for r in have], [r["epoch"] for r in history]
    if epochs != known[:len(epochs)]:
        raise RunFolderError(
            f"{path} records epochs {epochs[:1]}..{epochs[-1:]}, the checkpoint has {known[:1]}..{known[-1:]}: "
            "they are not the same run; resume into another --out")
    for r in history[len(have):]:
        append_metrics(path, r, fields)


def append_metrics(path, row, fields=FIELDS):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in fields})


def read_metrics(path):
    try:
        with open(path, newline="") as f:
            return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    except (ValueError, TypeError) as exc:
        raise RunFolderError(f"{path}: not a metrics file this trainer wrote ({exc})") from exc


def plot_curves(path, history, title=None):
    """Loss and accuracy per epoch (train and test) -> a PNG at ``path`` (matplotlib, Agg)."""
    # a bare Figure (Agg canvas), not pyplot: switching the global backend to Agg here would
    # silently stop every later plt.show() in the caller's notebook
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a1.plot(ep, [r["test_loss"] for r in history], "s-", label="test")
    polyak = bool(history) and "polyak_test_loss" in history[0]
    if polyak:
        a1.plot(ep, [r["polyak_test_loss"] for r in history], "^--", label="test, Polyak-averaged weights")
    a1.set_xlabel("epoch"); a1.set_ylabel("loss"); a1.set_title("cross-entropy loss"); a1.legend()
    a2.plot(ep, [r["train_acc"] for r in history], "o-", label="train")
    a2.plot(ep, [r["test_acc"] for r in history], "s-", label="test")
    if polyak:
        a2.plot(ep, [r["polyak_test_acc"] for r in history], "^--", label="test, Polyak-averaged weights")
    a2.set_xlabel("epoch"); a2.set_ylabel("accuracy"); a2.set_ylim(0, 1); a2.set_title("accuracy"); a2.legend()
    for a in (a1, a2):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


class _SigintGuard:
    """Turn the first Ctrl-C into a flag checked between steps; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _check_finite(loss_sum, epoch, step, lr):
    v = float(loss_sum)
    if not math.isfinite(v):
        raise NonFiniteLoss(
            f"training loss became {v} at epoch {epoch + 1}, step {step} (lr={lr:.4g}); stopped without "
            "saving. Try a smaller --lr, a warmer schedule, or check the data normalisation.")
    return v


def _check_state_finite(model, test_loss, epoch, out):
    """Refuse to save NaN/inf: the parameters and buffers (batch-norm statistics) and the test loss."""
    bad = [k for k, v in model.state_dict().items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if test_loss is not None and not math.isfinite(test_loss):
        bad.append(f"test loss ({test_loss})")
    if bad:
        more = f", and {len(bad) - 4} more" if len(bad) > 4 else ""
        kept = f"the last good checkpoint {out / CHECKPOINT} is kept" if (out / CHECKPOINT).exists() \
            else "nothing was saved"
        raise NonFiniteState(
            f"epoch {epoch}: non-finite values in {', '.join(bad[:4])}{more}; not saved, {kept}. Try a "
            "smaller --lr, a --bn-momentum in [0, 1), or check the data.")


def _write_epoch(out, model, opt, history, settings, ckpt_meta, fields=FIELDS, extra=None):
    """One completed epoch's outputs, in the order that keeps them consistent (see the module doc)."""
    row = history[-1]
    _check_state_finite(model, row["test_loss"], row["epoch"], out)
    save_checkpoint(out / CHECKPOINT, model, opt, extra=extra, history=history, settings=settings, **ckpt_meta)
    append_metrics(out / METRICS, row, fields)
    plot_curves(out / CURVES, history, title=settings.get("title"))


class _PlannedCosine:
    """Cosine segments ``{"from": epoch, "to": epoch, "lr": start lr}``: each anneals its lr to 0."""

    def __init__(self, segments):
        self.segments = segments

    def __call__(self, epoch):
        seg = self.segments[0]
        for s in self.segments[1:]:
            if epoch >= s["from"]:
                seg = s
        return Cosine(seg["lr"], seg["to"] - seg["from"])(epoch - seg["from"])


def _lr_plan(schedule, lr, epochs, plan, position, say):
    """The schedule (and the stored plan) for a run to ``epochs`` that stands at ``position``."""
    plan = [dict(s) for s in (plan or [{"from": 0.0, "to": float(epochs), "lr": float(lr)}])]
    planned = plan[-1]["to"]
    if planned != epochs and schedule != "cosine":
        say(f"training to epoch {epochs} (planned: {planned:g}): the {schedule} schedule does not depend on "
            "the run's length and continues unchanged")
    elif planned != epochs and epochs > position:
        now = _PlannedCosine(plan)(position)
        if position >= planned:
            plan.append({"from": position, "to": float(epochs), "lr": float(lr)})
            say(f"the cosine schedule had finished at epoch {planned:g} (lr 0); epochs {position:g}..{epochs} "
                f"are a warm restart: a new cosine from the peak lr {lr:g} down to 0")
        else:
            plan.append({"from": position, "to": float(epochs), "lr": now})
            say(f"the cosine schedule was planned for {planned:g} epochs; from epoch {position:g} it anneals "
                f"from the current lr {now:.4g} to 0 at epoch {epochs} (the epochs already trained keep theirs)")
    sched = _PlannedCosine(plan) if schedule == "cosine" else make_schedule(schedule, lr, epochs)
    return sched, plan


def _dropout_state_ok(state):
    """A saved Dropout generator state: ``{"host": numpy state, "device": ...}`` or a bare numpy state."""
    if isinstance(state, dict) and "host" in state:
        return rng_from_state(state["host"]) is not None and (
            state.get("device") is None or isinstance(state["device"], dict))
    return rng_from_state(state) is not None


def check_run_meta(path):
    """The training fields a resume reads: present and well-formed, checked before the model changes."""
    def check(meta):
        def need(key, ok, want):
            if key not in meta or not ok(meta[key]):
                raise CheckpointError(f"{path}: cannot resume: field {key!r} is missing or not {want} "
                                      f"(got {meta.get(key)!r:.80})")
        nonneg = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
        need("epoch", nonneg, "an integer >= 0")
        need("data_rng", lambda v: rng_from_state(v) is not None, "a generator state")
        if "step" in meta:
            need("step", nonneg, "an integer >= 0")
        if "history" in meta:
            need("history", lambda h: isinstance(h, list) and all(
                isinstance(r, dict) and all(isinstance(r.get(k), (int, float)) for k in FIELDS) for r in h),
                f"a list of rows with {FIELDS}")
        if meta.get("dropout_rngs") is not None:
            need("dropout_rngs", lambda v: isinstance(v, list) and all(_dropout_state_ok(s) for s in v),
                 "a list of generator states")
        if meta.get("partial") is not None:
            need("partial", lambda v: isinstance(v, dict) and all(
                isinstance(v.get(k), (int, float)) for k in ("loss_sum", "correct", "seen")), "a partial-epoch record")
        if meta.get("lr_plan") is not None:
            need("lr_plan", lambda v: isinstance(v, list) and v and all(
                isinstance(s, dict) and all(isinstance(s.get(k), (int, float)) for k in ("from", "to", "lr"))
                and s["to"] > s["from"] for s in v), "a list of schedule segments")
    return check


def evaluate(model, x, y, batch_size, mean, std, distributed=None):
    """Mean loss and accuracy over (x, y) in eval mode, without caches -> (loss, acc) floats.

    distributed: a ``DataParallel``; each rank evaluates its contiguous shard, the sums are reduced.
    """
    was_training = model.training
    model.eval()
    xp = get_array_module(x)
    n = x.shape[0]
    if distributed is not None:
        lo, hi = distributed.group.shard(n)
        x, y = x[lo:hi], y[lo:hi]
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = xp.zeros((), dtype=xp.int64)
    try:
        with inference_mode():
            for xb, yb in BatchIterator(x, y, batch_size, mean, std, dtype=_dtype_of(model)):
                logits = model(xb)
                loss, _ = softmax_cross_entropy(logits, yb)
                loss_sum += loss * xb.shape[0]
                correct += (logits.argmax(axis=1) == yb).sum()
    finally:
        model.train(was_training)
    loss_sum, correct = _reduce(distributed, float(loss_sum), int(correct))
    return loss_sum / n, int(correct) / n


def recompute_bn_statistics(model, x, y, batch_size, mean, std, rng=1):
    """Set every batch norm's moving statistics to the mean of its batch statistics over one
    shuffled pass of (x, y), for the model's current weights. No weight changes.

    Training leaves moving averages that trail the weights (momentum 0.99: about the last 100
    steps); after fast-changing weights, or for weights that never ran (a Polyak average), these
    describe no single model. One pass with each layer's momentum set to t/(t+1) at batch t makes
    the moving value the plain mean of the batch statistics. x: (N, H, W, C) uint8 images.
    """
    bns = [m for m in model.modules() if isinstance(m, BatchNorm2D)]
    saved = [m.momentum for m in bns]
    was_training = model.training
    model.train()
    try:
        with inference_mode():                       # forward passes only, no caches
            it = BatchIterator(x, y, batch_size, mean, std, shuffle=True, rng=rng, dtype=_dtype_of(model))
            for t, (xb, _) in enumerate(it):
                for m in bns:
                    m.momentum = t / (t + 1)         # t = 0 replaces, later batches average
                model(xb)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)


def _dtype_of(model):
    """The floating dtype the model computes in (its parameters'); batches are made in it."""
    return str(model.parameters()[0].data.dtype)


def _reduce(distributed, *values):
    """Host numbers summed over the ranks (unchanged in a single process)."""
    if distributed is None:
        return values
    return tuple(distributed.group.sum(values))


def _polyak_checkpoint(avg):
    """The averages as checkpoint entries: (extra arrays, meta) -- empty when not averaging."""
    if avg is None:
        return {}, {}
    sd = avg.state_dict()
    return ({f"polyak/{k}": v for k, v in sd["averages"].items()},
            {"polyak": {"decay": sd["decay"], "updates": sd["updates"]}})


def _polyak_resume(model, decay, meta):
    """The PolyakAverage of a resumed run: its saved averages, or (none saved) the loaded weights."""
    avg = PolyakAverage(model, decay)
    saved = {k[len("polyak/"):]: v for k, v in meta.get("_extra", {}).items() if k.startswith("polyak/")}
    if saved:
        avg.load_state_dict({**meta.get("polyak", {}), "averages": saved})
    return avg


def load_polyak(path, model):
    """The Polyak average a run kept (``fit(..., polyak=decay)``), read from its checkpoint -> PolyakAverage.

    ``model`` must have the run's architecture: the averages are checked against its parameters'
    names and shapes. ``with avg.applied():`` then evaluates (or saves) the averaged weights.
    Raises CheckpointError when the checkpoint holds no average.
    """
    _, _, meta = read_checkpoint(path)
    if "polyak" not in meta:
        raise CheckpointError(f"{path}: holds no Polyak average (the run was trained without polyak=...)")
    return _polyak_resume(model, meta["polyak"]["decay"], meta)


# -- the loop ---------------------------------------------------------------------------

def fit(model, data, out, epochs=5, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
        schedule="cosine", device="cpu", seed=0, augment=True, resume=None, settings=None,
        progress=True, verbose=True, sync_every=None, interrupt_after_steps=None, polyak=None,
        distributed=None, overwrite=False):
    """Train ``model`` on ``data`` (dict x_train, y_train, x_test, y_test: host uint8 / int) -> history.

    out: the run folder (metrics.csv, curves.png, checkpoint.npz go directly in it). A folder that
      already holds a run is refused (RunFolderError) unless ``resume`` continues it or
      ``overwrite=True`` replaces it; a folder another process trains into is refused.
    schedule: "constant" | "step" | "cosine" (cosine anneals to 0 over ``epochs``).
    resume: a checkpoint path; model weights, BN statistics, momentum buffers, the data
      generator and the metrics history are restored, and training continues to ``epochs``
      (the learning-rate policy for another ``epochs`` is in the module docstring). With no
      epochs left it says so and writes nothing.
    settings: the run's settings (JSON-able dict), stored in every checkpoint.
    progress: the tqdm bar; verbose: one summary line per epoch.
    sync_every: host reads of the running loss (progress bar, NaN check); default 1 on the
      CPU (free there) and 50 on the GPU.
    interrupt_after_steps: for tests -- behave as if Ctrl-C came after that many steps of this call.
    polyak: a decay (e.g. 0.999) to keep a Polyak average of the weights, updated after every
      step, saved in the checkpoint; each epoch evaluates the test set with the raw and with the
      averaged weights (columns ``polyak_test_loss``, ``polyak_test_acc``).
    distributed: a ``minixception.distributed.DataParallel`` (one per rank under mpiexec):
      ``batch_size`` is the global batch, each rank trains on its slice of it, gradients are
      allreduced, evaluation is sharded; rank 0 alone writes files and prints.
    Returns the list of per-epoch metric rows (also in ``out/metrics.csv``).
    """
    kw = dict(locals())             # every argument, passed on to _fit: a new keyword needs no plumbing
    check_device(device)
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if not (isinstance(v, (int, np.integer)) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if distributed is not None:
        distributed.check_batch_size(batch_size)
    kw["out"] = Path(out)
    # under mpiexec rank 0 alone owns (and locks) the run folder; the other ranks write nothing
    owner = distributed is None or distributed.rank == 0
    with claim(kw["out"], resume=resume, overwrite=overwrite) if owner else contextlib.nullcontext():
        return _fit(**kw)


def _fit(model, data, out, epochs, batch_size, lr, momentum, weight_decay, schedule, device, seed,
         augment, resume, settings, progress, verbose, sync_every, interrupt_after_steps, polyak,
         distributed, overwrite):
    """The body of ``fit``, run while the run folder is claimed."""
    dist = distributed
    writer = dist is None or dist.rank == 0           # rank 0 alone writes and prints
    progress, verbose = progress and writer, verbose and writer
    say = (lambda msg: print(msg, flush=True)) if verbose else (lambda msg: None)
    fields = FIELDS + POLYAK_FIELDS if polyak is not None else FIELDS
    x_train, y_train = np.asarray(data["x_train"]), np.asarray(data["y_train"], dtype=np.int64)
    x_test, y_test = np.asarray(data["x_test"]), np.asarray(data["y_test"], dtype=np.int64)
    n_classes = _num_outputs(model)
    for name, yy in (("y_train", y_train), ("y_test", y_test)):
        if yy.size and (yy.min() < 0 or (n_classes and yy.max() >= n_classes)):
            raise ValueError(f"{name}: labels must lie in [0, {n_classes}), got {yy.min()}..{yy.max()}")
    # drop a last batch of one image: batch norm cannot train on it
    drop_last = x_train.shape[0] % batch_size == 1
    if dist is not None:        # ... nor on a rank's slice of it: each rank needs two images
        drop_last = 0 < x_train.shape[0] % batch_size < 2 * dist.size
    steps = x_train.shape[0] // batch_size + (x_train.shape[0] % batch_size > int(drop_last))
    if steps == 0 or x_test.shape[0] == 0:
        raise ValueError(f"this run would take zero steps (or test nothing): {x_train.shape[0]} training and "
                         f"{x_test.shape[0]} test images at batch size {batch_size}")
    mean, std = channel_stats(x_train)
    opt = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    settings = dict(settings or {})

    start_epoch, start_step, history, partial, plan = 0, 0, [], None, None
    rng = np.random.default_rng(seed)
    if resume is not None:
        meta = load_checkpoint(resume, model, opt, check_meta=check_run_meta(resume))
        start_epoch, start_step = meta["epoch"], meta.get("step", 0)
        history = list(meta.get("history", []))
        if start_epoch >= epochs:
            say(f"nothing to train: {resume} is already at epoch {start_epoch}, and epochs={epochs} asks for "
                "no more; no file was written")
            return history
        rng = rng_from_state(meta["data_rng"])
        _set_dropout_states(model, meta.get("dropout_rngs"))
        partial, plan = meta.get("partial"), meta.get("lr_plan")
        if writer:
            _catch_up_metrics(out / METRICS, history, fields)
    sched, plan = _lr_plan(schedule, lr, epochs, plan, start_epoch + start_step / steps, say)

    model.to(device)
    model.train()
    x_train_d, y_train_d = to_device(x_train, device), to_device(y_train, device)
    x_test_d, y_test_d = to_device(x_test, device), to_device(y_test, device)
    # with --distributed each rank makes only its slice of every global batch (same images and
    # draws as one process, sets dist.weight); the rest is the single-process loop
    train_iter = BatchIterator(x_train_d, y_train_d, batch_size, mean, std, shuffle=True,
                               augment=augment, rng=rng, drop_last=drop_last, dtype=_dtype_of(model),
                               shard=None if dist is None else dist.rows)
    assert len(train_iter) == steps
    sync_every = sync_every or (50 if device == "gpu" else 1)
    if dist is not None:
        dist.attach(model, opt)                        # rank 0's weights (and resumed state) everywhere
        _split_dropout_streams(model, dist.rank)
    avg = None if polyak is None else _polyak_resume(model, polyak, meta if resume is not None else {})

    xp = get_array_module(x_train_d)
    done_steps = 0
    # on the CPU: BLAS single-threaded and the work on the kernels' pool, for this loop only
    cpu_scope = cpu_threads(num_threads()) if device == "cpu" else contextlib.nullcontext()
    with _SigintGuard() as guard, cpu_scope:
        for epoch in range(start_epoch, epochs):
            epoch_rng_state = rng.bit_generator.state      # replayed by a mid-epoch resume
            skip = start_step if epoch == start_epoch else 0
            loss_sum = xp.zeros((), dtype=xp.float64)
            correct = xp.zeros((), dtype=xp.int64)
            seen = seen_now = 0                               # this epoch / this call
            if skip and partial and writer:                  # global sums: counted once, on rank 0
                loss_sum += partial["loss_sum"]
                correct += int(partial["correct"])
                seen = int(partial["seen"])
            t0 = time.perf_counter()
            lr_epoch = sched(epoch)
            bar = _progress(progress, steps, skip, f"epoch {epoch + 1}/{epochs}")
            step = skip
            interrupted = False
            try:
                for xb, yb in train_iter.epoch(skip):           # (this rank's slice, if distributed)
                    opt.lr = sched(epoch + step / steps)
                    opt.zero_grad()
                    logits = model(xb)
                    loss, dlogits = softmax_cross_entropy(logits, yb)
                    if dist is not None:                         # its share of the global mean loss
                        dlogits *= dist.weight
                    model.backward(dlogits)
                    if dist is not None:
                        dist.allreduce_gradients()
                    opt.step()
                    if avg is not None:
                        avg.update()
                    nb = xb.shape[0]
                    loss_sum += loss * nb                      # stays on the device
                    correct += (logits.argmax(axis=1) == yb).sum()
                    seen += nb
                    seen_now += nb
                    step += 1
                    done_steps += 1
                    if step % sync_every == 0 or step == steps:
                        cur, cor, sn = _reduce(dist, float(loss_sum), int(correct), seen)
                        cur = _check_finite(cur, epoch, step, opt.lr)
                        if bar is not None:
                            bar.set_postfix(loss=f"{cur / sn:.3f}", acc=f"{int(cor) / sn:.3f}",
                                            lr=f"{opt.lr:.3g}")
                    if bar is not None:
                        bar.update(1)
                    stop = guard.requested or (interrupt_after_steps is not None
                                               and done_steps >= interrupt_after_steps)
                    if dist is not None:                         # all ranks stop at the same step
                        stop = dist.group.any(stop)
                    if stop:
                        interrupted = True
                        break
            finally:
                if bar is not None:
                    bar.close()
            if dist is not None:
                loss_sum, correct, seen, seen_now = _reduce(dist, float(loss_sum), int(correct), seen, seen_now)
            if interrupted:
                _check_finite(loss_sum, epoch, step, opt.lr)
                _check_state_finite(model, None, epoch + 1, out)
                path = out / CHECKPOINT
                if dist is not None:
                    dist.end_epoch(model, opt)
                if writer:
                    extra, pmeta = _polyak_checkpoint(avg)
                    path = save_checkpoint(
                        out / CHECKPOINT, model, opt, extra=extra, epoch=epoch, step=step, data_rng=epoch_rng_state,
                        dropout_rngs=_dropout_states(model), history=history, settings=settings, lr_plan=plan,
                        partial={"loss_sum": float(loss_sum), "correct": int(correct), "seen": int(seen)}, **pmeta)
                raise KeyboardInterrupt(f"training interrupted at epoch {epoch + 1}, step {step}; "
                                        f"saved {path} (continue with --resume {path})")
            train_time = time.perf_counter() - t0
            train_loss = _check_finite(loss_sum, epoch, step, opt.lr) / max(seen, 1)
            train_acc = int(correct) / max(seen, 1)
            if dist is not None:       # BN statistics made equal (per-rank BN), then a drift check
                dist.end_epoch(model, opt)
            test_loss, test_acc = evaluate(model, x_test_d, y_test_d, batch_size, mean, std, dist)
            row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                       test_acc=test_acc, lr=lr_epoch, images_per_s=seen_now / max(train_time, 1e-9),
                       epoch_time_s=time.perf_counter() - t0)
            if avg is not None:
                with avg.applied():
                    row["polyak_test_loss"], row["polyak_test_acc"] = evaluate(
                        model, x_test_d, y_test_d, batch_size, mean, std, dist)
            if writer:
                extra, pmeta = _polyak_checkpoint(avg)
                _write_epoch(out, model, opt, history + [row], settings,
                             dict(epoch=epoch + 1, step=0, data_rng=rng.bit_generator.state,
                                  dropout_rngs=_dropout_states(model), lr_plan=plan, **pmeta), fields, extra)
            history.append(row)
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                      f"test loss {test_loss:.4f} acc {test_acc:.3f} | "
                      + (f"Polyak test loss {row['polyak_test_loss']:.4f} acc {row['polyak_test_acc']:.3f} | "
                         if avg is not None else "")
                      + f"lr {lr_epoch:.4g} | "
                      f"{row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f} s", flush=True)
    return history


def _split_dropout_streams(model, rank):
    """Rank r > 0 draws its dropout masks from stream r of rank 0's generator (PCG64 ``jumped``):
    ranks must not repeat each other's masks on their different slices."""
    for m in model.modules():
        if isinstance(m, Dropout) and rank:
            host = rng_from_state(m.rng_state()["host"])
            m.set_rng_state({"host": host.bit_generator.jumped(rank).state, "device": None})


def _progress(enabled, total, initial, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _num_outputs(model):
    """Classes the model predicts: out_features of its last Dense layer (None if unknown)."""
    last = None
    for m in model.modules():
        if hasattr(m, "out_features"):
            last = m.out_features
    return last
