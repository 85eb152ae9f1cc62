"""Parameters, and the Module base class that every layer and container extends.

A Module holds Parameters (trainable: ``.data`` and ``.grad``), buffers
(non-trained state such as batch norm's moving statistics) and child modules.
Calling it runs ``forward`` and keeps the cache that ``backward`` needs;
``backward(dy)`` returns dL/dx and *adds* parameter gradients into ``p.grad``.

Names: a parameter's full name is the path of module names down to it, joined
with "/", e.g. ``"block2_sepconv1/depthwise_kernel"``. A child contributes its
``name`` to the path, or its index when it has none; a container whose name is
``""`` is transparent (adds nothing), which is how a model built from blocks keeps
Keras's flat ``"layer/weight"`` keys.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..backend import check_device, device_of, get_array_module, to_device, to_numpy

_caching = [True]


@contextlib.contextmanager
def inference_mode():
    """Within this block forward passes keep no caches (no backward possible, less memory)."""
    old = _caching[0]
    _caching[0] = False
    try:
        yield
    finally:
        _caching[0] = old


def caching_enabled() -> bool:
    return _caching[0]


class Parameter:
    """A trainable array and its accumulated gradient.

    ``regularize`` says whether L2 weight decay applies (kernels: yes; BN gamma/beta, biases: no).
    """

    def __init__(self, data, regularize=True):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)
        self.regularize = regularize

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self):
        return int(self.data.size)

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={device_of(self.data)})"


class Module:
    """Base class: parameters, buffers, children, train/eval, device/dtype moves, state dicts."""

    def __init__(self, name=None):
        self.name = name
        self.training = True
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, object] = {}
        self._children: list[Module] = []
        self._cache = None

    # -- registration ---------------------------------------------------------------
    def add_parameter(self, key, data, regularize=True) -> Parameter:
        p = Parameter(data, regularize)
        self._params[key] = p
        return p

    def add_buffer(self, key, data):
        self._buffers[key] = data

    def add_child(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"expected a minixception Module, got {type(module).__name__}")
        self._children.append(module)
        return module

    # -- calling ----------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def _keep(self, cache):
        """Store what backward needs -- unless in ``inference_mode()``."""
        self._cache = cache if caching_enabled() else None

    def _take_cache(self):
        """Hand the cache to backward and forget it (frees the activations)."""
        if self._cache is None:
            raise RuntimeError(
                f"{self._label()}: backward() called before forward() (or twice for one forward, "
                "or after a forward in inference_mode()); run forward first")
        cache, self._cache = self._cache, None
        return cache

    def _label(self):
        return f"{type(self).__name__}({self.name!r})" if self.name else type(self).__name__

    def _check_input_device(self, x):
        """Refuse an input on the other device than the parameters (no silent copies)."""
        for p in self._params.values():
            if device_of(p.data) != device_of(x):
                raise TypeError(
                    f"{self._label()}: input is a {'CuPy (GPU)' if device_of(x) == 'gpu' else 'NumPy (CPU)'} "
                    f"array but the parameters live on the {device_of(p.data)}; expected an input on "
                    f"the {device_of(p.data)} -- move it or call .to({device_of(x)!r}) on the model")
            break

    # -- traversal --------------------------------------------------------------------
    def named_children(self):
        for i, child in enumerate(self._children):
            yield (str(i) if child.name is None else child.name), child

    def modules(self):
        yield self
        for child in self._children:
            yield from child.modules()

    def named_modules(self, prefix=""):
        yield prefix, self
        for key, child in self.named_children():
            yield from child.named_modules(_join(prefix, key))

    def named_parameters(self, prefix=""):
        """Yield ``("path/weight_name", Parameter)`` for every trainable parameter, in order."""
        for key, p in self._params.items():
            yield _join(prefix, key), p
        for key, child in self.named_children():
            yield from child.named_parameters(_join(prefix, key))

    def named_buffers(self, prefix=""):
        for key, b in self._buffers.items():
            yield _join(prefix, key), b
        for key, child in self.named_children():
            yield from child.named_buffers(_join(prefix, key))

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    # -- modes --------------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad[...] = 0

    def clear_caches(self):
        for m in self.modules():
            m._cache = None

    # -- device / dtype -------------------------------------------------------------------
    def to(self, device=None, dtype=None):
        """Move every parameter, gradient and buffer to ``device`` ("cpu"/"gpu") and/or cast to ``dtype``."""
        if device is not None:
            check_device(device)
        for m in self.modules():
            m._cache = None
            for p in m._params.values():
                p.data = _move(p.data, device, dtype)
                p.grad = _move(p.grad, device, dtype)
            for k, b in list(m._buffers.items()):
                m._buffers[k] = _move(b, device, dtype)
            m._on_moved()
        return self

    def _on_moved(self):
        """Hook for layers that hold device-specific state (e.g. a dropout generator)."""

    # -- state dicts ------------------------------------------------------------------------
    def state_dict(self):
        """``{"path/weight": host ndarray}`` for parameters and buffers (copies, on the CPU)."""
        sd = {}
        for k, p in self.named_parameters():
            sd[k] = np.array(to_numpy(p.data), copy=True)
        for k, b in self.named_buffers():
            sd[k] = np.array(to_numpy(b), copy=True)
        return sd

    def _state_slots(self):
        """name -> (getter, setter) for every parameter and buffer."""
        slots = {}

        def walk(m, prefix):
            for key, p in m._params.items():
                slots[_join(prefix, key)] = (lambda p=p: p.data, lambda v, p=p: setattr(p, "data", v))
            for key in m._buffers:
                slots[_join(prefix, key)] = (lambda m=m, key=key: m._buffers[key],
                                             lambda v, m=m, key=key: m._buffers.__setitem__(key, v))
            for key, child in m.named_children():
                walk(child, _join(prefix, key))
        walk(self, "")
        return slots

    def load_state_dict(self, state):
        """Load arrays by name. Every entry is checked first; a refusal changes nothing.

        Raises KeyError naming every missing / unexpected key, ValueError naming every
        mis-shaped one (expected and given shapes).
        """
        slots = self._state_slots()
        missing = [k for k in slots if k not in state]
        unexpected = [k for k in state if k not in slots]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys: {missing}")
            if unexpected:
                parts.append(f"unexpected keys: {unexpected}")
            raise KeyError("load_state_dict refused, nothing was loaded: " + "; ".join(parts))
        bad = []
        for k, (get, _) in slots.items():
            want = tuple(get().shape)
            got = tuple(np.shape(state[k]))
            if want != got:
                bad.append(f"{k}: expected shape {want}, got {got}")
        if bad:
            raise ValueError("load_state_dict refused, nothing was loaded; mis-shaped entries: " + "; ".join(bad))
        new = {}
        for k, (get, _) in slots.items():
            cur = get()
            v = np.asarray(to_numpy(state[k]))
            if v.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict refused, nothing was loaded: {k} has dtype {v.dtype}, expected numbers")
            new[k] = to_device(v.astype(cur.dtype), device_of(cur))
        for k, (get, setter) in slots.items():
            setter(new[k])
        for m in self.modules():
            m._cache = None
            for p in m._params.values():   # keep gradients shaped and placed like the data
                if p.grad.shape != p.data.shape or device_of(p.grad) != device_of(p.data):
                    p.grad = get_array_module(p.data).zeros_like(p.data)

    def __repr__(self):
        return self._label()


def _join(prefix, key):
    if not key:
        return prefix
    return f"{prefix}/{key}" if prefix else key


def _move(a, device, dtype):
    if device is not None:
        a = to_device(a, device)
    if dtype is not None and a.dtype.kind == "f":
        a = a.astype(dtype)
    return a
