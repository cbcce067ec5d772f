"""What plain split learning would have sent: the baseline every byte count is compared with."""

from __future__ import annotations

import torch

from ..compression import NoCompression
from ..wire import Header, pack

_BASELINE: dict[tuple, tuple[int, int]] = {}


def uncompressed_bytes(batch: int, tokens: int, dim: int, num_classes: int, step: int, loss: float,
                       stop: bool = False) -> tuple[int, int]:
    """Serialised sizes (up, down) of plain split learning's messages for this step: measured, not computed.

    The two messages are built as the protocol builds them, with this step's id and loss. A header's
    length, not its values, sets a message's size, so each size is measured once per batch size and
    length of the step id and of the loss, with the first step and loss of those lengths. ``stop``: the
    step reached a cap, and its reply says so (see :mod:`splitvit.wire.protocol`)."""
    key = (batch, tokens, dim, num_classes, len(str(step)), len(repr(float(loss))), stop)
    if key not in _BASELINE:
        none = NoCompression(num_classes, tokens, dim)
        h = torch.zeros(batch, tokens, dim)
        up = pack(Header("train", step=step), none.client().encode(h, None, torch.zeros(batch, dtype=torch.long)).message)
        down = pack(Header("grad", step=step, loss=loss, mode="stop" if stop else None), {"grad": h})
        _BASELINE[key] = len(up), len(down)
    return _BASELINE[key]


def epoch_bytes(n_train: int, batch_size: int, tokens: int, dim: int, num_classes: int) -> int:
    """Bytes plain split learning sends in one pass over ``n_train`` samples, both directions: what
    ``train.budget_epochs`` counts in. (Each message's size is measured with a typical loss, 2.3026.)"""
    sizes = [min(batch_size, n_train - i) for i in range(0, n_train, batch_size)]
    return sum(sum(uncompressed_bytes(b, tokens, dim, num_classes, 0, 2.302585092994046)) for b in sizes)
