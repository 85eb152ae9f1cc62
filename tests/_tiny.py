"""A tiny conv net and dataset for the training tests (fast on a CPU, independent of mx.models)."""
import numpy as np

import minixception as mx
from minixception import nn


def tiny_model(seed=0, width=4, dropout=0.0):
    r = np.random.default_rng(seed)
    layers = [nn.Conv2D(3, width, 3, stride=2, padding="same", use_bias=False, rng=r), nn.BatchNorm2D(width),
              nn.ReLU(), nn.SeparableConv2D(width, 2 * width, rng=r), nn.BatchNorm2D(2 * width), nn.ReLU(),
              nn.MaxPool2D(), nn.Flatten()]     # 32x32 -> 8x8x(2w); flatten: memorises fast
    if dropout:
        layers.append(nn.Dropout(dropout, rng=r))
    layers.append(nn.Dense(8 * 8 * 2 * width, 10, rng=r))
    return nn.Sequential(*layers)


def tiny_data(n_train=64, n_test=32, seed=0):
    x, y, xt, yt = mx.data.load_shapes(n_train, n_test, seed=seed)
    return dict(x_train=x, y_train=y, x_test=xt, y_test=yt)


def params_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}
