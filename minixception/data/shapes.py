"""The built-in dataset "shapes": generated, deterministic from a seed, no download.

32 x 32 RGB images in 10 classes: six outlines/solids (disk, square, triangle, ring,
plus, X) and four textured square patches (horizontal stripes, vertical stripes,
checkerboard, diagonal stripes). Every image draws at random:

- the object's centre (anywhere that keeps most of it inside), size, colour;
- a background colour with a linear gradient of random direction and strength;
- a second colour for the "off" part of a texture and the stripe period and phase;
- in half of the images, a distractor: a thin line of a third colour across the image;
- Gaussian pixel noise.

Colours are random per image and the object may be lighter or darker than the
background, so no pixel position or colour says the class on its own. Measured on
the default split (10000 train / 2000 test, seed 0): softmax regression on the
pixels fits the training set to ~50% but scores 11-12% on the test set (chance: 10%);
the CLI's default mini Xception (width 0.5, 4000 training images, 6 epochs) reaches
~81%, and a small depthwise-separable net in PyTorch ~90% on the full 10000.
"""
from __future__ import annotations

import numpy as np

DISTRACTOR_P = 0.5     # share of images crossed by a distractor line
SHAPES_CLASSES = ("disk", "square", "triangle", "ring", "plus", "x_cross",
                  "h_stripes", "v_stripes", "checker", "d_stripes")


def _masks(label, dx, dy, r, period, phase):
    """Boolean masks (m, S, S) of the object of class ``label``; dx, dy: pixel offsets from the centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if label == 0:
        return dx ** 2 + dy ** 2 <= r ** 2
    if label == 1:
        return np.maximum(ax, ay) <= 0.85 * r
    if label == 2:   # upward triangle: apex at -r, base at +0.8r
        return (dy <= 0.8 * r) & (ax <= 0.6 * (dy + r))
    if label == 3:
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    arm = np.maximum(0.22 * r, 1.0)
    if label == 4:
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    if label == 5:
        u, v = np.abs(dx + dy) / np.sqrt(2), np.abs(dx - dy) / np.sqrt(2)
        return ((u <= arm) & (v <= r)) | ((v <= arm) & (u <= r))
    # textured patches: the square region, and the "on" part of the pattern inside it
    inside = np.maximum(ax, ay) <= r
    if label == 6:
        t = dy
    elif label == 7:
        t = dx
    elif label == 8:
        t = None
    else:
        t = (dx + dy) / np.sqrt(2)
    if t is None:
        on = ((np.floor((dx + phase) / period) + np.floor((dy + phase) / period)) % 2) == 0
    else:
        on = np.floor((t + phase) / period) % 2 == 0
    return inside, on


def make_shapes(n, seed=0, size=32):
    """Generate ``n`` images: x uint8 (n, size, size, 3), y int64 (n,), classes balanced.

    The same ``(n, seed, size)`` always gives the same arrays, byte for byte.
    """
    if n < 1:
        raise ValueError(f"make_shapes: n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    s = size
    grid = np.arange(s, dtype=np.float64) + 0.5
    gy, gx = grid[None, :, None], grid[None, None, :]          # (1, S, 1), (1, 1, S)

    def u(lo, hi):
        return rng.uniform(lo, hi, size=(n, 1, 1))

    r = u(0.17, 0.33) * s                                       # object radius, 5.4 .. 10.6 px at 32
    cx = rng.uniform(r[:, 0, 0] * 0.7, s - r[:, 0, 0] * 0.7)[:, None, None]
    cy = rng.uniform(r[:, 0, 0] * 0.7, s - r[:, 0, 0] * 0.7)[:, None, None]
    period = rng.integers(2, 5, size=(n, 1, 1)).astype(np.float64)
    phase = u(0, 4)
    bg = rng.uniform(0.0, 1.0, size=(n, 3))
    fg = rng.uniform(0.0, 1.0, size=(n, 3))
    off = rng.uniform(0.0, 1.0, size=(n, 3))
    # keep the object visible: push fg away from bg when they are too close
    close = np.linalg.norm(fg - bg, axis=1) < 0.45
    fg[close] = 1.0 - bg[close]
    ang = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    grad = u(-0.35, 0.35) * ((gx - s / 2) * np.cos(ang) + (gy - s / 2) * np.sin(ang)) / s
    img = bg[:, None, None, :] + grad[..., None]                 # (n, S, S, 3)

    dx, dy = gx - cx, gy - cy
    for label in range(10):
        idx = np.nonzero(y == label)[0]
        if idx.size == 0:
            continue
        m = _masks(label, dx[idx], dy[idx], r[idx], period[idx], phase[idx])
        if label >= 6:
            inside, on = m
            sub = img[idx]
            sub = np.where((inside & ~on)[..., None], off[idx][:, None, None, :], sub)
            img[idx] = np.where((inside & on)[..., None], fg[idx][:, None, None, :], sub)
        else:
            img[idx] = np.where(m[..., None], fg[idx][:, None, None, :], img[idx])

    # distractor: a 1-2 px line of a third colour at a random angle and offset
    la = u(0, np.pi)
    lo = u(-0.4, 0.4) * s
    dist = np.abs((gx - s / 2) * np.sin(la) - (gy - s / 2) * np.cos(la) - lo)
    line = (dist <= u(0.5, 1.0)) & (u(0, 1) < DISTRACTOR_P)
    img = np.where(line[..., None], rng.uniform(0, 1, size=(n, 1, 1, 3)), img)

    img += rng.normal(0.0, 0.06, size=img.shape)
    x = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return x, y


def load_shapes(n_train=10000, n_test=2000, seed=0, size=32):
    """(x_train uint8 (n_train, size, size, 3), y_train int64, x_test, y_test), deterministic from ``seed``.

    Train and test come from independent streams of the same seed (no shared images).
    """
    s_train, s_test = np.random.SeedSequence(seed).spawn(2)
    x_train, y_train = make_shapes(n_train, np.random.default_rng(s_train), size)
    x_test, y_test = make_shapes(n_test, np.random.default_rng(s_test), size)
    return x_train, y_train, x_test, y_test
