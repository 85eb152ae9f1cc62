"""SGD with momentum (heavy-ball or Nesterov), L2 weight decay, and learning-rate schedules.

The update is PyTorch's ``torch.optim.SGD`` (dampening 0), step for step:

    g   = grad + weight_decay * w          (only for parameters with ``regularize``: kernels)
    buf = momentum * buf + g               (buf = g on the first step)
    d   = g + momentum * buf  if nesterov else buf
    w   = w - lr * d

Weight decay is L2 *added to the gradient* (the paper's 1e-5), and it skips batch
norm's gamma/beta and biases, as Keras's ``kernel_regularizer`` does.
"""
from __future__ import annotations

import math

from . import kernels
from .backend import device_of, to_device


def sgd_update(w, grad, buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0, regularize=True):
    """One parameter's SGD step, in place on ``w``; returns its momentum buffer (None without momentum).

    The reference the fused GPU kernel (``kernels/cuda/sgd.py``) is proven equal to;
    ``buf`` is None on the first step.
    """
    g = grad
    if weight_decay and regularize:
        g = g + weight_decay * w
    if momentum:
        if buf is None:
            buf = g.copy()
        else:
            buf *= momentum
            buf += g
        g = g + momentum * buf if nesterov else buf
    w -= lr * g
    return buf


kernels.register_reference("sgd_update", sgd_update, None)


class SGD:
    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        params = list(params)
        if not params:
            raise ValueError("SGD got an empty parameter list")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.params = params
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self.buffers = [None] * len(params)     # momentum buffers, created on the first step
        self.steps = 0

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        for i, p in enumerate(self.params):
            buf = self.buffers[i]
            if buf is not None and device_of(buf) != device_of(p.grad):
                buf = None
            update = kernels.select("sgd_update", p.data, p.grad, buf)   # fused on the GPU
            self.buffers[i] = update.forward(p.data, p.grad, buf, self.lr, self.momentum, self.nesterov,
                                             self.weight_decay, p.regularize)
        self.steps += 1

    # -- state, for checkpoints ---------------------------------------------------------
    def state_dict(self):
        """Host copies of the momentum buffers (``momentum/<i>``) and the settings."""
        from .backend import to_numpy
        sd = {f"momentum/{i}": to_numpy(b).copy() for i, b in enumerate(self.buffers) if b is not None}
        sd["steps"] = self.steps
        sd["lr"] = self.lr
        return sd

    def load_state_dict(self, sd):
        bufs = [None] * len(self.params)
        for key, v in sd.items():
            if not key.startswith("momentum/"):
                continue
            i = int(key.split("/", 1)[1])
            if not 0 <= i < len(self.params):
                raise KeyError(f"optimizer state has a buffer for parameter {i}, but there are {len(self.params)}")
            p = self.params[i]
            if tuple(v.shape) != tuple(p.data.shape):
                raise ValueError(f"optimizer buffer {i}: expected shape {tuple(p.data.shape)}, got {tuple(v.shape)}")
            bufs[i] = to_device(v.astype(p.data.dtype), device_of(p.data))
        self.buffers = bufs
        self.steps = int(sd.get("steps", 0))
        self.lr = float(sd.get("lr", self.lr))


# -- learning-rate schedules: callables epoch (float, fractional within an epoch) -> lr ---------

class Constant:
    def __init__(self, lr):
        self.base_lr = lr

    def __call__(self, epoch):
        return self.base_lr


class StepDecay:
    """The paper's schedule: lr * factor ** floor(epoch / every) (0.045, x0.94 every 2 epochs)."""

    def __init__(self, lr=0.045, factor=0.94, every=2):
        self.base_lr, self.factor, self.every = lr, factor, every

    def __call__(self, epoch):
        return self.base_lr * self.factor ** math.floor(epoch / self.every)


class Cosine:
    """Cosine annealing from lr to ``min_lr`` over ``total_epochs``."""

    def __init__(self, lr, total_epochs, min_lr=0.0):
        if total_epochs <= 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
        self.base_lr, self.total, self.min_lr = lr, total_epochs, min_lr

    def __call__(self, epoch):
        t = min(max(epoch / self.total, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))


def make_schedule(name, lr, total_epochs=None):
    """``"constant" | "step" | "cosine"`` -> a schedule callable."""
    if name == "constant":
        return Constant(lr)
    if name == "step":
        return StepDecay(lr)
    if name == "cosine":
        return Cosine(lr, total_epochs or 1)
    raise ValueError(f"unknown schedule {name!r}: expected 'constant', 'step' or 'cosine'")


