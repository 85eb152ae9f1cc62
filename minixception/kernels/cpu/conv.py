"""Convolution with few input channels (the stem's 3x3 on 3 to 16 channels), NHWC.

    x: (N, H, W, C)        kernel: (kh, kw, C, F)        y: (N, Ho, Wo, F)

Same signature, semantics and results as ``functional.conv2d_forward`` / ``conv2d_backward``
for ``groups=1``, and the same plan -- gather the patches ("im2col"), then one GEMM:

    cols[m, (i, j, c)] = x[n, oy*sh - top + i, ox*sw - left + j, c]   (0 outside: the padding)
    y = cols @ kernel.reshape(kh*kw*C, F)

What is slow in the reference with few channels is the gathering: NumPy copies one tap at
a time, and a tap of an RGB image is 3 values per pixel, so the copy loops are all
overhead. Here a compiled loop writes each patch row in one go, zero padding included
(no padded copy of x). Backward is the GEMMs transposed (dkernel = cols^T dy,
dcols = dy kernel^T) and the compiled adjoint of the gather (col2im) adds each patch
value's gradient back to its input pixel.

(A fully direct loop -- each output pixel accumulating ``x value * kernel row`` over its
taps -- was tried first: its inner loops are F long, too short for the compiler to
vectorise well, and it ran several times slower than gather + GEMM.)

Each batch chunk is gathered and multiplied on one of the kernels' threads (so the GEMMs
are split over the batch like the rest, whatever BLAS's own threading). The kernel and
bias gradients are per-chunk products, added in float64 in chunk order: bit-identical
whatever the number of threads.
"""
from __future__ import annotations

import numba
import numpy as np

from ...functional.padding import conv_geometry, pair
from .. import Kernel, register
from . import threads

MAX_CHANNELS = 1024    # (a 1024-channel 3x3 patch row: 9216 values per output pixel)


@numba.njit(nogil=True, cache=True)
def _im2col(x, c, kh, kw, sh, sw, top, left, oh, ow, cols):
    """x: (n, H, W*C) -> cols: (n*oh*ow, kh*kw*C), zeros where a tap falls outside x.

    A window row that lies inside x is kw*C contiguous values of x: copied in one loop.
    """
    n, h, wc = x.shape
    w = wc // c
    span = kw * c
    zero = np.zeros(1, cols.dtype)[0]
    m = 0
    for b in range(n):
        for oy in range(oh):
            y0 = oy * sh - top
            for ox in range(ow):
                x0 = ox * sw - left
                row = cols[m]
                for i in range(kh):
                    k = i * span
                    yy = y0 + i
                    if yy < 0 or yy >= h:
                        for t in range(span):
                            row[k + t] = zero
                    elif x0 >= 0 and x0 + kw <= w:
                        src = x[b, yy]
                        start = x0 * c
                        for t in range(span):
                            row[k + t] = src[start + t]
                    else:
                        src = x[b, yy]
                        for j in range(kw):
                            xx = x0 + j
                            inside = 0 <= xx < w
                            for ch in range(c):
                                row[k + j * c + ch] = src[xx * c + ch] if inside else zero
                m += 1


@numba.njit(nogil=True, cache=True)
def _col2im(dcols, c, kh, kw, sh, sw, top, left, oh, ow, dx):
    """Adjoint of _im2col: dx: (n, H, W*C) = the sum of each patch value's gradient at its pixel."""
    n, h, wc = dx.shape
    w = wc // c
    span = kw * c
    dx[...] = 0
    m = 0
    for b in range(n):
        for oy in range(oh):
            y0 = oy * sh - top
            for ox in range(ow):
                x0 = ox * sw - left
                row = dcols[m]
                for i in range(kh):
                    k = i * span
                    yy = y0 + i
                    if yy < 0 or yy >= h:
                        continue
                    dst = dx[b, yy]
                    if x0 >= 0 and x0 + kw <= w:
                        start = x0 * c
                        for t in range(span):
                            dst[start + t] += row[k + t]
                    else:
                        for j in range(kw):
                            xx = x0 + j
                            if 0 <= xx < w:
                                for ch in range(c):
                                    dst[xx * c + ch] += row[k + j * c + ch]
                m += 1


def _geometry(x, kernel, stride, padding):
    kh, kw = kernel.shape[:2]
    sh, sw = pair(stride, "stride")
    pads, (oh, ow) = conv_geometry(x.shape[1], x.shape[2], (kh, kw), (sh, sw), padding)
    return sh, sw, pads[0][0], pads[1][0], oh, ow


def conv2d_forward(x, kernel, bias=None, stride=1, padding="valid", groups=1):
    """x: (N, H, W, C), kernel: (kh, kw, C, F), bias: (F,) or None -> y: (N, Ho, Wo, F), cache."""
    sh, sw, top, left, oh, ow = _geometry(x, kernel, stride, padding)
    n = x.shape[0]
    kh, kw, c, f = kernel.shape
    p = oh * ow                                         # patch rows per image
    x3 = x.reshape(n, x.shape[1], -1)                  # (N, H, W*C): a window row is one run
    w2 = kernel.reshape(kh * kw * c, f)
    cols = np.empty((n * p, kh * kw * c), dtype=x.dtype)
    y2 = np.empty((n * p, f), dtype=x.dtype)

    def piece(lo, hi):                                  # gather this chunk's patches, then its GEMM
        rows = slice(lo * p, hi * p)
        _im2col(x3[lo:hi], c, kh, kw, sh, sw, top, left, oh, ow, cols[rows])
        np.matmul(cols[rows], w2, out=y2[rows])
        if bias is not None:
            y2[rows] += bias
    threads.run_chunks(piece, threads.chunk_bounds(n, p * kh * kw * c * f))
    return y2.reshape(n, oh, ow, f), (cols, w2, kernel.shape, bias is not None, (sh, sw, top, left, oh, ow), x.shape)


def conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, F) -> dx: (N, H, W, C), dkernel: (kh, kw, C, F), dbias: (F,) or None."""
    cols, w2, k_shape, has_bias, (sh, sw, top, left, oh, ow), x_shape = cache
    n = x_shape[0]
    kh, kw, c, f = k_shape
    if dy.shape != (n, oh, ow, f) or dy.dtype != cols.dtype:
        raise TypeError(f"conv2d backward: expected dy of shape {(n, oh, ow, f)} and dtype {cols.dtype} "
                        f"(the forward's output), got shape {dy.shape} and dtype {dy.dtype}")
    p = oh * ow
    dy2 = np.ascontiguousarray(dy).reshape(n * p, f)
    dx = np.empty((n, x_shape[1], x_shape[2] * c), dtype=cols.dtype)

    def piece(lo, hi):
        rows = slice(lo * p, hi * p)
        _col2im(dy2[rows] @ w2.T, c, kh, kw, sh, sw, top, left, oh, ow, dx[lo:hi])
        dk = (cols[rows].T @ dy2[rows]).astype(np.float64)
        db = dy2[rows].sum(axis=0, dtype=np.float64) if has_bias else None
        return dk, db

    parts = threads.run_chunks(piece, threads.chunk_bounds(n, p * kh * kw * c * f))
    dk, db = parts[0]
    for dk_part, db_part in parts[1:]:                  # chunk order, whatever ran where
        dk = dk + dk_part
        if has_bias:
            db = db + db_part
    dtype = cols.dtype
    return dx.reshape(x_shape), dk.astype(dtype).reshape(k_shape), (db.astype(dtype) if has_bias else None)


def supports(x, kernel=None, bias=None, stride=1, padding="valid", groups=1) -> bool:
    """Few-channel (C <= MAX_CHANNELS), groups=1, NumPy float32/float64 C-contiguous NHWC input
    with a kernel (and bias) of its dtype and a geometry that fits; else the reference runs."""
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous and x.size > 0 and groups == 1):
        return False
    if not (isinstance(kernel, np.ndarray) and kernel.ndim == 4 and kernel.dtype == x.dtype
            and kernel.shape[2] == x.shape[3] and kernel.shape[3] > 0):
        return False
    if x.shape[3] > MAX_CHANNELS:
        return False
    if bias is not None and not (isinstance(bias, np.ndarray) and bias.shape == (kernel.shape[3],)
                                 and bias.dtype == x.dtype):
        return False
    try:
        sh, sw = pair(stride, "stride")
        if min(sh, sw) < 1:
            return False
        pads, _ = conv_geometry(x.shape[1], x.shape[2], kernel.shape[:2], (sh, sw), padding)
    except (ValueError, TypeError):
        return False
    return min(pads[0] + pads[1]) >= 0


register("conv2d", "cpu", Kernel("numba", conv2d_forward, conv2d_backward, supports))
