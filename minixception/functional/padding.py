"""Padding arithmetic shared by convolutions and pools (TensorFlow/Keras rules).

"valid": no padding, the window must fit.
"same":  output size ceil(n / stride); the total padding
         ``max((ceil(n/s) - 1) * s + k - n, 0)`` is split with the extra row/column
         *after* (bottom/right), as TensorFlow does. It is not symmetric: a 3x3/2
         window on 74 pads 0 before and 1 after.
int p or (ph, pw): p rows/columns on both sides of each axis.
"""
from __future__ import annotations

import math


def pair(v, name="value"):
    """Turn ``3`` or ``(3, 3)`` into ``(3, 3)``."""
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return tuple(v)
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def pad_amounts(n: int, k: int, s: int, padding) -> tuple[int, int]:
    """(before, after) padding of one spatial axis of size ``n`` for a window ``k``, stride ``s``."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        return (total // 2, total - total // 2)
    if isinstance(padding, int) and padding >= 0:
        return (padding, padding)
    raise ValueError(f"padding must be 'valid', 'same' or a non-negative int, got {padding!r}")


def output_size(n: int, k: int, s: int, before: int, after: int) -> int:
    """Output length of a window ``k``, stride ``s`` along an axis of ``n`` padded by (before, after)."""
    return (n + before + after - k) // s + 1


def conv_geometry(h, w, kernel_size, stride, padding):
    """Padding and output size of a 2D window op on an (h, w) map.

    Returns ``((top, bottom), (left, right)), (out_h, out_w)``.
    """
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    if min(kh, kw, sh, sw) < 1:
        raise ValueError(f"window {kh}x{kw} and stride {sh}x{sw}: both must be at least 1")
    if isinstance(padding, (tuple, list)):
        ph, pw = pair(padding, "padding")
        pads = ((ph, ph), (pw, pw))
    else:
        pads = (pad_amounts(h, kh, sh, padding), pad_amounts(w, kw, sw, padding))
    oh = output_size(h, kh, sh, *pads[0])
    ow = output_size(w, kw, sw, *pads[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"a {kh}x{kw} window with stride {sh}x{sw} and padding {padding!r} does not fit "
            f"an input of spatial size {h}x{w}")
    return pads, (oh, ow)


def pad_nhwc(x, pads, value=0.0):
    """x: (N, H, W, C) -> (N, H + top + bottom, W + left + right, C) filled with ``value``
    around ``x``; returns ``x`` itself when there is no padding.

    Allocates once and copies once (``xp.pad`` is slower, and on CuPy launches more kernels).
    """
    (t, b), (l, r) = pads
    if t == b == l == r == 0:
        return x
    from ..backend import get_array_module
    xp = get_array_module(x)
    n, h, w, c = x.shape
    out = xp.full((n, h + t + b, w + l + r, c), value, dtype=x.dtype)
    out[:, t:t + h, l:l + w, :] = x
    return out


def tap(xp_padded, i, j, oh, ow, sh, sw):
    """xp_padded: (N, Hp, Wp, C) -> the view (N, oh, ow, C) that kernel tap (i, j) sees, no copy:
    ``view[n, r, q, c] = xp_padded[n, r*sh + i, q*sw + j, c]``."""
    return xp_padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
