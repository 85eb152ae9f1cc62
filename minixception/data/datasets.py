"""Pick a dataset by name, optionally a subset: what the trainer and the CLI call."""
from __future__ import annotations

from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .shapes import SHAPES_CLASSES, load_shapes

DATASETS = ("shapes", "cifar10")

# the built-in default split: small enough for a CPU run of a few minutes
SHAPES_TRAIN, SHAPES_TEST = 10000, 2000


def subset(x, y, n):
    """The first ``n`` examples (the arrays are already in random order)."""
    if n is None:
        return x, y
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    return x[:n], y[:n]


def test_size_for(n_train):
    """Test images kept with ``--subset n_train``: a fifth of it, at least 200."""
    return max(n_train // 5, 200)


def load_dataset(name, subset_size=None, seed=0, root=None, download=True):
    """``"shapes" | "cifar10"`` -> dict(x_train, y_train, x_test, y_test, classes) (host uint8 / int64).

    ``subset_size`` keeps the first N training images and ``test_size_for(N)`` test images.
    The shapes data is generated from ``seed``.
    """
    if name == "shapes":
        if subset_size is None:
            n_train, n_test = SHAPES_TRAIN, SHAPES_TEST
        else:
            n_train, n_test = subset_size, test_size_for(subset_size)
        xtr, ytr, xte, yte = load_shapes(n_train, n_test, seed=seed)
        classes = SHAPES_CLASSES
    elif name == "cifar10":
        xtr, ytr, xte, yte = load_cifar10(root=root, download=download)
        if subset_size is not None:
            xtr, ytr = subset(xtr, ytr, subset_size)
            xte, yte = subset(xte, yte, test_size_for(subset_size))
        classes = CIFAR10_CLASSES
    else:
        raise ValueError(f"unknown dataset {name!r}: expected one of {DATASETS}")
    return dict(x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, classes=classes)
