"""Xception (Chollet, 2017) exactly as Keras builds it, and a small variant for 32x32 images.

Layer names are Keras's (``block1_conv1``, ``block2_sepconv1_bn``, ``predictions``...), the four
shortcut convolutions are named ``block{2,3,4,13}_shortcut`` / ``..._shortcut_bn`` (Keras
auto-names them ``conv2d``, ``batch_normalization``...). Blocks are transparent containers
(``name=""``), so ``state_dict()`` keys are Keras's flat ``"layer/weight"`` names, e.g.
``"block5_sepconv2/pointwise_kernel"``, and the order of the weighted layers in
``model.modules()`` is Keras's ``model.layers`` order (a block's shortcut conv/BN after its
second separable conv/BN): the HDF5 loader relies on that.

Flow at 299x299 (NHWC), 36 convolutions in 14 modules plus 4 shortcut convs:

    stem      block1: conv 3x3/2 valid 32, conv 3x3 valid 64             299 -> 149 -> 147
    entry     blocks 2-4: [ReLU] sep 128/256/728, ReLU, sep, maxpool 3x3/2 ; shortcut 1x1/2 + BN
                                                                             147 -> 74 -> 37 -> 19
    middle    blocks 5-12: 3 x (ReLU, sep 728 + BN), identity shortcut      19x19x728
    exit      block13: ReLU, sep 728, ReLU, sep 1024, maxpool ; shortcut    19 -> 10
              block14: sep 1536 + BN + ReLU, sep 2048 + BN + ReLU           10x10x2048
    head      global average pool, dense 2048 -> classes (logits; softmax lives in the loss)
"""
from __future__ import annotations

from .. import nn
from ..nn.init import as_generator

# Keras's Xception, as (stem, entry widths, middle width, exit block widths, final widths).
KERAS_SPEC = dict(stem=(32, 64), entry=(128, 256, 728), middle=728, exit=(728, 1024), final=(1536, 2048))
# The small CIFAR-sized variant (width=1.0): stride-1 stem, two entry blocks (32 -> 16 -> 8),
# middle flow at 8x8, exit block to 4x4. Sized to train on a laptop CPU (most of a step's work
# is in the 32x32 stage; the README's speed section has the measured times); width=4 gives a
# ~1.6M-parameter model for a GPU.
MINI_SPEC = dict(stem=(8, 16), entry=(32, 64), middle=64, exit=(64, 128), final=(128, 192))


def _scale(c, width):
    return c if width == 1.0 else max(1, int(round(c * width)))


def _check_shape(input_shape):
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(isinstance(v, int) and v > 0 for v in input_shape)):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    return tuple(input_shape)


def _check_fc_layers(fc_layers, include_top):
    if (not isinstance(fc_layers, (tuple, list))
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in fc_layers)):
        raise ValueError(f"fc_layers must be a tuple of positive ints such as (4096, 4096), got {fc_layers!r}")
    if fc_layers and not include_top:
        raise ValueError("fc_layers needs include_top=True (they sit between the global pool and the classifier)")
    return tuple(fc_layers)


def add_head(model, features, num_classes, include_top, fc_layers=(), dropout=0.0, rng=None, dtype="float32"):
    """Append the classifier head to ``model`` (a Sequential) when ``include_top``:

        avg_pool (global average) -> [fc1, fc1_relu, fc2, fc2_relu, ...] -> [dropout] -> predictions

    ``fc_layers``: the widths of the optional fully connected + ReLU layers (the paper's JFT models
    "with FC layers": two of 4096). ``dropout``: its rate, just before the classifier (the paper's
    place for it; 0 = no layer). Dense layers are named ``fc1``, ``fc2``... (keys ``"fc1/kernel"``).
    """
    fc_layers = _check_fc_layers(fc_layers, include_top)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not include_top:
        return
    model.append(nn.GlobalAvgPool2D(name="avg_pool"))
    for i, width in enumerate(fc_layers, start=1):
        model.append(nn.Dense(features, width, name=f"fc{i}", rng=rng, dtype=dtype))
        model.append(nn.ReLU(name=f"fc{i}_relu"))
        features = width
    if dropout > 0:
        model.append(nn.Dropout(dropout, name="dropout", rng=rng))
    model.append(nn.Dense(features, num_classes, name="predictions", rng=rng, dtype=dtype))


class XceptionNet(nn.Sequential):
    """An Xception-shaped network built from a spec (the layers shared by ``Xception`` and ``mini_xception``).

    x: (N, H, W, input_shape[2]) -> logits (N, num_classes), or the last feature map
    (N, h, w, final[-1]) when ``include_top=False``.

    Options (the paper's ablations): ``residual`` (False drops every shortcut, including the four
    1x1 convs), ``intermediate`` (None / "relu" / "elu" between depthwise and pointwise),
    ``dropout`` (rate before the classifier; 0 = no layer), ``middle_blocks``, ``width``
    (multiplies every channel count), ``small_input`` (stride-1 "same" stem for 32x32 images),
    ``fc_layers`` (widths of fully connected + ReLU layers before the classifier, e.g. the
    paper's ``(4096, 4096)``; see ``add_head``).
    """

    def __init__(self, spec=KERAS_SPEC, num_classes=1000, include_top=True, input_shape=(299, 299, 3),
                 residual=True, intermediate=None, dropout=0.0, middle_blocks=8, width=1.0,
                 small_input=False, rng=None, dtype="float32", name="xception", fc_layers=()):
        super().__init__(name=name)
        input_shape = _check_shape(input_shape)
        if not isinstance(middle_blocks, int) or middle_blocks < 0:
            raise ValueError(f"middle_blocks must be a non-negative int, got {middle_blocks!r}")
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        if include_top and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        fc_layers = _check_fc_layers(fc_layers, include_top)
        rng = as_generator(rng)
        self.input_shape = input_shape
        self.config = dict(num_classes=num_classes, include_top=include_top, input_shape=input_shape,
                           residual=residual, intermediate=intermediate, dropout=dropout,
                           middle_blocks=middle_blocks, width=width, small_input=small_input, dtype=dtype,
                           fc_layers=fc_layers)
        w = lambda c: _scale(c, width)  # noqa: E731
        kw = dict(rng=rng, dtype=dtype)

        def sep(n, cin, cout):
            """``blockN_sepconvK`` + its BN (Keras: 3x3, stride 1, same, no bias)."""
            return [nn.SeparableConv2D(cin, cout, 3, padding="same", intermediate=intermediate, name=n, **kw),
                    nn.BatchNorm2D(cout, eps=1e-3, momentum=0.99, name=f"{n}_bn", dtype=dtype)]

        def relu(n):
            return nn.ReLU(name=n)

        # -- block 1: the stem ------------------------------------------------------------
        c1, c2 = w(spec["stem"][0]), w(spec["stem"][1])
        stride, pad = (1, "same") if small_input else (2, "valid")
        self.append(nn.Conv2D(input_shape[2], c1, 3, stride=stride, padding=pad, use_bias=False,
                              name="block1_conv1", **kw))
        self.append(nn.BatchNorm2D(c1, name="block1_conv1_bn", dtype=dtype))
        self.append(relu("block1_conv1_act"))
        self.append(nn.Conv2D(c1, c2, 3, padding="same" if small_input else "valid", use_bias=False,
                              name="block1_conv2", **kw))
        self.append(nn.BatchNorm2D(c2, name="block1_conv2_bn", dtype=dtype))
        self.append(relu("block1_conv2_act"))

        # -- entry flow and exit block: downsampling blocks with a 1x1/2 conv shortcut ----------
        def down_block(b, cin, c_mid, c_out, act_first):
            main = ([relu(f"block{b}_sepconv1_act")] if act_first else []) + sep(f"block{b}_sepconv1", cin, c_mid)
            main += [relu(f"block{b}_sepconv2_act")] + sep(f"block{b}_sepconv2", c_mid, c_out)
            main += [nn.MaxPool2D(3, stride=2, padding="same", name=f"block{b}_pool")]
            main = nn.Sequential(*main, name="")
            if not residual:
                return main
            shortcut = nn.Sequential(
                nn.Conv2D(cin, c_out, 1, stride=2, padding="same", use_bias=False, name=f"block{b}_shortcut", **kw),
                nn.BatchNorm2D(c_out, name=f"block{b}_shortcut_bn", dtype=dtype), name="")
            return nn.Residual(main, shortcut, name="")

        b, cin = 2, c2
        for i, c in enumerate(spec["entry"]):
            c = w(c)
            self.append(down_block(b, cin, c, c, act_first=(i > 0)))
            b, cin = b + 1, c

        # -- middle flow: identity shortcuts ----------------------------------------------------
        cm = w(spec["middle"])
        if middle_blocks and cm != cin:
            raise ValueError(f"middle width {cm} must equal the last entry width {cin}")
        for _ in range(middle_blocks):
            main = []
            for k in (1, 2, 3):
                main += [relu(f"block{b}_sepconv{k}_act")] + sep(f"block{b}_sepconv{k}", cin, cin)
            main = nn.Sequential(*main, name="")
            self.append(nn.Residual(main, None, name="") if residual else main)
            b += 1

        # -- exit flow ------------------------------------------------------------------------------
        e1, e2 = w(spec["exit"][0]), w(spec["exit"][1])
        self.append(down_block(b, cin, e1, e2, act_first=True))
        b, cin = b + 1, e2
        f1, f2 = w(spec["final"][0]), w(spec["final"][1])
        for k, (ci, co) in enumerate(((cin, f1), (f1, f2)), start=1):
            for layer in sep(f"block{b}_sepconv{k}", ci, co) + [relu(f"block{b}_sepconv{k}_act")]:
                self.append(layer)
        self.features = f2

        # -- head -----------------------------------------------------------------------------------
        self.include_top = include_top
        self.num_classes = num_classes if include_top else None
        add_head(self, f2, num_classes, include_top, fc_layers, dropout, rng, dtype)

    def forward(self, x):
        """x: (N, H, W, C) with C = input_shape[2] -> logits (N, classes) or features (N, h, w, F)."""
        if getattr(x, "ndim", None) != 4 or x.shape[3] != self.input_shape[2]:
            raise ValueError(f"{self._label()}: expected input (N, H, W, {self.input_shape[2]}) (NHWC), "
                             f"got shape {getattr(x, 'shape', type(x).__name__)}")
        return super().forward(x)

    def leaf_layers(self):
        """``[(name, layer)]`` of the leaf layers in forward order (Keras's ``model.layers`` order)."""
        return [(m.name, m) for m in self.modules() if not m.children() and m is not self]


class Xception(XceptionNet):
    """Keras's ``keras.applications.Xception``, returning logits.

    ``weights``: None (random, seeded by ``rng``), ``"imagenet"`` (Keras's file, downloaded, MD5-checked
    and cached; needs ``num_classes=1000`` when ``include_top``, and 3 input channels) or a path to a
    Keras legacy HDF5 weight file (with or without top, matching ``include_top``).

    Counts (default arguments): 22,855,952 trainable parameters, 22,910,480 with the BN moving
    statistics, 20,861,480 for ``include_top=False``; output 10x10x2048 before pooling at 299x299.
    ``fc_layers=(4096, 4096)`` adds 2048*4096 + 4096 + 4096*4096 + 4096 parameters, and the
    classifier then reads 4096 features instead of 2048 (+2048*1000): 27,222,016 more.
    """

    def __init__(self, num_classes=1000, include_top=True, input_shape=(299, 299, 3), weights=None,
                 residual=True, intermediate=None, dropout=0.0, middle_blocks=8, width=1.0,
                 small_input=False, rng=None, dtype="float32", fc_layers=()):
        if weights is not None:
            if weights == "imagenet" and include_top and num_classes != 1000:
                raise ValueError(f"weights='imagenet' with include_top=True needs num_classes=1000, got {num_classes}")
            if _check_shape(input_shape)[2] != 3:
                raise ValueError(f"pretrained weights need 3 input channels, got input_shape={input_shape}")
            if not (residual and middle_blocks == 8 and width == 1.0):
                raise ValueError("pretrained weights need the standard architecture "
                                 "(residual=True, middle_blocks=8, width=1.0)")
            if include_top and fc_layers:
                raise ValueError("pretrained weights have no fc layers: use fc_layers=() or include_top=False")
        super().__init__(KERAS_SPEC, num_classes=num_classes, include_top=include_top,
                         input_shape=input_shape, residual=residual, intermediate=intermediate,
                         dropout=dropout, middle_blocks=middle_blocks, width=width,
                         small_input=small_input, rng=rng, dtype=dtype, name="xception",
                         fc_layers=fc_layers)
        self.config["weights"] = weights if weights in (None, "imagenet") else str(weights)
        if weights is not None:
            from .keras_weights import load_keras_weights, get_imagenet_weights
            path = get_imagenet_weights(include_top) if weights == "imagenet" else weights
            load_keras_weights(self, path)


def mini_xception(num_classes=10, width=1.0, middle_blocks=2, residual=True, intermediate=None,
                  dropout=0.0, rng=None, dtype="float32", input_shape=(32, 32, 3), fc_layers=()):
    """A small Xception for 32x32 images (CIFAR-10, the built-in shapes dataset).

    Same structure and layer names as Xception (stem ``block1``, downsampling blocks with 1x1/2
    shortcuts, identity middle blocks, exit block, two final separable convs, global pool, dense),
    but a stride-1 "same" stem and narrower, fewer blocks; at ``width=1.0``:

        stem 8, 16 (32x32) -> entry 32 (16x16), 64 (8x8) -> middle_blocks x 64 (8x8)
        -> exit 64, 128 (4x4) -> final 128, 192 -> pool -> dense          (~110k parameters)

    ``width`` multiplies every channel count: the default trains on a small CPU (the README's speed
    section has measured step times); ``width=4`` (~1.6M parameters) is a stronger model for a GPU.
    """
    return XceptionNet(MINI_SPEC, num_classes=num_classes, include_top=True, input_shape=input_shape,
                       residual=residual, intermediate=intermediate, dropout=dropout,
                       middle_blocks=middle_blocks, width=width, small_input=True, rng=rng,
                       dtype=dtype, name="mini_xception", fc_layers=fc_layers)


__all__ = ["Xception", "XceptionNet", "mini_xception", "add_head", "KERAS_SPEC", "MINI_SPEC"]
