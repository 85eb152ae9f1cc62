"""Losses: ``(loss, dlogits) = softmax_cross_entropy(logits, labels)``; see functional/loss.py."""
from .functional.loss import softmax, softmax_cross_entropy

__all__ = ["softmax_cross_entropy", "softmax"]
