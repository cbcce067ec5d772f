"""Numerical precision of the ViT's compute (``train.precision``), one place for client, server and local training."""

from __future__ import annotations

import torch


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast for the ViT's matmuls when asked (``train.precision=bf16``); a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
