"""Max pool, any window, stride and padding, as numba loops over output pixels (NHWC).

Same signature, semantics and results as ``functional.maxpool2d_forward`` / ``_backward``:
padding never wins (positions outside the input are skipped, which is what padding with
-inf amounts to), and on ties the *first* maximum in row-major window order wins and
gets the whole gradient, as cuDNN and PyTorch do. Not matched: NaN inputs (the
reference propagates a NaN into y; here a comparison with NaN is false, so a NaN is
passed over unless it is the window's first tap).

Speed notes:
* A 3x3 window (the hot case) lying wholly inside the input is unrolled: nine named taps
  inside the channel loop, the running maximum and its tap number in local variables
  (registers), stored once per output. A read-modify-write of the output per tap
  (``y = v if v > y else y``) compiles to masked stores, which are slow on some CPUs.
* Every other output (the border, any other window) loops over its taps with the
  channels innermost, keeping the running maximum in the output row and storing it
  unconditionally (a blend, not a masked store).
* The winner is stored as the tap number ``i * kw + j``: one byte for windows of up to
  256 taps, int32 for larger ones. Backward gathers: each input adds the gradients of
  the windows it won.
"""
from __future__ import annotations

import numba
import numpy as np

from ...functional.padding import conv_geometry, pair
from .. import Kernel, register
from . import threads


@numba.njit(nogil=True, cache=True)
def _interior(n_in, k, s, before, n_out):
    """Outputs o whose window rows o*s - before .. o*s - before + k - 1 all lie in [0, n_in)."""
    first = (before + s - 1) // s                       # smallest o with o*s >= before
    last = (n_in - k + before) // s                     # largest o with o*s - before + k <= n_in
    first = min(max(first, 0), n_out)
    last = min(max(last + 1, first), n_out)
    return first, last


@numba.njit(nogil=True, cache=True)
def _pool_general(x, y, win, b, oy, ox, kh, kw, sh, sw, top, left):
    """One output pixel (b, oy, ox), every channel, any window: taps outside the input are skipped.

    The taps are the outer loop here (so the channel loop is contiguous and vectorises), and
    the running maximum is the output row itself, always stored (a blend, not a masked store).
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    y0 = oy * sh - top
    x0 = ox * sw - left
    yrow = y[b, oy, ox]
    wrow = win[b, oy, ox]
    for ch in range(c):
        yrow[ch] = -np.inf
        wrow[ch] = 0
    for i in range(max(0, -y0), min(kh, h - y0)):
        for j in range(max(0, -x0), min(kw, w - x0)):
            xrow = x[b, y0 + i, x0 + j]
            t = i * kw + j
            for ch in range(c):
                v = xrow[ch]
                cur = yrow[ch]
                better = v > cur                        # strict: the first maximum keeps it
                yrow[ch] = v if better else cur
                wrow[ch] = t if better else wrow[ch]


@numba.njit(nogil=True, cache=True)
def _maxpool_fwd(x, y, win, kh, kw, sh, sw, top, left):
    """x: (n, H, W, C) -> y, win: (n, Ho, Wo, C) for the batch rows of this chunk."""
    n, h, w, c = x.shape
    oh, ow = y.shape[1], y.shape[2]
    iy0, iy1 = _interior(h, kh, sh, top, oh)
    ix0, ix1 = _interior(w, kw, sw, left, ow)
    three = kh == 3 and kw == 3
    for b in range(n):
        for oy in range(oh):
            for ox in range(ow):
                if not (three and iy0 <= oy < iy1 and ix0 <= ox < ix1):
                    _pool_general(x, y, win, b, oy, ox, kh, kw, sh, sw, top, left)
                    continue
                r0 = oy * sh - top
                q0 = ox * sw - left
                # nine taps, row-major; each compare keeps the earlier tap on ties
                for ch in range(c):
                    best = x[b, r0, q0, ch]
                    arg = 0
                    v = x[b, r0, q0 + 1, ch]
                    if v > best:
                        best, arg = v, 1
                    v = x[b, r0, q0 + 2, ch]
                    if v > best:
                        best, arg = v, 2
                    v = x[b, r0 + 1, q0, ch]
                    if v > best:
                        best, arg = v, 3
                    v = x[b, r0 + 1, q0 + 1, ch]
                    if v > best:
                        best, arg = v, 4
                    v = x[b, r0 + 1, q0 + 2, ch]
                    if v > best:
                        best, arg = v, 5
                    v = x[b, r0 + 2, q0, ch]
                    if v > best:
                        best, arg = v, 6
                    v = x[b, r0 + 2, q0 + 1, ch]
                    if v > best:
                        best, arg = v, 7
                    v = x[b, r0 + 2, q0 + 2, ch]
                    if v > best:
                        best, arg = v, 8
                    y[b, oy, ox, ch] = best
                    win[b, oy, ox, ch] = arg


@numba.njit(nogil=True, cache=True)
def _maxpool_bwd(dy, win, dx, kh, kw, sh, sw, top, left):
    """dx: (n, H, W, C) from dy, win: (n, Ho, Wo, C) -- a gather, each input written once.

    Input (iy, ix) sits at tap (iy + top - oy*sh, ix + left - ox*sw) of the few windows
    (oy, ox) that cover it; it collects dy of those whose winner is that tap. (A scatter
    ``dx[winner] += dy`` would need a cleared dx and a division per element.)
    """
    n, oh, ow, c = dy.shape
    h, w = dx.shape[1], dx.shape[2]
    zero = np.zeros(1, dy.dtype)[0]
    tap = np.empty(1, win.dtype)                        # the tap number in win's dtype: a narrow compare
    for b in range(n):
        for iy in range(h):
            py = iy + top                               # row in padded coordinates
            oy_lo = max(0, (py - kh + sh) // sh)        # first window reaching down to py: ceil((py-kh+1)/sh)
            oy_hi = min(oh, py // sh + 1)
            for ix in range(w):
                px = ix + left
                ox_lo = max(0, (px - kw + sw) // sw)
                ox_hi = min(ow, px // sw + 1)
                out = dx[b, iy, ix]
                for ch in range(c):
                    out[ch] = zero
                for oy in range(oy_lo, oy_hi):
                    i = py - oy * sh
                    for ox in range(ox_lo, ox_hi):
                        tap[0] = i * kw + px - ox * sw
                        t = tap[0]
                        g = dy[b, oy, ox]
                        wr = win[b, oy, ox]
                        for ch in range(c):
                            out[ch] += g[ch] if wr[ch] == t else zero


def maxpool2d_forward(x, pool_size=3, stride=2, padding="same"):
    """x: (N, H, W, C) -> y: (N, Ho, Wo, C), cache (winning tap per output)."""
    kh, kw = pair(pool_size, "pool_size")
    sh, sw = pair(stride, "stride")
    n, h, w, c = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    top, left = pads[0][0], pads[1][0]
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    win = np.empty(y.shape, dtype=np.uint8 if kh * kw <= 256 else np.int32)

    def piece(lo, hi):
        _maxpool_fwd(x[lo:hi], y[lo:hi], win[lo:hi], kh, kw, sh, sw, top, left)
    threads.run_chunks(piece, threads.chunk_bounds(n, oh * ow * c * kh * kw))
    return y, (win, (kh, kw, sh, sw, top, left), x.shape, x.dtype)


def maxpool2d_backward(dy, cache):
    """dy: (N, Ho, Wo, C) -> dx: (N, H, W, C)."""
    win, (kh, kw, sh, sw, top, left), x_shape, dtype = cache
    if dy.shape != win.shape or dy.dtype != dtype:
        raise TypeError(f"max pool backward: expected dy of shape {win.shape} and dtype {dtype} "
                        f"(the forward's output), got shape {dy.shape} and dtype {dy.dtype}")
    dy = np.ascontiguousarray(dy)
    dx = np.empty(x_shape, dtype=dtype)
    n = x_shape[0]

    def piece(lo, hi):
        _maxpool_bwd(dy[lo:hi], win[lo:hi], dx[lo:hi], kh, kw, sh, sw, top, left)
    threads.run_chunks(piece, threads.chunk_bounds(n, dx[:1].size + dy[:1].size * kh * kw // (sh * sw)))
    return dx


def supports(x, pool_size=3, stride=2, padding="same") -> bool:
    """NumPy float32/float64 C-contiguous NHWC x and a geometry that fits; else the reference runs."""
    if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype in (np.float32, np.float64)
            and x.flags.c_contiguous and x.size > 0):
        return False
    try:
        kh, kw = pair(pool_size, "pool_size")
        sh, sw = pair(stride, "stride")
        if min(kh, kw, sh, sw) < 1:
            return False
        pads, _ = conv_geometry(x.shape[1], x.shape[2], (kh, kw), (sh, sw), padding)
        if min(pads[0] + pads[1]) < 0:
            return False
    except (ValueError, TypeError):
        return False                                   # the reference raises its clear error
    return True


register("maxpool2d", "cpu", Kernel("numba", maxpool2d_forward, maxpool2d_backward, supports))
