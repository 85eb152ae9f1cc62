"""Parameter counts and a Keras-like per-layer summary, with the depthwise / pointwise split.

``summary(model, input_shape)`` runs one batch-1 forward pass in ``inference_mode()`` (eval
mode, no caches kept) to learn every leaf layer's output shape, and counts per layer:

* params      trainable parameters + buffers (BN moving statistics), as Keras's ``Param #``;
* mult-adds   multiply-accumulates of one image through the layer (convolutions and dense
              layers; element-wise layers -- BN, activations, pools -- count 0).

The footer splits parameters and mult-adds between the depthwise (spatial, per channel) and
pointwise (1x1, cross-channel) halves of the separable convolutions, the regular convolutions
(stem and 1x1 shortcuts), the dense head and batch norm: the paper's efficiency argument in
numbers (for Xception nearly all of both sit in the pointwise convolutions).
"""
from __future__ import annotations

import sys

import numpy as np

from . import nn
from .backend import device_of, to_device


def count_params(model, include_buffers=False) -> int:
    """Number of trainable parameter values; plus buffers (BN moving statistics) if asked.

    Xception: 22,855,952 trainable, 22,910,480 with buffers (Keras's ``count_params``).
    """
    n = sum(int(p.data.size) for p in model.parameters())
    if include_buffers:
        n += sum(int(b.size) for _, b in model.named_buffers())
    return n


def _layer_counts(m, in_shape, out_shape):
    """``{category: (params, mult_adds)}`` of one leaf layer for an input/output of these shapes."""
    def hw(shape):
        return int(shape[1]) * int(shape[2])

    own_params = dict(m.named_parameters(recurse=False))

    def own(key):
        p = own_params.get(key)
        return 0 if p is None else int(p.data.size)

    bias = own("bias")
    if isinstance(m, nn.SeparableConv2D):
        kh, kw = m.kernel_size
        c, f = m.in_channels, m.out_channels
        return {"depthwise": (own("depthwise_kernel"), hw(out_shape) * kh * kw * c),
                "pointwise": (own("pointwise_kernel") + bias, hw(out_shape) * c * f)}
    if isinstance(m, nn.DepthwiseConv2D):
        kh, kw = m.kernel_size
        return {"depthwise": (own("depthwise_kernel") + bias, hw(out_shape) * kh * kw * m.channels)}
    if isinstance(m, nn.PointwiseConv2D):
        return {"pointwise": (own("pointwise_kernel") + bias, hw(out_shape) * m.in_channels * m.out_channels)}
    if isinstance(m, nn.Conv2D):
        kh, kw = m.kernel_size
        cat = "depthwise" if (m.groups == m.in_channels == m.out_channels and m.groups > 1) else "conv"
        return {cat: (own("kernel") + bias,
                      hw(out_shape) * kh * kw * (m.in_channels // m.groups) * m.out_channels)}
    if isinstance(m, nn.Dense):
        return {"dense": (own("kernel") + bias, m.in_features * m.out_features)}
    n = sum(int(p.data.size) for p in own_params.values()) + sum(int(b.size) for _, b in m.named_buffers(recurse=False))
    if isinstance(m, nn.BatchNorm2D):
        return {"batch norm": (n, 0)}
    return {"other": (n, 0)} if n else {}


def trace_shapes(model, input_shape):
    """Run a batch-1 forward pass in eval + inference mode and record every leaf layer called.

    Returns ``[(name, layer, in_shape, out_shape)]`` in call order and the model's output shape.
    The model's train/eval flags are restored afterwards.
    """
    leaves = {id(m): (path or type(m).__name__, m) for path, m in model.named_modules()
              if not m.children() and m is not model}
    if not model.children():                     # a single layer summarised on its own
        leaves[id(model)] = (model.name or type(model).__name__, model)
    params = model.parameters()
    dtype = params[0].data.dtype if params else np.float32
    device = device_of(params[0].data) if params else "cpu"
    x = to_device(np.zeros((1,) + tuple(input_shape), dtype=dtype), device)

    records, seen = [], set()
    patched = []
    for key, (name, m) in leaves.items():
        def fwd(x, m=m, name=name, orig=m.forward):
            y = orig(x)
            if id(m) not in seen:
                seen.add(id(m))
                records.append((name, m, tuple(x.shape), tuple(y.shape)))
            return y
        m.forward = fwd                           # instance attribute shadows the class method
        patched.append(m)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with nn.inference_mode():
            y = model(x)
    finally:
        for m in patched:
            del m.forward
        for m, t in modes:
            m.training = t
    return records, tuple(y.shape)


def _fmt_shape(shape):
    return "(" + ", ".join(["None"] + [str(s) for s in shape[1:]]) + ")"


def summary(model, input_shape, file=None) -> str:
    """Print (to ``file``, default stdout) and return a per-layer table like Keras's ``model.summary()``.

    input_shape: (H, W, C) of one image, e.g. ``(299, 299, 3)``.
    Columns: layer name, type, output shape, params (incl. BN moving statistics), mult-adds.
    """
    if not isinstance(input_shape, (tuple, list)) or not all(isinstance(v, (int, np.integer)) for v in input_shape):
        raise ValueError(f"input_shape must be a tuple of ints like (299, 299, 3), got {input_shape!r}")
    records, out_shape = trace_shapes(model, tuple(int(v) for v in input_shape))

    rows, cats = [], {}
    for name, m, sin, sout in records:
        counts = _layer_counts(m, sin, sout)
        p = sum(v[0] for v in counts.values())
        f = sum(v[1] for v in counts.values())
        for cat, (cp, cf) in counts.items():
            ap, af = cats.get(cat, (0, 0))
            cats[cat] = (ap + cp, af + cf)
        rows.append((name, type(m).__name__, _fmt_shape(sout), p, f))

    heads = ("Layer", "Type", "Output shape", "Params", "Mult-adds")
    widths = [max(len(heads[0]), *(len(r[0]) for r in rows)) if rows else len(heads[0]),
              max(len(heads[1]), *(len(r[1]) for r in rows)) if rows else len(heads[1]),
              max(len(heads[2]), *(len(r[2]) for r in rows)) if rows else len(heads[2]),
              14, 16]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    title = f'Model: "{model.name or type(model).__name__}"  input (None, {", ".join(map(str, input_shape))})'

    def fmt(cols):
        return (f"{cols[0]:<{widths[0]}}  {cols[1]:<{widths[1]}}  {cols[2]:<{widths[2]}}  "
                f"{cols[3]:>{widths[3]}}  {cols[4]:>{widths[4]}}")

    out = [title, line, fmt(heads), "=" * len(line)]
    for name, typ, shp, p, f in rows:
        out.append(fmt((name, typ, shp, f"{p:,}", f"{f:,}")))
    total = count_params(model, include_buffers=True)
    trainable = count_params(model)
    macs = sum(r[4] for r in rows)
    out += ["=" * len(line),
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}  (batch norm moving statistics)",
            f"Mult-adds per image: {macs:,}  ({macs / 1e9:.3f} G)",
            f"Output shape: {_fmt_shape(out_shape)}",
            line,
            "Where the parameters and the mult-adds are:"]
    labels = {"depthwise": "depthwise (spatial, per channel)", "pointwise": "pointwise (1x1, cross-channel)",
              "conv": "regular convolutions", "dense": "dense", "batch norm": "batch norm (incl. moving stats)",
              "other": "other"}
    cw = max(len(v) for v in labels.values())
    out.append(f"  {'':<{cw}}  {'params':>14} {'%':>6}  {'mult-adds':>16} {'%':>6}")
    for cat in ("depthwise", "pointwise", "conv", "dense", "batch norm", "other"):
        if cat not in cats:
            continue
        p, f = cats[cat]
        out.append(f"  {labels[cat]:<{cw}}  {p:>14,} {100 * p / max(total, 1):>5.1f}%  "
                   f"{f:>16,} {100 * f / max(macs, 1):>5.1f}%")
    text = "\n".join(out)
    print(text, file=file if file is not None else sys.stdout)
    return text


__all__ = ["count_params", "summary", "trace_shapes"]
