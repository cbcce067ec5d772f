"""Scoring an evaluation: the mean loss and the accuracy over batches of logits, however they were made."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


def score(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """``(logits [B, C], labels [B])`` pairs -> (mean cross-entropy, accuracy in [0, 1]) over all samples."""
    loss_sum, correct, n = 0.0, 0, 0
    for logits, labels in pairs:
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
        n += labels.shape[0]
    if n == 0:
        raise ValueError("nothing to evaluate: the test set (or eval.max_batches' subset) is empty")
    return loss_sum / n, correct / n
