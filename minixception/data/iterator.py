"""Mini-batches: seeded shuffling, per-channel normalisation, CIFAR augmentation.

One code path for NumPy and CuPy: the images stay where they are (a uint8 array on
the host or on the GPU); each batch is gathered, cast to float, normalised and
augmented there. The random choices (order, crop offsets, flips) come from one host
``numpy.random.Generator``, so a CPU run and a GPU run see the same batches, and the
generator's state (saved in checkpoints) fixes the data order of the next epoch.
Only small index arrays travel host -> device per batch; nothing comes back.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, is_gpu_array


def channel_stats(x):
    """x: uint8 (N, H, W, C) -> (mean (C,), std (C,)) float64 on the host, in [0, 255] units."""
    xp = get_array_module(x)
    c = x.shape[-1]
    flat = x.reshape(-1, c)
    mean = flat.mean(axis=0, dtype=xp.float64)
    # per-channel variance in chunks: never a float64 copy of the whole dataset
    var = xp.zeros(c, dtype=xp.float64)
    step = 1 << 20
    for i in range(0, flat.shape[0], step):
        d = flat[i:i + step].astype(xp.float64) - mean
        var += (d * d).sum(axis=0)
    std = xp.sqrt(var / flat.shape[0])
    from ..backend import to_numpy
    return to_numpy(mean), np.maximum(to_numpy(std), 1e-6)


def normalize(x, mean, std, dtype="float32"):
    """uint8 (N, H, W, C) -> float (x - mean) / std, per channel, on x's device."""
    xp = get_array_module(x)
    mean = xp.asarray(mean, dtype=dtype)
    inv = xp.asarray(1.0 / np.asarray(std, dtype=np.float64), dtype=dtype)
    out = x.astype(dtype)
    out -= mean
    out *= inv
    return out


def draw_crop_flip(rng, n, pad=4, flip=True):
    """The random choices of one augmented batch: (row offsets, column offsets, flips), host arrays.

    Kept apart so a resumed epoch can replay the draws of the batches it skips.
    """
    oy = rng.integers(0, 2 * pad + 1, size=n)
    ox = rng.integers(0, 2 * pad + 1, size=n)
    fl = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return oy, ox, fl


def random_crop_flip(x, rng, pad=4, flip=True):
    """The standard CIFAR augmentation on a float batch x: (N, H, W, C).

    Zero-pad ``pad`` pixels on each side (zero = the channel mean after normalisation),
    take a random H x W crop, and mirror left-right with probability 1/2. Offsets and
    flips come from the host generator ``rng``; the gather runs on x's device.
    """
    return crop_flip(x, *draw_crop_flip(rng, x.shape[0], pad, flip), pad=pad)


def crop_flip(x, oy, ox, fl, pad=4):
    """x: (N, H, W, C) float; oy, ox: (N,) int offsets in [0, 2 pad]; fl: (N,) bool -> (N, H, W, C).

    Image i is zero-padded by ``pad``, cropped at row oy[i], column ox[i], and mirrored
    left-right where fl[i]. Each image depends only on its own draws, so a slice of a batch
    augmented with the same slice of the draws gives the same slice of the result.
    """
    xp = get_array_module(x)
    n, h, w, c = x.shape
    if not (len(oy) == len(ox) == len(fl) == n):
        raise ValueError(f"crop_flip: expected {n} draws (one per image), got {len(oy)}, {len(ox)}, {len(fl)}")
    rows = oy[:, None] + np.arange(h)[None, :]                              # (N, H)
    cols = np.where(fl[:, None], ox[:, None] + (w - 1 - np.arange(w))[None, :],
                    ox[:, None] + np.arange(w)[None, :])                    # (N, W)
    xpad = xp.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
    xpad[:, pad:pad + h, pad:pad + w] = x
    b = xp.asarray(np.arange(n)[:, None, None])
    return xpad[b, xp.asarray(rows)[:, :, None], xp.asarray(cols)[:, None, :]]


class BatchIterator:
    """Iterate ``(xb float (B, H, W, C), yb int64 (B,))`` over a dataset, on the data's device.

    x: uint8 (N, H, W, C) NumPy or CuPy; y: int (N,) on the same device.
    mean, std: per-channel statistics (host arrays, [0, 255] units).
    shuffle / augment draw from ``rng`` (a numpy Generator or an int seed); one full
    pass per ``iter()``. ``drop_last`` drops a final short batch (batch norm wants > 1).

    shard: None, or a callable ``n -> (lo, hi)`` naming the rows of each global batch of
    ``n`` images that this iterator produces (a data-parallel rank's slice). Only those rows
    are gathered, normalised and augmented, but the shuffle order and the random draws are
    made for the whole global batch, exactly as without ``shard``: the rows produced are bit
    for bit ``[lo:hi]`` of the unsharded batch, and the generator ends every epoch in the
    same state. It is called once per produced batch, just before that batch is made.
    """

    def __init__(self, x, y, batch_size, mean, std, shuffle=False, augment=False, rng=None,
                 drop_last=False, dtype="float32", shard=None):
        if x.ndim != 4:
            raise ValueError(f"BatchIterator: expected images (N, H, W, C), got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"BatchIterator: expected labels ({x.shape[0]},), got shape {y.shape}")
        if is_gpu_array(x) != is_gpu_array(y):
            raise TypeError("BatchIterator: images and labels must live on the same device")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shard is not None and not callable(shard):
            raise TypeError(f"BatchIterator: shard must be None or a callable n -> (lo, hi), "
                            f"got {type(shard).__name__}")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.shuffle, self.augment, self.drop_last, self.dtype = shuffle, augment, drop_last, dtype
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.shard = shard

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch()

    def epoch(self, skip=0):
        """One pass; the first ``skip`` batches are not produced but their random draws are
        made, so the rest of the pass is exactly what an uninterrupted pass would give."""
        xp = get_array_module(self.x)
        n = self.x.shape[0]
        order = self.rng.permutation(n) if self.shuffle else None
        for k in range(len(self)):
            lo, hi = k * self.batch_size, min(n, (k + 1) * self.batch_size)
            # the draws of the whole global batch, in the generator's fixed order, whichever
            # rows are produced (or none, for a skipped batch)
            draws = draw_crop_flip(self.rng, hi - lo) if self.augment else None
            if k < skip:
                continue
            a, b = self._rows(hi - lo)
            if order is None:
                xb, yb = self.x[lo + a:lo + b], self.y[lo + a:lo + b]
            else:
                idx = xp.asarray(order[lo + a:lo + b])
                xb, yb = self.x[idx], self.y[idx]
            xb = normalize(xb, self.mean, self.std, self.dtype)
            if self.augment:
                xb = crop_flip(xb, *(d[a:b] for d in draws))
            yield xb, yb

    def _rows(self, n):
        """(a, b): the rows of a global batch of n this iterator produces (all without ``shard``)."""
        if self.shard is None:
            return 0, n
        a, b = self.shard(n)
        if not (0 <= a <= b <= n):
            raise ValueError(f"BatchIterator: shard({n}) must give 0 <= lo <= hi <= {n}, got ({a}, {b})")
        return int(a), int(b)
