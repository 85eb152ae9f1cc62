"""Inception V3 (Szegedy et al., 2016) exactly as Keras builds it: the paper's baseline.

Every convolution is a "conv unit" ``Conv2D (no bias) -> BatchNorm2D(scale=False) -> ReLU``: the
batch norms have a beta but no gamma (Keras's ``scale=False``; the ReLU and the next convolution
make a per-channel scale redundant). Eleven Inception modules (``mixed0`` ... ``mixed10``) join
their branches with a channel concatenation; the pooling branches average over 3x3 windows,
stride 1, "same" padding, *excluding* the padding from the count (Keras/TF). Flow at 299x299:

    stem     conv 3x3/2 valid 32, conv 3x3 valid 32, conv 3x3 same 64, maxpool 3x3/2,
             conv 1x1 80, conv 3x3 valid 192, maxpool 3x3/2          299 -> 149 -> 147 -> 73 -> 71 -> 35
    35x35    mixed0-2: 1x1 64 | 1x1 48, 5x5 64 | 1x1 64, 3x3 96, 3x3 96 | avgpool, 1x1 32/64/64
    grid     mixed3: 3x3/2 384 | 1x1 64, 3x3 96, 3x3/2 96 | maxpool 3x3/2        35 -> 17
    17x17    mixed4-7: 1x1 192 | 1x1 c, 1x7 c, 7x1 192 | 1x1 c, 7x1, 1x7, 7x1, 1x7 192 | avgpool, 1x1 192
             (c = 128, 160, 160, 192: the 7x7 convolutions factorised into 1x7 and 7x1)
    grid     mixed8: 1x1 192, 3x3/2 320 | 1x1 192, 1x7, 7x1, 3x3/2 192 | maxpool    17 -> 8
    8x8      mixed9-10: 1x1 320 | 1x1 384, [1x3 384 ; 3x1 384] | 1x1 448, 3x3 384, [1x3 ; 3x1] | avgpool, 1x1 192
    head     global average pool, dense 2048 -> classes (logits)

Names are the ones a fresh Keras session gives (``conv2d``, ``conv2d_1``, ...,
``batch_normalization_93``, ``activation_93``, ``average_pooling2d_8``, ``predictions``), numbered
in the order Keras's source creates the layers, which is the order of our branches. The
concatenations are transparent containers (state-dict keys stay flat: ``"conv2d_5/kernel"``,
``"batch_normalization_5/beta"``) and carry Keras's names as ``keras_name`` (``mixed0``, ``mixed9_0``,
``concatenate``...). Keras's ``model.layers`` lists the layers in *graph* order, not in creation
order (``keras_weights.keras_layer_order`` computes it); its weight files follow that order.

Counts (default arguments, Keras's): 23,817,352 trainable parameters, 23,851,784 with the batch
norm moving statistics, 313 Keras layers (94 conv + 94 BN + 94 ReLU, 4 max and 9 average pools,
15 concatenations, the global pool, the dense layer, and the input layer).

Why the paper's Table 3 says 23,626,728 and not 23,817,352: ``paper_count_candidates()`` works out
the usual suspects exactly (batch-norm gammas, the 1001-class head of Google's models, the
auxiliary classifier, BN betas, the classifier's bias); none of them, nor any combination of them,
gives the 190,624 fewer parameters of the paper, and no single weighted layer of the model, nor
any pair of them, holds exactly 190,624 parameters. The difference is **unexplained**: the paper
does not say how it counted, and the Inception V3 it trained (Google's internal one) may differ
from Keras's published architecture in ways the paper does not describe.
"""
from __future__ import annotations

from itertools import product

from .. import nn
from ..nn.init import as_generator
from .xception import _check_shape, add_head

# Keras's counts at the defaults (trainable, with BN statistics, layers incl. the input layer)
KERAS_COUNTS = dict(trainable=23_817_352, total=23_851_784, layers=313)
PAPER_PARAMS = 23_626_728          # the paper's Table 3


class _Names:
    """Keras's auto-names: the first layer of a kind is ``conv2d``, then ``conv2d_1``, ``conv2d_2``..."""

    def __init__(self):
        self.counts = {}

    def __call__(self, kind):
        i = self.counts.get(kind, 0)
        self.counts[kind] = i + 1
        return kind if i == 0 else f"{kind}_{i}"


def _mixed(keras_name, *branches):
    """A transparent Concat (flat state-dict keys) that remembers Keras's layer name."""
    c = nn.Concat(*branches, name="")
    c.keras_name = keras_name
    return c


class InceptionV3(nn.Sequential):
    """Keras's ``keras.applications.InceptionV3``, returning logits.

    x: (N, H, W, C) -> logits (N, num_classes), or the last feature map (N, h, w, 2048) when
    ``include_top=False`` (8x8 at 299x299). H, W >= 75 (the smallest input Keras accepts).

    ``weights``: None (random, seeded by ``rng``), ``"imagenet"`` (Keras's file, downloaded,
    MD5-checked and cached; needs ``num_classes=1000`` when ``include_top``, and 3 input channels),
    or a path to a Keras legacy HDF5 weight file (with or without top, matching ``include_top``).
    ``fc_layers``: widths of fully connected + ReLU layers between the global pool and the
    classifier (the paper's JFT models "with FC layers": ``(4096, 4096)``), named ``fc1``, ``fc2``...
    ``dropout``: rate of a dropout layer just before the classifier (the paper: 0.5; 0 = none).
    """

    def __init__(self, num_classes=1000, include_top=True, input_shape=(299, 299, 3), weights=None,
                 rng=None, dtype="float32", fc_layers=(), dropout=0.0):
        super().__init__(name="inception_v3")
        input_shape = _check_shape(input_shape)
        if input_shape[0] < 75 or input_shape[1] < 75:
            raise ValueError(f"InceptionV3 needs inputs of at least 75x75, got input_shape={input_shape}")
        if include_top and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if weights is not None:
            if weights == "imagenet" and include_top and num_classes != 1000:
                raise ValueError(f"weights='imagenet' with include_top=True needs num_classes=1000, got {num_classes}")
            if input_shape[2] != 3:
                raise ValueError(f"pretrained weights need 3 input channels, got input_shape={input_shape}")
            if include_top and fc_layers:
                raise ValueError("pretrained weights have no fc layers: use fc_layers=() or include_top=False")
        rng = as_generator(rng)
        self.input_shape = input_shape
        self.config = dict(num_classes=num_classes, include_top=include_top, input_shape=input_shape,
                           fc_layers=tuple(fc_layers), dropout=dropout, dtype=dtype,
                           weights=weights if weights in (None, "imagenet") else str(weights))
        name = _Names()
        kw = dict(rng=rng, dtype=dtype)

        def unit(cin, cout, kh, kw_, stride=1, padding="same"):
            """``conv2d_bn`` of Keras's source: conv (no bias) + BN (no gamma) + ReLU, a transparent Sequential."""
            return nn.Sequential(
                nn.Conv2D(cin, cout, (kh, kw_), stride=stride, padding=padding, use_bias=False,
                          name=name("conv2d"), **kw),
                nn.BatchNorm2D(cout, eps=1e-3, momentum=0.99, scale=False, name=name("batch_normalization"),
                               dtype=dtype),
                nn.ReLU(name=name("activation")), name="")

        def chain(*layers):
            return nn.Sequential(*layers, name="")

        def avg_pool():
            return nn.AvgPool2D(3, stride=1, padding="same", name=name("average_pooling2d"))

        def max_pool():
            return nn.MaxPool2D(3, stride=2, padding="valid", name=name("max_pooling2d"))

        # -- stem --------------------------------------------------------------------------------
        c = input_shape[2]
        for layer in (unit(c, 32, 3, 3, stride=2, padding="valid"), unit(32, 32, 3, 3, padding="valid"),
                      unit(32, 64, 3, 3), max_pool(), unit(64, 80, 1, 1, padding="valid"),
                      unit(80, 192, 3, 3, padding="valid"), max_pool()):
            self.append(layer)
        c = 192

        # -- 35x35: mixed0-2 --------------------------------------------------------------------------
        for i, pool_features in enumerate((32, 64, 64)):
            self.append(_mixed(f"mixed{i}",
                               unit(c, 64, 1, 1),
                               chain(unit(c, 48, 1, 1), unit(48, 64, 5, 5)),
                               chain(unit(c, 64, 1, 1), unit(64, 96, 3, 3), unit(96, 96, 3, 3)),
                               chain(avg_pool(), unit(c, pool_features, 1, 1))))
            c = 64 + 64 + 96 + pool_features

        # -- 35 -> 17: mixed3 ---------------------------------------------------------------------------
        self.append(_mixed("mixed3",
                           unit(c, 384, 3, 3, stride=2, padding="valid"),
                           chain(unit(c, 64, 1, 1), unit(64, 96, 3, 3), unit(96, 96, 3, 3, stride=2, padding="valid")),
                           max_pool()))
        c = 384 + 96 + c

        # -- 17x17: mixed4-7 (7x7 factorised into 1x7 and 7x1) ----------------------------------------
        for i, m in enumerate((128, 160, 160, 192)):
            self.append(_mixed(f"mixed{4 + i}",
                               unit(c, 192, 1, 1),
                               chain(unit(c, m, 1, 1), unit(m, m, 1, 7), unit(m, 192, 7, 1)),
                               chain(unit(c, m, 1, 1), unit(m, m, 7, 1), unit(m, m, 1, 7), unit(m, m, 7, 1),
                                     unit(m, 192, 1, 7)),
                               chain(avg_pool(), unit(c, 192, 1, 1))))
            c = 4 * 192

        # -- 17 -> 8: mixed8 --------------------------------------------------------------------------
        self.append(_mixed("mixed8",
                           chain(unit(c, 192, 1, 1), unit(192, 320, 3, 3, stride=2, padding="valid")),
                           chain(unit(c, 192, 1, 1), unit(192, 192, 1, 7), unit(192, 192, 7, 1),
                                 unit(192, 192, 3, 3, stride=2, padding="valid")),
                           max_pool()))
        c = 320 + 192 + c

        # -- 8x8: mixed9-10 (3x3 split into parallel 1x3 and 3x1) ---------------------------------------
        for i in range(2):
            b1 = unit(c, 320, 1, 1)
            b2 = chain(unit(c, 384, 1, 1))
            b2.append(_mixed(f"mixed9_{i}", unit(384, 384, 1, 3), unit(384, 384, 3, 1)))
            b3 = chain(unit(c, 448, 1, 1), unit(448, 384, 3, 3))
            b3.append(_mixed(name("concatenate"), unit(384, 384, 1, 3), unit(384, 384, 3, 1)))
            b4 = chain(avg_pool(), unit(c, 192, 1, 1))
            self.append(_mixed(f"mixed{9 + i}", b1, b2, b3, b4))
            c = 320 + 768 + 768 + 192
        self.features = c

        # -- head ---------------------------------------------------------------------------------------
        self.include_top = include_top
        self.num_classes = num_classes if include_top else None
        add_head(self, c, num_classes, include_top, fc_layers, dropout, rng, dtype)

        if weights is not None:
            from .keras_weights import get_imagenet_weights, load_keras_weights
            path = get_imagenet_weights(include_top, model="inception_v3") if weights == "imagenet" else weights
            load_keras_weights(self, path)

    def forward(self, x):
        """x: (N, H, W, C) with C = input_shape[2] -> logits (N, classes) or features (N, h, w, 2048)."""
        if getattr(x, "ndim", None) != 4 or x.shape[3] != self.input_shape[2]:
            raise ValueError(f"{self._label()}: expected input (N, H, W, {self.input_shape[2]}) (NHWC), "
                             f"got shape {getattr(x, 'shape', type(x).__name__)}")
        if x.shape[1] < 75 or x.shape[2] < 75:
            raise ValueError(f"{self._label()}: inputs must be at least 75x75, got {x.shape[1]}x{x.shape[2]}")
        return super().forward(x)

    def leaf_layers(self):
        """``[(name, layer)]`` of the leaf layers in forward order (branches in Keras's creation order)."""
        return [(m.name, m) for m in self.modules() if not m.children() and m is not self]


class UpsampleNearest(nn.Module):
    """Repeat every pixel ``factor`` x ``factor`` times (nearest neighbour): (N, H, W, C) -> (N, kH, kW, C).

    Lets a 75x75-minimum network train on 32x32 images (``train --model inceptionv3``: 32 -> 96).
    Backward: each input pixel fed ``factor**2`` outputs, so its gradient is the sum over its block.
    """

    def __init__(self, factor, name="upsample"):
        super().__init__(name)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        self.factor = factor

    def forward(self, x):
        k = self.factor
        y = x.repeat(k, axis=1).repeat(k, axis=2)
        self._keep(x.shape, y)
        return y

    def backward(self, dy):
        n, h, w, c = self._take_cache(dy)
        k = self.factor
        return dy.reshape(n, h, k, w, k, c).sum(axis=(2, 4))


def for_small_images(input_shape, **kwargs):
    """``InceptionV3`` for images smaller than 75x75 (CIFAR-10's 32x32): a nearest-neighbour
    upsampling by the smallest integer factor that reaches 75 (32 -> 96), then the network.
    Keys stay Keras's (the upsampling has no weights)."""
    h, w, c = _check_shape(input_shape)
    k = max(1, -(-75 // min(h, w)))
    net = InceptionV3(input_shape=(h * k, w * k, c), **kwargs)
    if k == 1:
        return net
    net.name = ""                            # transparent: keys stay "conv2d/kernel", not "inception_v3/..."
    model = nn.Sequential(UpsampleNearest(k), net, name="inception_v3")
    model.input_shape, model.config = (h, w, c), dict(net.config, upsample=k)
    return model


# ---------------------------------------------------------------------------------------------
# the paper's 23,626,728: candidate explanations, computed exactly
# ---------------------------------------------------------------------------------------------
def paper_count_candidates():
    """``[(description, parameter count, difference from the paper's 23,626,728)]``.

    Each candidate changes Keras's trainable count (23,817,352) by one documented difference
    between Keras's Inception V3 and a model the paper could have counted; the last rows try
    every combination of them. None reaches the paper's number (differences are never 0).
    """
    m = InceptionV3(rng=0)
    bn_channels = sum(b.channels for b in m.modules() if isinstance(b, nn.BatchNorm2D))
    base = KERAS_COUNTS["trainable"]
    # the auxiliary classifier of the Inception V3 paper (on mixed7, 17x17x768): avgpool 5x5/3,
    # conv 1x1 128 + BN, conv 5x5 768 + BN, dense 768 -> classes (TF-slim's aux_logits)
    aux_1000 = 768 * 128 + 128 + 5 * 5 * 128 * 768 + 768 + 768 * 1000 + 1000
    changes = {
        "+ BN gammas (scale=True, as Xception's BNs)": bn_channels,
        "+ 1001 classes (Google's background class)": 2048 + 1,
        "+ auxiliary classifier": aux_1000,
        "- BN betas": -bn_channels,
        "- classifier bias": -1000,
        "- classifier (include_top=False)": -(2048 * 1000 + 1000),
    }
    rows = [("Keras (trainable)", base, base - PAPER_PARAMS)]
    rows += [(k, base + v, base + v - PAPER_PARAMS) for k, v in changes.items()]
    keys = list(changes)
    for mask in product((0, 1), repeat=len(keys)):
        if sum(mask) < 2:
            continue
        n = base + sum(changes[k] for k, on in zip(keys, mask) if on)
        rows.append((" ".join(k.split(" (")[0] for k, on in zip(keys, mask) if on), n, n - PAPER_PARAMS))
    return rows


__all__ = ["InceptionV3", "UpsampleNearest", "for_small_images", "KERAS_COUNTS", "PAPER_PARAMS",
           "paper_count_candidates"]
