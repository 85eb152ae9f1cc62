"""Containers that wire layers together: in sequence, with a residual add, or side by side.

Backward mirrors forward:
* Sequential runs the children's backward in reverse order.
* Residual ``y = main(x) + shortcut(x)`` hands the *same* dy to both paths and sums
  the two input gradients (the shortcut is the identity when None, so dx = dmain + dy).
* Concat runs branches on the same input and joins their outputs on the channel
  axis; backward slices dy per branch and sums the branches' input gradients.
"""
from __future__ import annotations

from ..backend import get_array_module
from .module import Module


class Sequential(Module):
    def __init__(self, *layers, name=None):
        super().__init__(name)
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for layer in layers:
            self.add_child(layer)

    def __iter__(self):
        return iter(self._children)

    def __len__(self):
        return len(self._children)

    def __getitem__(self, i):
        return self._children[i]

    def append(self, layer):
        return self.add_child(layer)

    def forward(self, x):
        for layer in self._children:
            x = layer(x)
        self._keep(None, x)       # nothing to cache; dy is checked against x at the end
        return x

    def backward(self, dy):
        self._take_cache(dy)
        for layer in reversed(self._children):
            dy = layer.backward(dy)
        return dy


class Residual(Module):
    """y = main(x) + shortcut(x); the shortcut is the identity when None."""

    def __init__(self, main, shortcut=None, name=None):
        super().__init__(name)
        self.main = self.add_child(main)
        self.shortcut = self.add_child(shortcut) if shortcut is not None else None

    def forward(self, x):
        y = self.main(x)
        s = self.shortcut(x) if self.shortcut is not None else x
        if y.shape != s.shape:
            raise ValueError(f"{self._label()}: main path gives shape {y.shape} but the shortcut "
                             f"gives {s.shape}; they must match to be added")
        y = y + s
        self._keep(None, y)
        return y

    def backward(self, dy):
        self._take_cache(dy)
        dmain = self.main.backward(dy)
        dshort = self.shortcut.backward(dy) if self.shortcut is not None else dy
        return dmain + dshort        # out of place: either term may be a view of dy


class Concat(Module):
    """Run every branch on x and concatenate the outputs on the channel (last) axis."""

    def __init__(self, *branches, name=None):
        super().__init__(name)
        if not branches:
            raise ValueError("Concat needs at least one branch")
        for b in branches:
            self.add_child(b)

    def forward(self, x):
        xp = get_array_module(x)
        outs = [b(x) for b in self._children]
        shapes = {o.shape[:-1] for o in outs}
        if len(shapes) != 1:
            raise ValueError(f"{self._label()}: branch outputs differ in (N, H, W): {[o.shape for o in outs]}")
        y = xp.concatenate(outs, axis=-1)
        self._keep([o.shape[-1] for o in outs], y)
        return y

    def backward(self, dy):
        widths = self._take_cache(dy)
        dx, start = None, 0
        for b, w in zip(self._children, widths):
            g = b.backward(dy[..., start:start + w])
            start += w
            dx = g if dx is None else dx + g
        return dx
