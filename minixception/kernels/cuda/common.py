"""What the CUDA wrappers share: the guard on a backward's ``dy`` and the launch shapes."""
from __future__ import annotations

from ...backend import is_gpu_array

MAX_GRID_Z = 65535          # CUDA's limit on gridDim.z (and .y); the kernels loop past it


def check_dy(dy, shape, dtype, what):
    """Refuse a ``dy`` that the forward did not produce the like of, before any kernel launch.

    A kernel reads raw memory: a float64 ``dy`` into a float32 kernel would be read as garbage,
    a float32 ``dy`` into a float64 one would read past its buffer, a host array would be an
    invalid device pointer. So the device, dtype and shape must be exactly the forward's output's.
    """
    if not is_gpu_array(dy):
        raise TypeError(f"{what} backward: expected dy as a CuPy (GPU) array like the forward's output, "
                        f"got {type(dy).__module__}.{type(dy).__name__}")
    if dy.dtype != dtype:
        raise TypeError(f"{what} backward: expected dy of dtype {dtype} (the forward's), got {dy.dtype}")
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{what} backward: expected dy of shape {tuple(shape)} (the forward's output), "
                         f"got {tuple(dy.shape)}")


def on_gpu(*arrays):
    """Whether every array given (None skipped) is a CuPy array: a kernel takes device pointers only."""
    return all(is_gpu_array(a) for a in arrays if a is not None)


def block_2d(channels, threads=256):
    """A (bx, by) block for a channels x columns launch: bx a power of two covering the channels
    (at most 32, a warp), by the rest of ``threads``."""
    bx = 1
    while bx < min(channels, 32):
        bx *= 2
    return bx, threads // bx


def grid_3d(channels, columns, rows, block):
    """The grid for a (channels, columns, rows) launch with ``block``; rows loop past MAX_GRID_Z."""
    bx, by = block
    return (-(-channels // bx), -(-columns // by), max(1, min(rows, MAX_GRID_Z)))
