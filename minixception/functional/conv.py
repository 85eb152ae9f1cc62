"""Regular and grouped 2-D convolution, NHWC, as im2col + one GEMM per group.

    x: (N, H, W, C)            kernel: (kh, kw, C // groups, F)      y: (N, Ho, Wo, F)

``groups`` splits the C input channels and the F output channels into that many
non-overlapping segments; group g sees only its own input segment and produces
only its own output segment. groups = 1 is a regular convolution, groups = C with
F = C is a depthwise convolution (see ``depthwise.py`` for the fast version),
anything between is one of the paper's "segments" (Figure 3).

im2col gathers the kh*kw shifted views ("taps") of the padded input into a
matrix of patches, so the convolution becomes ``patches @ kernel``:

    y[m, f] = sum_k cols[m, k] * W[k, f]        m = (n, i, j),  k = (di, dj, c)

Backward is the same GEMM transposed (dW = cols^T dy, dcols = dy W^T) and col2im
adds each tap's gradient back where that tap came from.
"""
from __future__ import annotations

from ..backend import get_array_module
from ._checks import check_nhwc, check_same_dtype
from .padding import conv_geometry, pad_nhwc, pair, tap


def _im2col(xp_pad, kh, kw, oh, ow, sh, sw):
    """xp_pad: (N, Hp, Wp, C) -> patches (N, oh, ow, kh, kw, C): one copy per tap, no loop over pixels."""
    xp = get_array_module(xp_pad)
    n, c = xp_pad.shape[0], xp_pad.shape[3]
    if kh == kw == 1 and sh == sw == 1:
        return xp_pad.reshape(n, oh, ow, 1, 1, c)          # 1x1/1: the input already is the matrix
    cols = xp.empty((n, oh, ow, kh, kw, c), dtype=xp_pad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = tap(xp_pad, i, j, oh, ow, sh, sw)
    return cols


def _col2im(dcols, padded_shape, sh, sw):
    """dcols: (N, oh, ow, kh, kw, C) -> dx_pad: ``padded_shape``, each tap's gradient added back
    where that tap came from (the adjoint of ``_im2col``)."""
    xp = get_array_module(dcols)
    n, oh, ow, kh, kw, c = dcols.shape
    if kh == kw == 1 and sh == sw == 1:
        return dcols.reshape(padded_shape)
    dx_pad = xp.zeros(padded_shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            tap(dx_pad, i, j, oh, ow, sh, sw)[...] += dcols[:, :, :, i, j, :]
    return dx_pad


def _grouped(cols2d, groups):
    """cols2d: (M, kh*kw, C) patches -> (groups, M, kh*kw*Cg): each group's patch matrix."""
    m, taps, c = cols2d.shape
    cg = c // groups
    return cols2d.reshape(m, taps, groups, cg).transpose(2, 0, 1, 3).reshape(groups, m, taps * cg)


def conv2d_forward(x, kernel, bias=None, stride=1, padding="valid", groups=1):
    """y = conv(x, kernel) + bias.

    x: (N, H, W, C); kernel: (kh, kw, C // groups, F); bias: (F,) or None.
    Returns ``y: (N, Ho, Wo, F)`` and the cache for ``conv2d_backward``.
    """
    xp = get_array_module(x, kernel, bias)
    if kernel.ndim != 4:
        raise ValueError(f"conv2d: kernel must be (kh, kw, C // groups, F), got shape {kernel.shape}")
    kh, kw, cg, f = kernel.shape
    c = cg * groups
    check_nhwc(x, c, "conv2d input")
    check_same_dtype(x, kernel, bias, what="conv2d")
    if f % groups:
        raise ValueError(f"conv2d: {f} output channels cannot be split into {groups} groups")
    sh, sw = pair(stride, "stride")
    n, h, w, _ = x.shape
    pads, (oh, ow) = conv_geometry(h, w, (kh, kw), (sh, sw), padding)
    x_pad = pad_nhwc(x, pads)
    cols = _im2col(x_pad, kh, kw, oh, ow, sh, sw)
    m = n * oh * ow
    if groups == 1:
        y = cols.reshape(m, kh * kw * c) @ kernel.reshape(kh * kw * c, f)
    else:
        fg = f // groups
        cols_g = _grouped(cols.reshape(m, kh * kw, c), groups)                     # (g, M, K)
        w_g = kernel.reshape(kh * kw * cg, groups, fg).transpose(1, 0, 2)            # (g, K, Fg)
        y = xp.matmul(cols_g, w_g).transpose(1, 0, 2).reshape(m, f)
        cols = cols_g                                                                # keep the grouped form
    if bias is not None:
        y += bias
    cache = (cols, kernel, bias is not None, x_pad.shape, pads, (sh, sw), (oh, ow), groups, x.shape)
    return y.reshape(n, oh, ow, f), cache


def conv2d_backward(dy, cache):
    """Returns ``(dx, dkernel, dbias)``; ``dbias`` is None when the forward had no bias.

    dy: (N, Ho, Wo, F) -> dx: (N, H, W, C), dkernel: (kh, kw, C // groups, F), dbias: (F,)
    """
    xp = get_array_module(dy)
    cols, kernel, has_bias, padded_shape, pads, (sh, sw), (oh, ow), groups, x_shape = cache
    kh, kw, cg, f = kernel.shape
    c = cg * groups
    n = x_shape[0]
    m = n * oh * ow
    dy2 = dy.reshape(m, f)
    if groups == 1:
        cols2 = cols.reshape(m, kh * kw * c)
        dkernel = (cols2.T @ dy2).reshape(kernel.shape)
        dcols = (dy2 @ kernel.reshape(kh * kw * c, f).T).reshape(n, oh, ow, kh, kw, c)
    else:
        fg = f // groups
        dy_g = dy2.reshape(m, groups, fg).transpose(1, 0, 2)                         # (g, M, Fg)
        w_g = kernel.reshape(kh * kw * cg, groups, fg).transpose(1, 0, 2)            # (g, K, Fg)
        dw_g = xp.matmul(cols.transpose(0, 2, 1), dy_g)                              # (g, K, Fg)
        dkernel = dw_g.transpose(1, 0, 2).reshape(kernel.shape)
        dcols_g = xp.matmul(dy_g, w_g.transpose(0, 2, 1))                            # (g, M, K)
        dcols = (dcols_g.reshape(groups, m, kh * kw, cg).transpose(1, 2, 0, 3)
                 .reshape(n, oh, ow, kh, kw, c))
    dbias = dy2.sum(axis=0) if has_bias else None
    dx_pad = _col2im(dcols, padded_shape, sh, sw)
    (t, _), (l, _) = pads
    dx = dx_pad[:, t:t + x_shape[1], l:l + x_shape[2], :]
    return xp.ascontiguousarray(dx), dkernel, dbias
