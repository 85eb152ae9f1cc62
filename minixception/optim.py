"""SGD with momentum (heavy-ball or Nesterov), L2 weight decay, and learning-rate schedules.

The update is PyTorch's ``torch.optim.SGD`` (dampening 0), step for step:

    g   = grad + weight_decay * w          (only for parameters with ``regularize``: kernels)
    buf = momentum * buf + g               (buf = g on the first step)
    d   = g + momentum * buf  if nesterov else buf
    w   = w - lr * d

Weight decay is L2 *added to the gradient* (the paper's 1e-5), and it skips batch
norm's gamma/beta and biases, as Keras's ``kernel_regularizer`` does.

The momentum buffer of a parameter lives with it, in ``p.state["momentum_buffer"]``,
so ``model.to(device, dtype)`` moves and casts it together with the weights: the
optimiser carries no arrays of its own that could be left behind on the old device.

``PolyakAverage`` keeps the exponential moving average of the weights that the paper evaluates
with (Polyak averaging).
"""
from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np

from . import kernels
from .backend import device_of, to_device, to_numpy


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
        self.steps = 0

    @property
    def buffers(self):
        """The momentum buffers, one per parameter (None before its first step). A read-only tuple:
        the buffers live on the parameters (``p.state``), so assigning here could not stick."""
        return tuple(p.state.get(_BUFFER) for p in self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        for i, p in enumerate(self.params):
            buf = p.state.get(_BUFFER)
            if buf is not None:
                _check_buffer(i, buf, p)
            update = kernels.select("sgd_update", p.data, p.grad, buf)   # one fused kernel on the GPU
            buf = update.forward(p.data, p.grad, buf, self.lr, self.momentum, self.nesterov,
                                 self.weight_decay, p.regularize)
            if buf is not None:
                p.state[_BUFFER] = buf
        self.steps += 1

    # -- state, for checkpoints ---------------------------------------------------------
    def state_dict(self):
        """Host copies of the momentum buffers (``momentum/<i>``) and the settings."""
        from .backend import to_numpy
        sd = {f"momentum/{i}": to_numpy(p.state[_BUFFER]).copy()
              for i, p in enumerate(self.params) if _BUFFER in p.state}
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
        for p, b in zip(self.params, bufs):          # every entry checked above: now all at once
            if b is None:
                p.state.pop(_BUFFER, None)
            else:
                p.state[_BUFFER] = b
        self.steps = int(sd.get("steps", 0))
        self.lr = float(sd.get("lr", self.lr))


_BUFFER = "momentum_buffer"


def _check_buffer(i, buf, p):
    """A buffer that does not match its parameter was changed behind the model's back (set by
    hand): say so rather than reset it, which would silently lose the momentum."""
    if device_of(buf) != device_of(p.data) or buf.dtype != p.data.dtype or buf.shape != p.data.shape:
        raise RuntimeError(
            f"SGD: the momentum buffer of parameter {i} is a {device_of(buf)} {buf.dtype} array of shape "
            f"{tuple(buf.shape)}, but the parameter is a {device_of(p.data)} {p.data.dtype} array of shape "
            f"{tuple(p.data.shape)}; move the model with model.to(...), which moves the buffers with it")

# -- Polyak averaging: an exponential moving average of the weights, used at evaluation -------

class PolyakAverage:
    """Exponential moving average of a model's trainable parameters (Polyak averaging).

        avg = PolyakAverage(model, decay=0.999)   # the averages start at the model's weights now
        ...; opt.step(); avg.update()            # a = decay * a + (1 - decay) * w, per parameter
        with avg.applied():                      # the model holds the averages (evaluate, save...)
            evaluate(model)
        # ...and its trained weights are back, exactly (the very same arrays), even after an error

    Only the trainable parameters are averaged: buffers such as batch norm's moving statistics
    stay as training left them (they already are moving averages). The averages live on the
    parameters' device and in their dtype, and follow the model when it moves (``update`` and
    ``applied`` move them to where each parameter lives). One ``xp`` code path: NumPy or CuPy.
    """

    def __init__(self, model, decay):
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1) (e.g. 0.999), got {decay!r}")
        named = list(model.named_parameters())
        if not named:
            raise ValueError("PolyakAverage got a model without trainable parameters")
        self.model, self.decay = model, float(decay)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.averages = [p.data.copy() for p in self.params]
        self.updates = 0
        self._applied = False

    def _follow(self, i):
        """The i-th average, on its parameter's current device (moved there once if needed)."""
        p, a = self.params[i], self.averages[i]
        if device_of(a) != device_of(p.data) or a.dtype != p.data.dtype:
            a = self.averages[i] = to_device(a, device_of(p.data)).astype(p.data.dtype)
        return a

    def update(self):
        """``a = decay * a + (1 - decay) * w`` for every trainable parameter (call after each step)."""
        if self._applied:
            raise RuntimeError("PolyakAverage.update() inside applied(): the model holds the averages, "
                               "not trained weights")
        d = self.decay
        for i, p in enumerate(self.params):
            a = self._follow(i)
            a *= a.dtype.type(d)
            a += a.dtype.type(1.0 - d) * p.data
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """Within the block the model's parameters hold (copies of) the averages; on exit, even on an
        exception, each parameter gets back the very array it held before."""
        if self._applied:
            raise RuntimeError("PolyakAverage.applied() is already active (it does not nest)")
        saved = [p.data for p in self.params]
        self._applied = True
        try:
            for i, p in enumerate(self.params):
                p.data = self._follow(i).copy()      # a copy: code in the block cannot spoil the averages
            self.model.clear_caches()
            yield self
        finally:
            for p, w in zip(self.params, saved):
                p.data = w
            self.model.clear_caches()
            self._applied = False

    # -- state, for checkpoints -----------------------------------------------------------------
    def state_dict(self):
        """``{"decay": float, "updates": int, "averages": {parameter name: host array}}``."""
        return {"decay": self.decay, "updates": self.updates,
                "averages": {n: np.array(to_numpy(a), copy=True) for n, a in zip(self.names, self.averages)}}

    def load_state_dict(self, state):
        """Load averages saved by ``state_dict``; every name and shape is checked first (all or nothing)."""
        avgs = state.get("averages") if isinstance(state, dict) else None
        if not isinstance(avgs, dict):
            raise KeyError("PolyakAverage state needs an 'averages' dict {parameter name: array}")
        missing = [n for n in self.names if n not in avgs]
        unexpected = [n for n in avgs if n not in self.names]
        if missing or unexpected:
            raise KeyError(f"PolyakAverage state does not fit the model: missing {missing}, unexpected {unexpected}")
        bad = [f"{n}: expected {tuple(p.data.shape)}, got {tuple(np.shape(avgs[n]))}"
               for n, p in zip(self.names, self.params) if tuple(np.shape(avgs[n])) != tuple(p.data.shape)]
        if bad:
            raise ValueError("PolyakAverage state has mis-shaped averages: " + "; ".join(bad))
        self.averages = [to_device(np.asarray(to_numpy(avgs[n])).astype(p.data.dtype), device_of(p.data))
                         for n, p in zip(self.names, self.params)]
        self.decay = float(state.get("decay", self.decay))
        self.updates = int(state.get("updates", 0))


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


