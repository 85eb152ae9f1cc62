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
from __future__ import annotations

import types


class CupyStandin(types.ModuleType):
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
    import numpy
    return CupyStandin(numpy, cupy)
