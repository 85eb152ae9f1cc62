"""Parameters, and the Module base class that every layer and container extends.

A Module holds Parameters (trainable: ``.data`` and ``.grad``), buffers
(non-trained state such as batch norm's moving statistics) and child modules.
Calling it runs ``forward`` and keeps the cache that ``backward`` needs;
``backward(dy)`` returns dL/dx and *adds* parameter gradients into ``p.grad``.

Every forward stores its cache with ``_keep(cache, y)`` and every backward takes it
back with ``_take_cache(dy)``. That one pair is where ``dy`` is checked against the
forward's output -- same shape, same dtype, same device -- before any arithmetic, so
a float64 gradient into a float32 model, or a NumPy gradient into a GPU model, is
refused with the layer's name instead of being promoted or misread.

Names: a parameter's full name is the path of module names down to it, joined
with "/", e.g. ``"block2_sepconv1/depthwise_kernel"``. A child contributes its
``name`` to the path, or its index when it has none; a container whose name is
``""`` is transparent (adds nothing), which is how a model built from blocks keeps
Keras's flat ``"layer/weight"`` keys. Two different layers may not end up at one
path (their state-dict entries would collide): that is a ``ValueError``.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ..backend import check_device, device_of, get_array_module, to_device, to_numpy

# Whether forwards keep what backward needs. A context variable, not a module global: each
# thread (and each asyncio task) sees its own value, so an evaluation running under
# inference_mode() in one thread cannot switch caching off for a training loop in another.
_caching = contextvars.ContextVar("minixception_caching", default=True)


@contextlib.contextmanager
def inference_mode():
    """Within this block forward passes keep no caches (no backward possible, less memory).

    The switch is per context, hence per thread: other threads keep caching while one is in
    here. Blocks nest, and on leaving (normally or by an exception) the value from before the
    block comes back. A thread started with ``threading.Thread`` from inside the block begins
    with a fresh context, so it caches (the default) until it enters ``inference_mode()``
    itself. (Python builds that set ``sys.flags.thread_inherit_context``, the free-threaded
    3.14 ones, give a new thread a copy of its parent's context instead, so there it starts in
    inference mode.) Code that wants the block to cover work in another thread enters it in
    that thread, or runs the work with ``contextvars.copy_context().run``.
    """
    token = _caching.set(False)
    try:
        yield
    finally:
        _caching.reset(token)


def caching_enabled() -> bool:
    """False inside ``inference_mode()`` (in this thread / context), True otherwise."""
    return _caching.get()


class Parameter:
    """A trainable array and its accumulated gradient.

    ``regularize`` says whether L2 weight decay applies (kernels: yes; BN gamma/beta, biases: no).
    ``state`` holds what an optimiser keeps per parameter (SGD's momentum buffer). It lives
    here, not in the optimiser, so that ``Module.to`` moves and casts it together with
    ``data`` and ``grad``: a model moved to another device or dtype keeps its momentum.
    """

    def __init__(self, data, regularize=True):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)
        self.regularize = regularize
        self.state: dict[str, object] = {}

    def to(self, device=None, dtype=None):
        """Move (and/or cast) the data, the gradient and the optimiser state together."""
        self.data = _move(self.data, device, dtype)
        self.grad = _move(self.grad, device, dtype)
        self.state = {k: _move(v, device, dtype) for k, v in self.state.items()}
        return self

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
        # the cheap check at build time; named_modules() also catches collisions across
        # transparent ("") containers, which siblings alone cannot see
        if module.name and any(c.name == module.name and c is not module for c in self._children):
            raise ValueError(f"{self._label()}: a second layer named {module.name!r} was added; "
                             "layer names must be unique within a model (they are state-dict keys)")
        self._children.append(module)
        return module

    # -- calling ----------------------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError

    def _keep(self, cache, y):
        """Store what backward needs, and what its ``dy`` must look like (``y``'s shape, dtype
        and device) -- unless in ``inference_mode()``. Every forward ends with this call."""
        self._cache = (cache, _Expected.of(y)) if caching_enabled() else None

    def _take_cache(self, dy):
        """Check ``dy`` against the forward's output, then hand the cache to backward and forget
        it (frees the activations). Every backward starts with this call; a refused ``dy``
        leaves the cache in place, so a corrected call can follow."""
        if self._cache is None:
            raise RuntimeError(
                f"{self._label()}: backward() called before forward() (or twice for one forward, "
                "or after a forward in inference_mode()); run forward first")
        cache, expected = self._cache
        expected.check(dy, self)
        self._cache = None
        return cache

    @property
    def holds_cache(self) -> bool:
        """True between a forward that kept a cache and the backward that uses it."""
        return self._cache is not None

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
    def children(self):
        """The direct child modules, in order."""
        return list(self._children)

    def named_children(self):
        for i, child in enumerate(self._children):
            yield (str(i) if child.name is None else child.name), child

    def modules(self):
        yield self
        for child in self._children:
            yield from child.modules()

    def _walk(self, prefix, key=None):
        """(path, module, key it added to the path) for this module and all below, depth first."""
        yield prefix, self, key
        for k, child in self.named_children():
            yield from child._walk(_join(prefix, k), k)

    def named_modules(self, prefix=""):
        """``[(path, module)]`` for this module and every module below it, depth first.

        Raises ValueError when two different modules share a path, or two parameters /
        buffers share a state-dict key: one of them would silently never be saved.
        """
        walked, layers, entries = [], {}, {}
        for path, m, key in self._walk(prefix):
            walked.append((path, m))
            if key:        # a transparent child (name "") shares its parent's path by design
                if layers.setdefault(path, m) is not m:
                    raise ValueError(f"{self._label()}: two different layers have the path {path!r} "
                                     "(a duplicate layer name); names must be unique within a model")
            for k in (*m._params, *m._buffers):
                if entries.setdefault(_join(path, k), m) is not m:
                    raise ValueError(f"{self._label()}: two different layers both hold {_join(path, k)!r} "
                                     "(a duplicate layer name); names must be unique within a model")
        return walked

    def named_parameters(self, prefix="", recurse=True):
        """``[("path/weight_name", Parameter)]`` for every trainable parameter, in order
        (only this module's own ones when ``recurse`` is False)."""
        walked = self.named_modules(prefix) if recurse else [(prefix, self)]
        return [(_join(path, k), p) for path, m in walked for k, p in m._params.items()]

    def named_buffers(self, prefix="", recurse=True):
        """``[("path/buffer_name", array)]`` for every buffer (BN moving statistics), in order."""
        walked = self.named_modules(prefix) if recurse else [(prefix, self)]
        return [(_join(path, k), b) for path, m in walked for k, b in m._buffers.items()]

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
                p.to(device, dtype)
            for k, b in list(m._buffers.items()):
                m._buffers[k] = _move(b, device, dtype)
        return self

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
        for path, m in self.named_modules():
            for key, p in m._params.items():
                slots[_join(path, key)] = (lambda p=p: p.data, lambda v, p=p: setattr(p, "data", v))
            for key in m._buffers:
                slots[_join(path, key)] = (lambda m=m, key=key: m._buffers[key],
                                           lambda v, m=m, key=key: m._buffers.__setitem__(key, v))
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


class _Expected:
    """What a backward's ``dy`` must be: the forward output's shape, dtype and device."""

    __slots__ = ("shape", "dtype", "device")

    def __init__(self, shape, dtype, device):
        self.shape, self.dtype, self.device = shape, dtype, device

    @classmethod
    def of(cls, y):
        return cls(tuple(y.shape), y.dtype, device_of(y))

    def describe(self):
        return f"a {_DEVICE_WORDS[self.device]} {self.dtype} array of shape {self.shape}"

    def check(self, dy, module):
        """Raise TypeError (not an array, wrong device or dtype) or ValueError (wrong shape).

        Runs on every backward, so the message is only built when something is wrong."""
        if not (hasattr(dy, "shape") and hasattr(dy, "dtype")):
            raise TypeError(f"{self._want(module)}; got {type(dy).__name__}")
        device = device_of(dy)
        if device != self.device:
            raise TypeError(f"{self._want(module)}; got a {_DEVICE_WORDS[device]} array "
                            "(move it with .to / to_device)")
        if dy.dtype != self.dtype:
            # a silent promotion would turn a float32 model's gradients into float64 ones, and a
            # hand-written CUDA kernel would read the bytes as the wrong type
            raise TypeError(f"{self._want(module)}; got dtype {dy.dtype}")
        if dy.shape != self.shape:
            raise ValueError(f"{self._want(module)}; got shape {tuple(dy.shape)}")

    def _want(self, module):
        return f"{module._label()}.backward: expected dy like the forward's output, {self.describe()}"


_DEVICE_WORDS = {"cpu": "NumPy (CPU)", "gpu": "CuPy (GPU)"}


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
