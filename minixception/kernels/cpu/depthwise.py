"""Depthwise convolution on the CPU: compiled loops, channels innermost, split over the batch.

The same op as ``functional/depthwise.py`` (whose docstring derives the formulas), written
as the loops a C programmer would write:

    y[n, i, j, c]  = sum_{a, b} x[n, i*s - top + a, j*s - left + b, c] * k[a, b, c]   (0 outside x)
    dx[n, h, w, c] = sum over the taps (a, b) whose output (i, j) read x[n, h, w]:
                     h + top - a = i*s,  w + left - b = j*s   ->   dy[n, i, j, c] * k[a, b, c]
    dk[a, b, c]    = sum_{n, i, j} x[n, i*s - top + a, j*s - left + b, c] * dy[n, i, j, c]

* No padded copy of x: the loops skip the taps that fall into the padding.
* The channel loop is innermost: NHWC keeps the channels of a pixel contiguous, so that
  loop reads and writes consecutive memory and compiles to vector instructions.
* The input gradient is a gather (each dx element sums what it contributed to), like the
  CUDA kernel: every dx element is written by one thread, no atomics.
* Each call covers images ``n0 <= n < n1``; ``threads.run_chunks`` gives the chunks to the
  cores. The kernel gradient is a sum over the batch: each chunk returns its partial sum
  (accumulated per image in the array's dtype, across images in float64) and the chunks'
  partials are added in chunk order, so the result does not depend on the thread count.

Registered for "depthwise_conv2d" and, composed with the reference's pointwise GEMM,
"separable_conv2d".
"""
from __future__ import annotations

import numpy as np

from ... import functional as F
from ...functional.padding import conv_geometry, pair
from ...functional.separable import INTERMEDIATE_ACTIVATIONS
from .. import Kernel, register
from . import gemm, threads
from .jit import kernel_jit


# ------------------------------------------------------------------ the compiled loops
@kernel_jit
def _forward(x, k, y, sh, sw, top, left, n0, n1):
    """x: (N, H, W, C), k: (kh, kw, C) -> writes y[n0:n1]: (n1 - n0, Ho, Wo, C)."""
    h_in, w_in, c_n = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = k.shape[0], k.shape[1]
    oh, ow = y.shape[1], y.shape[2]
    for n in range(n0, n1):
        for i in range(oh):
            for j in range(ow):
                for c in range(c_n):
                    y[n, i, j, c] = 0
                for a in range(kh):
                    h = i * sh - top + a
                    if h < 0 or h >= h_in:
                        continue                      # the tap is in the padding
                    for b in range(kw):
                        w = j * sw - left + b
                        if w < 0 or w >= w_in:
                            continue
                        for c in range(c_n):
                            y[n, i, j, c] += x[n, h, w, c] * k[a, b, c]


@kernel_jit
def _backward_input(dy, k, dx, sh, sw, top, left, n0, n1):
    """dy: (N, Ho, Wo, C), k: (kh, kw, C) -> writes dx[n0:n1]: (n1 - n0, H, W, C)."""
    h_in, w_in, c_n = dx.shape[1], dx.shape[2], dx.shape[3]
    kh, kw = k.shape[0], k.shape[1]
    oh, ow = dy.shape[1], dy.shape[2]
    for n in range(n0, n1):
        for h in range(h_in):
            for w in range(w_in):
                for c in range(c_n):
                    dx[n, h, w, c] = 0
                for a in range(kh):
                    hp = h + top - a                  # = i * sh for the output row i that tap a linked to h
                    if hp < 0 or hp % sh != 0 or hp // sh >= oh:
                        continue
                    i = hp // sh
                    for b in range(kw):
                        wp = w + left - b
                        if wp < 0 or wp % sw != 0 or wp // sw >= ow:
                            continue
                        j = wp // sw
                        for c in range(c_n):
                            dx[n, h, w, c] += dy[n, i, j, c] * k[a, b, c]


@kernel_jit
def _backward_kernel(x, dy, kh, kw, sh, sw, top, left, n0, n1):
    """x: (N, H, W, C), dy: (N, Ho, Wo, C) -> the partial dk over images n0:n1, (kh, kw, C) float64."""
    h_in, w_in, c_n = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = dy.shape[1], dy.shape[2]
    total = np.zeros((kh, kw, c_n), dtype=np.float64)
    part = np.empty((kh, kw, c_n), dtype=x.dtype)     # one image's sum, in the array's dtype
    for n in range(n0, n1):
        part[:] = 0
        for i in range(oh):
            for a in range(kh):
                h = i * sh - top + a
                if h < 0 or h >= h_in:
                    continue
                for j in range(ow):
                    for b in range(kw):
                        w = j * sw - left + b
                        if w < 0 or w >= w_in:
                            continue
                        for c in range(c_n):
                            part[a, b, c] += x[n, h, w, c] * dy[n, i, j, c]
        for a in range(kh):
            for b in range(kw):
                for c in range(c_n):
                    total[a, b, c] += part[a, b, c]
    return total


# ---------------------------------------------- stride 1: whole rows, (w, c) flattened into one loop
# At stride 1 a tap (a, b) shifts a whole image row by b - left columns, so the pixels of
# a row and their channels form one contiguous run: with rows viewed as (W*C,) vectors the
# innermost loop runs over W*C values (not just C), which compiles to long vector loops
# even for few channels. The kernel row is tiled to that length, kt[a, b, j*C + c] = k[a, b, c].
# Forward and input gradient are the same loop: dst[i, j] = sum_{a,b} src[i + s*(a - top),
# j + s*(b - left)] * k[a, b], with s = +1 (forward: src = x) or s = -1 (dx: src = dy).
@kernel_jit
def _tapsum_rows(src, kt, dst, c_n, top, left, s, n0, n1):
    """src: (N, Hs, Ws*C), kt: (kh, kw, Wd*C) -> writes dst[n0:n1]: (n1 - n0, Hd, Wd*C)."""
    h_src, w_src = src.shape[1], src.shape[2] // c_n
    h_dst, w_dst = dst.shape[1], dst.shape[2] // c_n
    kh, kw = kt.shape[0], kt.shape[1]
    for n in range(n0, n1):
        for i in range(h_dst):
            for q in range(w_dst * c_n):
                dst[n, i, q] = 0
            for a in range(kh):
                h = i + s * (a - top)
                if h < 0 or h >= h_src:
                    continue
                for b in range(kw):
                    off = s * (b - left)                # column shift of this tap
                    j0, j1 = max(0, -off), min(w_dst, w_src - off)
                    # views that start where the run starts: the loop index t is then plainly
                    # >= 0, so numba drops its negative-index check and the loop vectorises
                    out = dst[n, i, j0 * c_n:]
                    inp = src[n, h, (j0 + off) * c_n:]
                    kr = kt[a, b, j0 * c_n:]
                    for t in range((j1 - j0) * c_n):
                        out[t] += inp[t] * kr[t]


@kernel_jit
def _kernel_grad_rows(x, dy, kh, kw, c_n, top, left, n0, n1):
    """Stride 1. x: (N, H, W*C), dy: (N, Ho, Wo*C) -> the partial dk over images n0:n1, (kh, kw, C) float64."""
    h_in, w_in = x.shape[1], x.shape[2] // c_n
    oh, ow = dy.shape[1], dy.shape[2] // c_n
    total = np.zeros((kh, kw, c_n), dtype=np.float64)
    part = np.empty((kh, kw, ow * c_n), dtype=x.dtype)     # one image, per (tap, column, channel)
    for n in range(n0, n1):
        part[:] = 0
        for i in range(oh):
            for a in range(kh):
                h = i - top + a
                if h < 0 or h >= h_in:
                    continue
                for b in range(kw):
                    off = b - left
                    j0, j1 = max(0, -off), min(ow, w_in - off)
                    acc = part[a, b, j0 * c_n:]
                    inp = x[n, h, (j0 + off) * c_n:]
                    g = dy[n, i, j0 * c_n:]
                    for t in range((j1 - j0) * c_n):
                        acc[t] += inp[t] * g[t]
        for a in range(kh):                                  # fold the columns, in float64
            for b in range(kw):
                for q in range(ow * c_n):
                    total[a, b, q % c_n] += part[a, b, q]
    return total


# ------------------------------------------------------------------ the op, as the reference's pair
class _Cache:
    """What the fast backward needs: the input itself (no padded copy) and the geometry."""
    __slots__ = ("x", "kernel", "stride", "pads")

    def __init__(self, x, kernel, stride, pads):
        self.x, self.kernel, self.stride, self.pads = x, kernel, stride, pads


def _is_float_c(a):
    return isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous


def supports(x, kernel=None, stride=1, padding="same", *args, **kwargs):
    """True for C-contiguous float32/float64 NumPy input and kernel of one dtype and a valid
    geometry; anything else (a bad call included) is left to the reference, which explains it."""
    if not (_is_float_c(x) and x.ndim == 4 and _is_float_c(kernel) and kernel.dtype == x.dtype):
        return False
    if kernel.ndim != 4 or kernel.shape[3] != 1 or kernel.shape[2] != x.shape[3]:
        return False
    try:
        sh, sw = pair(stride, "stride")
        if min(sh, sw) < 1:
            return False
        conv_geometry(x.shape[1], x.shape[2], kernel.shape[:2], (sh, sw), padding)
    except (TypeError, ValueError):
        return False
    return True


# Below this many channels the per-pixel loop over C is too short to vectorise well, and the
# stride-1 row form (W*C values per loop) is the faster one; above, the per-pixel loops keep
# their working set (a pixel's channels, a (kh, kw, C) partial sum) in the L1 cache.
ROWS_BELOW_CHANNELS = 64


def _by_rows(sh, sw, c):
    return (sh, sw) == (1, 1) and c < ROWS_BELOW_CHANNELS


def _chunks(n, per_image):
    return threads.chunk_bounds(n, per_image)


def depthwise_conv2d_forward(x, kernel, stride=1, padding="same"):
    """x: (N, H, W, C), kernel: (kh, kw, C, 1) -> y: (N, Ho, Wo, C), cache (as the reference)."""
    if not supports(x, kernel, stride, padding):
        return F.depthwise_conv2d_forward(x, kernel, stride, padding)      # explains a bad call
    kh, kw, c, _ = kernel.shape
    sh, sw = pair(stride, "stride")
    n, h, w, _ = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    top, left = pads[0][0], pads[1][0]
    k = kernel.reshape(kh, kw, c)
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    bounds = _chunks(n, oh * ow * c * kh * kw)
    if _by_rows(sh, sw, c):
        x3, y3, kt = x.reshape(n, h, w * c), y.reshape(n, oh, ow * c), np.tile(k, (1, 1, ow))
        threads.run_chunks(lambda n0, n1: _tapsum_rows(x3, kt, y3, c, top, left, 1, n0, n1), bounds)
    else:
        threads.run_chunks(lambda n0, n1: _forward(x, k, y, sh, sw, top, left, n0, n1), bounds)
    return y, _Cache(x, kernel, (sh, sw), pads)


def depthwise_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> (dx: (N, H, W, C), dkernel: (kh, kw, C, 1))."""
    if not isinstance(cache, _Cache):                     # the forward handed over to the reference
        return F.depthwise_conv2d_backward(dy, cache)
    x, kernel, (sh, sw), pads = cache.x, cache.kernel, cache.stride, cache.pads
    kh, kw, c, _ = kernel.shape
    n = x.shape[0]
    oh, ow = (x.shape[1] + sum(pads[0]) - kh) // sh + 1, (x.shape[2] + sum(pads[1]) - kw) // sw + 1
    if getattr(dy, "shape", None) != (n, oh, ow, c) or dy.dtype != x.dtype:
        raise TypeError(f"depthwise conv backward: expected dy of shape {(n, oh, ow, c)} and dtype {x.dtype}, "
                        f"got shape {getattr(dy, 'shape', None)} dtype {getattr(dy, 'dtype', None)}")
    dy = np.ascontiguousarray(dy)
    top, left = pads[0][0], pads[1][0]
    k = kernel.reshape(kh, kw, c)
    dx = np.empty_like(x)
    work = oh * ow * c * kh * kw
    bounds = _chunks(n, work)
    if _by_rows(sh, sw, c):
        h, w = x.shape[1], x.shape[2]
        x3, dy3, dx3 = x.reshape(n, h, w * c), dy.reshape(n, oh, ow * c), dx.reshape(n, h, w * c)
        kt = np.tile(k, (1, 1, w))
        threads.run_chunks(lambda n0, n1: _tapsum_rows(dy3, kt, dx3, c, top, left, -1, n0, n1), bounds)
        parts = threads.run_chunks(lambda n0, n1: _kernel_grad_rows(x3, dy3, kh, kw, c, top, left, n0, n1),
                                   bounds)
    else:
        threads.run_chunks(lambda n0, n1: _backward_input(dy, k, dx, sh, sw, top, left, n0, n1), bounds)
        parts = threads.run_chunks(lambda n0, n1: _backward_kernel(x, dy, kh, kw, sh, sw, top, left, n0, n1),
                                   bounds)
    dk = parts[0]
    for p in parts[1:]:                                   # chunk order: the same sum on any thread count
        dk = dk + p
    return dx, dk.astype(x.dtype).reshape(kernel.shape)


# ------------------------------------------------------------------ separable = fast depthwise + GEMM
def separable_supports(x, depthwise_kernel=None, pointwise_kernel=None, stride=1, padding="same",
                       intermediate=None, *args, **kwargs):
    """The fast depthwise must take the call, and the rest must be a call the reference accepts."""
    if intermediate not in INTERMEDIATE_ACTIVATIONS or not supports(x, depthwise_kernel, stride, padding):
        return False
    return (isinstance(pointwise_kernel, np.ndarray) and pointwise_kernel.dtype == x.dtype
            and pointwise_kernel.ndim == 4 and pointwise_kernel.shape[:3] == (1, 1, x.shape[3]))


def separable_conv2d_forward(x, depthwise_kernel, pointwise_kernel, stride=1, padding="same",
                             intermediate=None):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, F), cache (dw_cache, act_cache, pw_cache, intermediate),
    as ``functional.separable_conv2d_forward`` but with the fast depthwise half."""
    if not separable_supports(x, depthwise_kernel, pointwise_kernel, stride, padding, intermediate):
        return F.separable_conv2d_forward(x, depthwise_kernel, pointwise_kernel, stride, padding, intermediate)
    h, dw_cache = depthwise_conv2d_forward(x, depthwise_kernel, stride, padding)
    act_cache = None
    if intermediate is not None:
        h, act_cache = INTERMEDIATE_ACTIVATIONS[intermediate][0](h)
    y, pw_cache = gemm.pointwise_conv2d_forward(h, pointwise_kernel)  # one GEMM, rows over the pool
    return y, (dw_cache, act_cache, pw_cache, intermediate)


def separable_conv2d_backward(dy, cache):
    """dy: (N, Ho, Wo, F) -> (dx, ddepthwise_kernel, dpointwise_kernel)."""
    dw_cache, act_cache, pw_cache, intermediate = cache
    dh, dpointwise = gemm.pointwise_conv2d_backward(dy, pw_cache)
    if intermediate is not None:
        dh = INTERMEDIATE_ACTIVATIONS[intermediate][1](dh, act_cache)
    dx, ddepthwise = depthwise_conv2d_backward(dh, dw_cache)     # the reference's, if its forward ran
    return dx, ddepthwise, dpointwise


register("depthwise_conv2d", "cpu",
         Kernel("numba", depthwise_conv2d_forward, depthwise_conv2d_backward, supports))
register("separable_conv2d", "cpu",
         Kernel("numba", separable_conv2d_forward, separable_conv2d_backward, separable_supports))
