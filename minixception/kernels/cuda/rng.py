"""Dropout masks on the device from a counter-based generator whose whole state is two integers.

CuPy's own generator keeps its state as an opaque device buffer (tens of bytes per GPU
thread, sized by the GPU's SM count): it cannot go into a checkpoint and come back on another
GPU. This one draws element ``i`` of a call as a pure function of ``(key, counter + i)``
(SplitMix64's finaliser, a bijective 64-bit mixer), then advances ``counter`` by the number drawn.
So its state is ``{"key": k, "counter": n}``: saved as JSON, restored anywhere, and the same
numbers come out on any GPU -- and on the CPU, where :func:`uniform_reference` computes them
with NumPy (the reference the CUDA body is proven equal to).

    rng = CounterRNG(key=1234)
    u = rng.random((128, 10), dtype="float32")    # CuPy array in [0, 1); counter += 1280
    state = rng.state(); rng2 = CounterRNG.from_state(state)
"""
from __future__ import annotations

import numpy as np

from ...backend import cupy_module
from . import launches, record

GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MASK64 = (1 << 64) - 1

# z = key + (counter + i) * GOLDEN, mixed; float: the top 24 bits / 2^24, double: the top 53 / 2^53
UNIFORM_BODY = """
unsigned long long z = key + (counter + (unsigned long long)i) * 0x9E3779B97F4A7C15ULL;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
z ^= z >> 31;
if (sizeof(T) == 4) out[i] = (T)((double)(z >> 40) * (1.0 / 16777216.0));
else out[i] = (T)((double)(z >> 11) * (1.0 / 9007199254740992.0));
"""

_kernel = []


def uniform_reference(key, counter, n, dtype):
    """The same numbers on the CPU: (n,) uniform [0, 1) values of ``dtype`` (NumPy)."""
    dtype = np.dtype(dtype)
    i = np.arange(n, dtype=np.uint64)
    z = np.uint64(key) + (np.uint64(counter) + i) * np.uint64(GOLDEN)      # uint64 arrays wrap mod 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    z ^= z >> np.uint64(31)
    if dtype == np.float32:
        return ((z >> np.uint64(40)).astype(np.float64) * (1.0 / 16777216.0)).astype(np.float32)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


class CounterRNG:
    """Uniform [0, 1) numbers on the GPU with a state of two integers (``key``, ``counter``).

    Has the one method dropout uses, ``random(shape, dtype)``; one launch per call.
    """

    def __init__(self, key, counter=0):
        self.key, self.counter = int(key) & MASK64, int(counter) & MASK64

    def random(self, shape, dtype="float64"):
        cp = cupy_module()
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"CounterRNG.random: expected dtype float32 or float64, got {dtype}")
        out = cp.empty(shape, dtype=dtype)
        if not _kernel:
            # out is "raw" and the size explicit: no input array decides the loop size
            _kernel.append(cp.ElementwiseKernel("uint64 key, uint64 counter", "raw T out", UNIFORM_BODY,
                                                "mx_counter_uniform"))
        launches["mx_counter_uniform"] += 1
        _kernel[0](np.uint64(self.key), np.uint64(self.counter), out, size=out.size)
        record(f"counter_rng {dtype}", "compiled")
        self.counter = (self.counter + out.size) & MASK64
        return out

    def state(self) -> dict:
        return {"key": self.key, "counter": self.counter}

    @classmethod
    def from_state(cls, state):
        if not isinstance(state, dict) or set(state) != {"key", "counter"}:
            raise ValueError(f"CounterRNG state: expected {{'key': int, 'counter': int}}, got {state!r}")
        return cls(state["key"], state["counter"])
