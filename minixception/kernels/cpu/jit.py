"""How the CPU kernels are compiled: numba, serial, ``nogil``, cached on disk, lazily.

``@kernel_jit`` makes a lazy numba dispatcher: nothing compiles at import; the first
call with float32 arrays compiles the float32 version (and writes it to numba's disk
cache), the first float64 call the float64 one. Later processes load the compiled code
from the cache in a fraction of a second.

* serial: one call works on the range of the batch it is given; ``threads.run_chunks``
  spreads the ranges over the cores. (numba's ``parallel=True`` OpenMP threads fight
  OpenBLAS's threads over the cores in a whole training step.)
* ``nogil``: the compiled loop releases the GIL, so plain Python threads run in parallel.
* ``error_model="numpy"``: integer ``//`` and ``%`` skip the divide-by-zero check
  (the strides are checked >= 1 before any kernel runs).

A cold compile takes seconds, so the first one in a process prints a one-line notice
on stderr: the command line and the chapters then do not look frozen.
"""
from __future__ import annotations

import sys

import numba
from numba.core import event

_PACKAGE = __name__.split(".")[0]            # "minixception"
_said = False


class _CompileNotice(event.Listener):
    """Prints one line on stderr the first time numba compiles one of this package's kernels.

    numba emits "numba:compile" only when it really compiles: a kernel loaded from the
    disk cache passes silently.
    """

    def on_start(self, ev):
        global _said
        dispatcher = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
        if _said or not module.startswith(_PACKAGE + "."):
            return
        _said = True
        print(f"{_PACKAGE}: compiling the numba CPU kernels on first use (once; later runs load them "
              f"from numba's disk cache) ...", file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


event.register("numba:compile", _CompileNotice())


def kernel_jit(fn):
    """A lazy, serial, nogil, disk-cached numba dispatcher for ``fn`` (compiled per dtype on first call)."""
    return numba.njit(nogil=True, cache=True, error_model="numpy")(fn)
