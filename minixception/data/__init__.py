"""Data: CIFAR-10 (official binary archive, no pickle), the built-in generated
"shapes" dataset (no download), and a batch iterator with CIFAR augmentation.

    x_train, y_train, x_test, y_test = mx.data.load_cifar10()   # uint8 (N, 32, 32, 3), int64 (N,)
    x_train, y_train, x_test, y_test = mx.data.load_shapes(seed=0)
    for xb, yb in mx.data.BatchIterator(x, y, 128, mean, std, shuffle=True, augment=True, rng=0): ...
"""
from .cifar10 import (CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL, ChecksumError, DatasetUnavailable,
                      cache_dir, load_cifar10, parse_cifar10_archive)
from .iterator import BatchIterator, channel_stats, crop_flip, draw_crop_flip, normalize, random_crop_flip
from .shapes import SHAPES_CLASSES, load_shapes, make_shapes
from .datasets import load_dataset, subset

__all__ = ["load_cifar10", "parse_cifar10_archive", "cache_dir", "CIFAR10_URL", "CIFAR10_MD5",
           "CIFAR10_CLASSES", "ChecksumError", "DatasetUnavailable", "load_shapes", "make_shapes",
           "SHAPES_CLASSES", "BatchIterator", "channel_stats", "normalize", "random_crop_flip", "draw_crop_flip",
           "crop_flip",
           "load_dataset", "subset"]
