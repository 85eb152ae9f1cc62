"""Helpers the test files share (imported as ``from .helpers import ...``).

* ``tiny_model`` / ``tiny_data`` / ``params_of``: a small conv net and dataset for the training
  and checkpoint tests, fast on a CPU and independent of ``mx.models``.
* ``CupyStandin`` / ``make_standin``: a NumPy that only knows CuPy's names, to run the CuPy code
  path's *names* on the CPU.
* ``FakeGpuArray`` / ``fake_gpu``: NumPy arrays that the package takes for GPU arrays, to test
  device checks and device moves on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import types

import numpy as np

import minixception as mx
from minixception import backend, nn


# ---------------------------------------------------------------- a tiny model and dataset
def tiny_model(seed=0, width=4, dropout=0.0):
    r = np.random.default_rng(seed)
    layers = [nn.Conv2D(3, width, 3, stride=2, padding="same", use_bias=False, rng=r), nn.BatchNorm2D(width),
              nn.ReLU(), nn.SeparableConv2D(width, 2 * width, rng=r), nn.BatchNorm2D(2 * width), nn.ReLU(),
              nn.MaxPool2D(), nn.Flatten()]     # 32x32 -> 8x8x(2w); flatten: memorises fast
    if dropout:
        layers.append(nn.Dropout(dropout, rng=r))
    layers.append(nn.Dense(8 * 8 * 2 * width, 10, rng=r))
    return nn.Sequential(*layers)


def tiny_data(n_train=64, n_test=32, seed=0):
    x, y, xt, yt = mx.data.load_shapes(n_train, n_test, seed=seed)
    return dict(x_train=x, y_train=y, x_test=xt, y_test=yt)


def params_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- the CuPy stand-in
class CupyStandin(types.ModuleType):
    """A NumPy that only knows CuPy's names: runs the CuPy code path's *names* on the CPU.

    ``CupyStandin(numpy, cupy)`` behaves like the ``numpy`` module, but asking it for a
    name that ``cupy`` lacks raises AttributeError -- so a ``xp.<numpy-only name>`` in
    the package fails on a machine without a GPU, instead of on the first GPU run.
    Submodules (``xp.random``, ``xp.linalg``, ``xp.lib.stride_tricks``) are wrapped
    the same way. Every name looked up is recorded in ``accessed`` (tests check the
    stand-in was really used).

    It cannot check argument support (keywords CuPy does not take) or array methods;
    tests/test_gpu_ops.py covers those on a GPU.
    """

    def __init__(self, np_module, cp_module, accessed=None):
        super().__init__(np_module.__name__)
        object.__setattr__(self, "_np", np_module)
        object.__setattr__(self, "_cp", cp_module)
        object.__setattr__(self, "accessed", set() if accessed is None else accessed)

    def __getattr__(self, name):
        np_mod, cp_mod = object.__getattribute__(self, "_np"), object.__getattribute__(self, "_cp")
        path = f"{np_mod.__name__.replace('numpy', 'xp', 1)}.{name}"
        if not hasattr(cp_mod, name):
            raise AttributeError(f"{path}: numpy has it but cupy does not ({cp_mod.__name__}.{name} is missing); "
                                 "the GPU path would fail here")
        value = getattr(np_mod, name)          # AttributeError too when numpy lacks it
        self.accessed.add(path)
        if isinstance(value, types.ModuleType):
            return CupyStandin(value, getattr(cp_mod, name), self.accessed)
        return value

    def __repr__(self):
        return f"<CupyStandin of {object.__getattribute__(self, '_np').__name__}>"


def make_standin():
    """The stand-in for ``numpy`` (needs cupy importable; no GPU needed)."""
    import cupy
    return CupyStandin(np, cupy)


# ---------------------------------------------------------------- a pretend GPU
class FakeGpuArray(np.ndarray):
    """A NumPy array that ``fake_gpu()`` makes the package see as a GPU (CuPy) array."""

    def get(self):                     # CuPy's device -> host copy
        return np.array(self.view(np.ndarray))


@contextlib.contextmanager
def fake_gpu(monkeypatch):
    """Within this block ``FakeGpuArray`` counts as a GPU array, and ``Module.to("gpu")`` /
    ``.to("cpu")`` turn arrays into / out of it. Only device bookkeeping works on it: element-wise
    arithmetic does, the ops (which ask for the array module) do not."""
    def to_device(a, device):
        if device == "gpu":
            return a if isinstance(a, FakeGpuArray) else np.array(a).view(FakeGpuArray)
        return a.get() if isinstance(a, FakeGpuArray) else np.asarray(a)

    with monkeypatch.context() as m:
        m.setattr(backend, "is_gpu_array", lambda x: isinstance(x, FakeGpuArray))
        m.setattr(mx.nn.module, "check_device", lambda device: device)
        m.setattr(mx.nn.module, "to_device", to_device)
        yield
