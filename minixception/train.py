"""The training loop: SGD epochs, evaluation, metrics, curves, checkpoints, safe stops.

    history = mx.train.fit(model, data, out="runs/a", epochs=5, batch_size=64, lr=0.05)

Each epoch: shuffle + augment the training set (one seeded host generator), take SGD
steps (momentum, L2 on kernels, the learning rate from a schedule evaluated at the
fractional epoch), evaluate on the test set in eval mode under ``inference_mode()``,
append a row to ``OUT/metrics.csv``, redraw ``OUT/curves.png`` and save
``OUT/checkpoint.npz``.

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
from .checkpoint import load_checkpoint, rng_from_state, save_checkpoint
from .data.iterator import BatchIterator, channel_stats
from .kernels.cpu.threads import cpu_threads, num_threads
from .losses import softmax_cross_entropy
from .nn.layers import Dropout
from .nn.module import inference_mode
from .optim import SGD, make_schedule

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.csv"
CURVES = "curves.png"
FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "epoch_time_s")


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


# -- small helpers ----------------------------------------------------------------------

def _dropout_states(model):
    return [m._host_rng.bit_generator.state for m in model.modules() if isinstance(m, Dropout)]


def _set_dropout_states(model, states):
    drops = [m for m in model.modules() if isinstance(m, Dropout)]
    for m, st in zip(drops, states or []):
        m._host_rng = rng_from_state(st)
        m._device_rng = None


def write_metrics(path, rows):
    """Write all rows (a fresh file): used at the start of a run or a resume."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in FIELDS})


def append_metrics(path, row):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in FIELDS})


def read_metrics(path):
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


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
    a1.set_xlabel("epoch"); a1.set_ylabel("loss"); a1.set_title("cross-entropy loss"); a1.legend()
    a2.plot(ep, [r["train_acc"] for r in history], "o-", label="train")
    a2.plot(ep, [r["test_acc"] for r in history], "s-", label="test")
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


def evaluate(model, x, y, batch_size, mean, std):
    """Mean loss and accuracy over (x, y) in eval mode, without caches -> (loss, acc) floats."""
    was_training = model.training
    model.eval()
    xp = get_array_module(x)
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = xp.zeros((), dtype=xp.int64)
    try:
        with inference_mode():
            for xb, yb in BatchIterator(x, y, batch_size, mean, std):
                logits = model(xb)
                loss, _ = softmax_cross_entropy(logits, yb)
                loss_sum += loss * xb.shape[0]
                correct += (logits.argmax(axis=1) == yb).sum()
    finally:
        model.train(was_training)
    n = x.shape[0]
    return float(loss_sum) / n, int(correct) / n


# -- the loop ---------------------------------------------------------------------------

def fit(model, data, out, epochs=5, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
        schedule="cosine", device="cpu", seed=0, augment=True, resume=None, settings=None,
        progress=True, verbose=True, sync_every=None, interrupt_after_steps=None):
    """Train ``model`` on ``data`` (dict x_train, y_train, x_test, y_test: host uint8 / int) -> history.

    out: the run folder (metrics.csv, curves.png, checkpoint.npz go directly in it).
    schedule: "constant" | "step" | "cosine" (cosine anneals to 0 over ``epochs``).
    resume: a checkpoint path; model weights, BN statistics, momentum buffers, the data
      generator and the metrics history are restored, and training continues to ``epochs``.
    settings: the run's settings (JSON-able dict), stored in every checkpoint.
    progress: the tqdm bar; verbose: one summary line per epoch.
    sync_every: host reads of the running loss (progress bar, NaN check); default 1 on the
      CPU (free there) and 50 on the GPU.
    interrupt_after_steps: for tests -- behave as if Ctrl-C came after that many steps of this call.
    Returns the list of per-epoch metric rows (also in ``out/metrics.csv``).
    """
    check_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = np.asarray(data["x_train"]), np.asarray(data["y_train"], dtype=np.int64)
    x_test, y_test = np.asarray(data["x_test"]), np.asarray(data["y_test"], dtype=np.int64)
    n_classes = _num_outputs(model)
    for name, yy in (("y_train", y_train), ("y_test", y_test)):
        if yy.size and (yy.min() < 0 or (n_classes and yy.max() >= n_classes)):
            raise ValueError(f"{name}: labels must lie in [0, {n_classes}), got {yy.min()}..{yy.max()}")
    mean, std = channel_stats(x_train)
    model.to(device)
    model.train()
    x_train_d, y_train_d = to_device(x_train, device), to_device(y_train, device)
    x_test_d, y_test_d = to_device(x_test, device), to_device(y_test, device)
    # drop a last batch of one image: batch norm cannot train on it
    drop_last = x_train.shape[0] % batch_size == 1
    rng = np.random.default_rng(seed)
    train_iter = BatchIterator(x_train_d, y_train_d, batch_size, mean, std, shuffle=True,
                               augment=augment, rng=rng, drop_last=drop_last)
    steps = len(train_iter)
    opt = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_schedule(schedule, lr, epochs)
    sync_every = sync_every or (50 if device == "gpu" else 1)
    settings = dict(settings or {})

    start_epoch, start_step, history, partial = 0, 0, [], None
    if resume is not None:
        meta = load_checkpoint(resume, model, opt)
        start_epoch, start_step = int(meta["epoch"]), int(meta.get("step", 0))
        history = list(meta.get("history", []))
        train_iter.rng = rng = rng_from_state(meta["data_rng"])
        _set_dropout_states(model, meta.get("dropout_rngs"))
        partial = meta.get("partial")
    write_metrics(out / METRICS, history)

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
            if skip and partial:
                loss_sum += partial["loss_sum"]
                correct += int(partial["correct"])
                seen = int(partial["seen"])
            t0 = time.perf_counter()
            lr_epoch = sched(epoch)
            bar = _progress(progress, steps, skip, f"epoch {epoch + 1}/{epochs}")
            step = skip
            interrupted = False
            try:
                for xb, yb in train_iter.epoch(skip):
                    opt.lr = sched(epoch + step / steps)
                    opt.zero_grad()
                    logits = model(xb)
                    loss, dlogits = softmax_cross_entropy(logits, yb)
                    model.backward(dlogits)
                    opt.step()
                    nb = xb.shape[0]
                    loss_sum += loss * nb                      # stays on the device
                    correct += (logits.argmax(axis=1) == yb).sum()
                    seen += nb
                    seen_now += nb
                    step += 1
                    done_steps += 1
                    if step % sync_every == 0 or step == steps:
                        cur = _check_finite(loss_sum, epoch, step, opt.lr)
                        if bar is not None:
                            bar.set_postfix(loss=f"{cur / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                                            lr=f"{opt.lr:.3g}")
                    if bar is not None:
                        bar.update(1)
                    if guard.requested or (interrupt_after_steps is not None
                                           and done_steps >= interrupt_after_steps):
                        interrupted = True
                        break
            finally:
                if bar is not None:
                    bar.close()
            if interrupted:
                _check_finite(loss_sum, epoch, step, opt.lr)
                path = save_checkpoint(
                    out / CHECKPOINT, model, opt, epoch=epoch, step=step, data_rng=epoch_rng_state,
                    dropout_rngs=_dropout_states(model), history=history, settings=settings,
                    partial={"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen})
                raise KeyboardInterrupt(f"training interrupted at epoch {epoch + 1}, step {step}; "
                                        f"saved {path} (continue with --resume {path})")
            train_time = time.perf_counter() - t0
            train_loss = _check_finite(loss_sum, epoch, step, opt.lr) / max(seen, 1)
            train_acc = int(correct) / max(seen, 1)
            test_loss, test_acc = evaluate(model, x_test_d, y_test_d, batch_size, mean, std)
            row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                       test_acc=test_acc, lr=lr_epoch, images_per_s=seen_now / max(train_time, 1e-9),
                       epoch_time_s=time.perf_counter() - t0)
            history.append(row)
            append_metrics(out / METRICS, row)
            save_checkpoint(out / CHECKPOINT, model, opt, epoch=epoch + 1, step=0, data_rng=rng.bit_generator.state,
                            dropout_rngs=_dropout_states(model), history=history, settings=settings)
            plot_curves(out / CURVES, history, title=settings.get("title"))
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.3f} | "
                      f"test loss {test_loss:.4f} acc {test_acc:.3f} | lr {lr_epoch:.4g} | "
                      f"{row['images_per_s']:.0f} img/s | {row['epoch_time_s']:.1f} s", flush=True)
    if history and not (out / CURVES).exists():
        plot_curves(out / CURVES, history, title=settings.get("title"))
    return history


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
