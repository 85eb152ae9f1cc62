"""Pictures of the ideas, drawn by code: the paper's Figures 1-5, a separable convolution's
shapes and costs, and the package's own source shown beside the math.

    mx.diagrams.inception_figure(1)            # canonical Inception V3 module (paper Figure 1)
    mx.diagrams.inception_figure(3, segments=3)  # one large 1x1 conv + 3x3 convs on segments
    mx.diagrams.xception_figure(model)         # Figure 5, walked from the model object itself
    mx.diagrams.separable_figure(19, 19, 728, 728)
    mx.diagrams.show_source(mx.functional.conv2d_forward, {r"matmul": "Y = X_col W"})

Every figure function returns a matplotlib ``Figure``. Each box's label is a text artist whose
``gid`` names what the box stands for (a layer's name for Figure 5), so a test -- or a reader --
can check that the picture is the network that runs. matplotlib is imported only when a figure
is drawn: ``import minixception`` does not need it.
"""
from __future__ import annotations

import inspect
import re

# A few colours, one per kind of operation, so the figures read alike.
COLORS = {"1x1": "#f6d7a7", "spatial": "#b9d7ea", "pool": "#d5e8d4", "io": "#eeeeee",
          "dense": "#e1d5e7", "act": "#ffffff", "sum": "#fff2cc"}


# --------------------------------------------------------------------------------------------
# source code beside the math
# --------------------------------------------------------------------------------------------
class SourceView:
    """A function's source as a fenced Markdown block, some lines marked with a label.

    ``marks`` maps a regular expression to a label; the first line of the body that matches
    gets ``# <-- label`` appended. ``marked`` maps each label to the 1-based line number it
    points at (None where no line matched: the note below the listing then says so, so a mark
    that a later rewrite of the function left behind is visible, not silently wrong).
    """

    def __init__(self, fn, marks=None):
        self.name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        lines = inspect.getsource(fn).rstrip("\n").splitlines()
        self.marked = {}
        for pattern, label in (marks or {}).items():
            rx = re.compile(pattern)
            hit = next((i for i, line in enumerate(lines) if rx.search(line.split("#")[0])
                        and not line.lstrip().startswith(("def ", '"""', "'''"))), None)
            self.marked[label] = None if hit is None else hit + 1
            if hit is not None:
                lines[hit] = f"{lines[hit]}   # <-- {label}"
        self.lines = lines
        self.text = "\n".join(lines)

    def missing(self):
        return [label for label, line in self.marked.items() if line is None]

    def markdown(self):
        """The listing as Markdown: a fenced ``python`` block (highlighted by Jupyter and GitHub)."""
        out = f"`{self.name}`:\n\n```python\n{self.text}\n```\n"
        if self.missing():
            out += "\n*(no line of this version matches: " + "; ".join(self.missing()) + ")*\n"
        return out

    def __repr__(self):
        # short on purpose: show_source has already displayed the listing
        return f"<source of {self.name}, marked lines {self.marked}>"


def show_source(fn, marks=None):
    """Display ``fn``'s source with syntax highlighting (in a notebook); returns the ``SourceView``.

    ``marks``: ``{regex: label}``, e.g. ``{r"matmul": "(3) Y = X_col W"}`` -- points from a
    formula of the text to the line that computes it.
    """
    view = SourceView(fn, marks)
    try:
        from IPython.display import Markdown, display
    except ImportError:                      # outside IPython: plain text
        print(f"# {view.name}\n{view.text}")
    else:
        display(Markdown(view.markdown()))
    return view


# --------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib.pyplot as plt
    return plt


def _box(ax, x, y, w, h, label, gid, kind="spatial", fontsize=9):
    """A rounded box centred at (x, y) with its label; the label's gid names what it stands for."""
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=COLORS.get(kind, "#ffffff"), ec="#333333", lw=1.0))
    t = ax.text(x, y, label, ha="center", va="center", fontsize=fontsize)
    t.set_gid(gid)
    return t


def _arrow(ax, x0, y0, x1, y1, **kw):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                arrowprops=dict(arrowstyle="-|>", color=kw.pop("color", "#333333"), lw=1.0,
                                shrinkA=0, shrinkB=0, **kw))


def _canvas(width, height, figsize, title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, width); ax.set_ylim(0, height); ax.axis("off")
    ax.set_title(title, fontsize=11)
    return fig, ax


def box_labels(fig):
    """``{gid: text}`` of every labelled box in ``fig`` (what the tests and the chapters check)."""
    return {t.get_gid(): t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid()}


# --------------------------------------------------------------------------------------------
# Figures 1-4: from the Inception module to the extreme module
# --------------------------------------------------------------------------------------------
def _unit_label(unit):
    """'5x5 conv, 64' for a conv unit, '3x3 avg pool' for a pooling layer (read off the layer)."""
    from . import nn
    conv = next((m for m in unit.modules() if isinstance(m, nn.Conv2D)), None)
    if conv is not None:
        kh, kw = conv.kernel_size
        return f"{kh}x{kw} conv, {conv.out_channels}"
    if isinstance(unit, nn.AvgPool2D):
        k = unit.pool_size if isinstance(unit.pool_size, int) else unit.pool_size[0]
        return f"{k}x{k} avg pool"
    if isinstance(unit, nn.MaxPool2D):
        k = unit.pool_size if isinstance(unit.pool_size, int) else unit.pool_size[0]
        return f"{k}x{k} max pool"
    return type(unit).__name__


def _towers(ax, towers, width, y0, y1, gid_prefix="tower"):
    """Draw towers (lists of (label, kind)) side by side between heights y0 and y1."""
    n = len(towers)
    xs = [width * (i + 0.5) / n for i in range(n)]
    bw = min(2.3, 0.85 * width / n)
    for t, (x, tower) in enumerate(zip(xs, towers), start=1):
        k = len(tower)
        ys = [y0 + (y1 - y0) * (j + 0.5) / max(k, 1) for j in range(k)]
        for j, (label, kind) in enumerate(tower):
            _box(ax, x, ys[j], bw, 0.6, label, f"{gid_prefix}{t}/{j + 1}", kind)
            if j:
                _arrow(ax, x, ys[j - 1] + 0.3, x, ys[j] - 0.3)
        yield x, ys[0] - 0.3, ys[-1] + 0.3


def inception_figure(figure=1, module=None, segments=3, channels=8):
    """The paper's Figures 1-4 as box diagrams; returns the matplotlib Figure.

    figure 1: the canonical Inception V3 module. Its towers are read off ``module`` (an
              ``mx.models.inception.InceptionV3Module``; by default one with 192 inputs and
              ``pool_features=32``), so the picture is the module the chapters run.
    figure 2: the simplified module: three towers of 1x1 conv -> 3x3 conv, no pooling tower.
    figure 3: its strict reformulation: one large 1x1 conv, then a 3x3 conv on each of
              ``segments`` non-overlapping segments of its output channels.
    figure 4: the "extreme" module: one 3x3 conv per output channel of the 1x1 conv
              (``channels`` of them drawn).
    """
    if figure not in (1, 2, 3, 4):
        raise ValueError(f"figure must be 1, 2, 3 or 4 (the paper's Figures 1-4), got {figure!r}")
    W, H = 10.0, 7.0
    titles = {1: "Figure 1: a canonical Inception module (Inception V3)",
              2: "Figure 2: a simplified Inception module",
              3: f"Figure 3: a strictly equivalent reformulation ({segments} segments)",
              4: 'Figure 4: an "extreme" version (one 3x3 conv per output channel)'}
    fig, ax = _canvas(W, H, (8.5, 5.6), titles[figure])
    _box(ax, W / 2, 0.45, 2.2, 0.55, "Input", "input", "io")
    _box(ax, W / 2, H - 0.45, 2.2, 0.55, "Concat", "concat", "io")
    if figure in (1, 2):
        if figure == 1:
            if module is None:
                from .models.inception import InceptionV3Module
                module = InceptionV3Module(in_channels=192, pool_features=32, rng=0)
            towers = []
            for branch in module._children:
                units = list(branch._children) if branch._children else [branch]
                towers.append([(_unit_label(u), "1x1" if _unit_label(u).startswith("1x1 conv")
                                else "pool" if "pool" in _unit_label(u) else "spatial") for u in units])
        else:
            towers = [[("1x1 conv", "1x1"), ("3x3 conv", "spatial")] for _ in range(3)]
        for x, ylo, yhi in _towers(ax, towers, W, 1.3, H - 1.3):
            _arrow(ax, W / 2, 0.72, x, ylo, connectionstyle="arc3,rad=0")
            _arrow(ax, x, yhi, W / 2, H - 0.72)
        return fig

    # figures 3 and 4: one large 1x1 conv, its output channels cut into segments
    n = segments if figure == 3 else channels
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{'segments' if figure == 3 else 'channels'} must be a positive int, got {n!r}")
    _box(ax, W / 2, 1.75, 7.5, 0.6, "1x1 conv", "1x1", "1x1")
    _arrow(ax, W / 2, 0.72, W / 2, 1.45)
    ax.text(0.05, 2.75, "its output\nchannels:\n" + (f"{n} segments" if figure == 3 else "one by one"),
            ha="left", va="center", fontsize=8, style="italic")
    xs = [W / 2 + 7.5 * ((i + 0.5) / n - 0.5) for i in range(n)]
    bw = min(2.2, 0.85 * 7.5 / n)
    for i, x in enumerate(xs, start=1):
        _arrow(ax, x, 2.05, x, 3.55)
        label = "3x3 conv" if figure == 3 or n <= 6 else "3x3"
        _box(ax, x, 3.9, bw, 0.6, label, f"3x3/{i}", "spatial", fontsize=9 if n <= 6 else 7)
        _arrow(ax, x, 4.2, W / 2, H - 0.72)
    if figure == 3:
        for x in xs:
            ax.plot([x - bw / 2, x + bw / 2], [2.75, 2.75], color="#555555", lw=3, solid_capstyle="butt")
    return fig


# --------------------------------------------------------------------------------------------
# Figure 5: Xception's entry, middle and exit flows, walked from the model object
# --------------------------------------------------------------------------------------------
def _layer_label(layer):
    from . import nn
    def k(v):
        return v if isinstance(v, int) else v[0]
    if isinstance(layer, nn.SeparableConv2D):
        kh, kw = layer.kernel_size
        act = f" ({layer.intermediate} inside)" if layer.intermediate else ""
        return f"SeparableConv {layer.out_channels}, {kh}x{kw}{act}", "spatial"
    if isinstance(layer, nn.Conv2D):
        kh, kw = layer.kernel_size
        s = k(layer.stride)
        return f"Conv {layer.out_channels}, {kh}x{kw}" + (f", stride {s}x{s}" if s != 1 else ""), \
            "1x1" if (kh, kw) == (1, 1) else "spatial"
    if isinstance(layer, nn.MaxPool2D):
        p, s = k(layer.pool_size), k(layer.stride)
        return f"MaxPooling {p}x{p}, stride {s}x{s}", "pool"
    if isinstance(layer, nn.ReLU):
        return "ReLU", "act"
    if isinstance(layer, nn.ELU):
        return "ELU", "act"
    if isinstance(layer, nn.GlobalAvgPool2D):
        return "GlobalAveragePooling", "pool"
    if isinstance(layer, nn.Dropout):
        return f"Dropout {layer.rate:g}", "act"
    if isinstance(layer, nn.Dense):
        return f"Fully connected, {layer.kernel.data.shape[1]}", "dense"
    return type(layer).__name__, "act"


def _drawn(module):
    """The leaf layers of ``module`` that the paper draws: all but batch norm (it follows every
    convolution, which the paper's caption says once instead of drawing it)."""
    from . import nn
    mods = [module] if not module._children else list(module.modules())
    return [m for m in mods if not m._children and not isinstance(m, nn.BatchNorm2D)]


def _main(kind, module):
    """The main path of a residual module (its shortcut is drawn beside it); else the module."""
    return module.main if kind in ("down", "identity") else module


def xception_flows(model):
    """Split an Xception-shaped model into its flows by walking its top-level modules.

    Returns ``{"entry": [...], "middle": [...], "exit": [...]}``; each item is
    ``(kind, module)`` with kind ``"layer"``, ``"down"`` (a residual module with a 1x1 conv
    shortcut), ``"identity"`` (a residual module with an identity shortcut) or ``"plain"``
    (a module without shortcut, as in a ``residual=False`` model). The middle flow is the run of
    identity modules; entry is everything before it, exit everything after. A model without
    residual connections is split by the modules' widths instead: the middle flow is the run of
    modules whose input and output widths are equal and whose spatial size does not change.
    """
    from . import nn
    items = []
    for child in model._children:
        if isinstance(child, nn.Residual):
            items.append(("down" if child.shortcut is not None else "identity", child))
        elif child._children:
            items.append(("plain", child))
        else:
            items.append(("layer", child))

    def is_middle(kind, m):
        if kind == "identity":
            return True
        if kind != "plain":
            return False
        seps = [l for l in m.modules() if isinstance(l, nn.SeparableConv2D)]
        pools = [l for l in m.modules() if isinstance(l, (nn.MaxPool2D, nn.AvgPool2D))]
        return bool(seps) and not pools and all(s.in_channels == s.out_channels for s in seps)

    mid = [i for i, (kind, m) in enumerate(items) if is_middle(kind, m)]
    if mid:
        a, b = mid[0], mid[-1] + 1
    else:                                 # no middle flow: the last module-with-a-pool starts the exit
        downs = [i for i, (kind, _) in enumerate(items) if kind in ("down", "plain")]
        a = b = downs[-1] if downs else len(items)
    return {"entry": items[:a], "middle": items[a:b], "exit": items[b:]}


def xception_figure(model, shapes=None, input_shape=None):
    """The paper's Figure 5, drawn from an Xception-shaped model (``mx.models.Xception()``,
    ``mini_xception()``, any ``XceptionNet``): entry, middle and exit flows side by side.

    Every box is one of the model's layers (batch norm, which follows every convolution, is
    said once in the caption rather than drawn) and its label's ``gid`` is that layer's name.
    The middle flow's repeated modules are drawn once, with the count the model has. Residual
    connections are drawn as a line from the module's input to a "+" after it, labelled with
    the shortcut's layers. ``shapes`` (``{layer name: output shape}``, e.g. from
    ``mx.summary.trace_shapes``) adds the feature-map size after each flow.
    """
    from . import nn
    if not getattr(model, "_children", None):
        raise TypeError(f"xception_figure needs an Xception-shaped model (a container of modules), "
                        f"got {type(model).__name__}")
    flows = xception_flows(model)
    if not flows["entry"] and not flows["exit"]:
        raise ValueError("xception_figure: found no entry or exit flow in the model")
    plt = _plt()
    n_rows = {}
    for name, items in flows.items():
        shown = items[:1] if name == "middle" else items
        n_rows[name] = sum(len(_drawn(_main(kind, m))) + (1 if kind in ("down", "identity") else 0)
                           for kind, m in shown) + 1
    rows = max(n_rows.values())
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.36 * rows + 1.6))
    def shape_txt(name):
        dims = shapes[name][1:]
        return f"{dims[0]} logits" if len(dims) == 1 else "x".join(str(v) for v in dims) + " feature maps"
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    last_name = None
    for ax, (flow, items) in zip(axes, flows.items()):
        ax.set_xlim(0, 10); ax.set_ylim(-rows - 0.5, 1.2); ax.axis("off")
        repeat = len(items)
        title = {"entry": "Entry flow", "middle": "Middle flow", "exit": "Exit flow"}[flow]
        if flow == "middle":
            title += f"\n(the module below, repeated {repeat} times)" if repeat else "\n(no middle modules)"
            items = items[:1]
        ax.set_title(title, fontsize=11)
        y = 0.0
        if flow == "entry" and input_shape is not None:
            ax.text(5, 0.7, "input " + "x".join(str(v) for v in input_shape), ha="center", fontsize=9, style="italic")
        for kind, m in items:
            top = y
            for layer in _drawn(_main(kind, m)):
                label, k = _layer_label(layer)
                _box(ax, 4.2, y, 6.2, 0.62, label, layer.name or type(layer).__name__, k, fontsize=8)
                _arrow(ax, 4.2, y - 0.31, 4.2, y - 0.69)
                last_name = layer.name
                y -= 1.0
            if kind in ("down", "identity"):
                sc = _drawn(m.shortcut) if m.shortcut is not None else []
                sc_label = "\n".join(_layer_label(l)[0] for l in sc) if sc else "identity"
                ax.plot([7.3, 8.9, 8.9, 4.55], [top + 0.45, top + 0.45, y, y], color="#777777", lw=1.0)
                t = ax.text(9.05, (top + y) / 2, sc_label, rotation=90, ha="left", va="center", fontsize=7,
                            color="#444444")
                t.set_gid((sc[0].name if sc else f"{m.main._children[0].name if m.main._children else ''}") + ":shortcut")
                circ = plt.Circle((4.2, y), 0.3, fc=COLORS["sum"], ec="#333333")
                ax.add_patch(circ)
                ax.text(4.2, y, "+", ha="center", va="center", fontsize=10)
                _arrow(ax, 4.2, y - 0.3, 4.2, y - 0.69)
                y -= 1.0
        if shapes and last_name in shapes:
            ax.text(4.2, y + 0.15, shape_txt(last_name), ha="center", va="center",
                    fontsize=9, style="italic")
    fig.suptitle("Xception, drawn from the model object (every convolution is followed by batch norm)",
                 fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# a separable convolution: which tensor has which shape, where the multiply-adds go
# --------------------------------------------------------------------------------------------
def separable_costs(h, w, c, f, k=3):
    """Multiply-adds of one separable k x k convolution (stride 1, "same") and of the regular one.

    Returns ``{"depthwise": h*w*k*k*c, "pointwise": h*w*c*f, "regular": h*w*k*k*c*f}``.
    """
    for name, v in (("h", h), ("w", w), ("c", c), ("f", f), ("k", k)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"separable_costs: {name} must be a positive int, got {v!r}")
    return {"depthwise": h * w * k * k * c, "pointwise": h * w * c * f, "regular": h * w * k * k * c * f}


def separable_figure(h, w, c, f, k=3):
    """Shapes and costs of a separable k x k convolution from c to f channels on an h x w map.

    Left: the tensors (input, depthwise kernel, intermediate, pointwise kernel, output) with
    their shapes, and the multiply-adds of each half beside its arrow. Right: those counts
    against a regular k x k convolution's.
    """
    costs = separable_costs(h, w, c, f, k)
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [2.1, 1]})
    ax.set_xlim(0, 10); ax.set_ylim(0, 6); ax.axis("off")
    ax.set_title(f"separable {k}x{k} convolution, {c} -> {f} channels, on {h}x{w}", fontsize=11)
    _box(ax, 1.2, 3, 2.0, 1.2, f"x\n{h}x{w}x{c}", "x", "io")
    _box(ax, 3.0, 5.1, 2.4, 0.8, f"depthwise kernel\n{k}x{k}x{c}x1\n({k * k * c:,} weights)", "depthwise_kernel", "spatial", 8)
    _box(ax, 5.0, 3, 2.0, 1.2, f"z\n{h}x{w}x{c}", "z", "io")
    _box(ax, 7.0, 5.1, 2.4, 0.8, f"pointwise kernel\n1x1x{c}x{f}\n({c * f:,} weights)", "pointwise_kernel", "1x1", 8)
    _box(ax, 8.8, 3, 2.0, 1.2, f"y\n{h}x{w}x{f}", "y", "io")
    _arrow(ax, 2.2, 3, 4.0, 3); _arrow(ax, 6.0, 3, 7.8, 3)
    _arrow(ax, 3.0, 4.7, 3.0, 3.05); _arrow(ax, 7.0, 4.7, 7.0, 3.05)
    t = ax.text(3.0, 1.6, f"depthwise: each channel\nits own {k}x{k} filter\n{h}*{w}*{k * k}*{c}"
                f"\n= {costs['depthwise']:,} multiply-adds", ha="center", va="center", fontsize=8)
    t.set_gid("depthwise_cost")
    t = ax.text(7.0, 1.6, f"pointwise: one {c}x{f} matrix\nproduct per pixel\n{h}*{w}*{c}*{f}"
                f"\n= {costs['pointwise']:,} multiply-adds", ha="center", va="center", fontsize=8)
    t.set_gid("pointwise_cost")
    sep = costs["depthwise"] + costs["pointwise"]
    bx.bar(["separable"], [costs["depthwise"]], color=COLORS["spatial"], ec="#333333", label="depthwise")
    bx.bar(["separable"], [costs["pointwise"]], bottom=[costs["depthwise"]], color=COLORS["1x1"],
           ec="#333333", label="pointwise")
    bx.bar(["regular"], [costs["regular"]], color="#cccccc", ec="#333333", label=f"regular {k}x{k}")
    bx.set_ylabel("multiply-adds per image")
    bx.set_title(f"separable / regular = {sep / costs['regular']:.3f}\n(= 1/{f} + 1/{k * k})", fontsize=10)
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig
