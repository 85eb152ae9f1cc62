"""Softmax cross-entropy, numerically stable, mean over the batch.

    p = softmax(z),  loss = mean_n( logsumexp(z_n) - z_n[label_n] ),  dz = (p - onehot) / N

Subtracting the row maximum before ``exp`` keeps logits of +-1000 finite.
"""
from __future__ import annotations

from ..backend import get_array_module, is_gpu_array


def softmax_cross_entropy(logits, labels):
    """logits: (N, K) float, labels: (N,) int in [0, K) -> (loss: 0-d array, dlogits: (N, K)).

    The loss stays a 0-d array on the logits' device (no host sync on the GPU).
    """
    xp = get_array_module(logits, labels)
    if getattr(logits, "ndim", None) != 2:
        raise ValueError(f"softmax_cross_entropy: expected logits (N, K), got shape {getattr(logits, 'shape', None)}")
    if logits.dtype.kind != "f":
        raise TypeError(f"softmax_cross_entropy: expected float logits, got dtype {logits.dtype}")
    n, k = logits.shape
    if getattr(labels, "shape", None) != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"softmax_cross_entropy: expected integer labels of shape ({n},), got "
            f"shape {getattr(labels, 'shape', None)} dtype {getattr(labels, 'dtype', None)}")
    if not is_gpu_array(labels) and n and (labels.min() < 0 or labels.max() >= k):
        # (on the GPU this check would cost a device->host sync every step: the trainer checks once)
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {k}), got values from "
                         f"{int(labels.min())} to {int(labels.max())}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    loss = (xp.log(sum_exp[:, 0]) - shifted[rows, labels]).mean()
    dlogits = exp / sum_exp
    dlogits[rows, labels] -= 1.0
    dlogits /= n
    return loss, dlogits


def softmax(logits):
    """logits: (..., K) -> probabilities (..., K), each row summing to 1."""
    xp = get_array_module(logits)
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
