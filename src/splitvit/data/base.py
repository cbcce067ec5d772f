"""In-memory image sets and the batches the training loop draws from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """``images`` uint8 ``[n, C, H, W]``, ``labels`` long ``[n]``; ``mean``/``std`` per channel in [0, 1] units."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [n, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("one label per image is needed")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Splits:
    train: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def prepare(images: torch.Tensor, ds: ImageSet, size: int, channels: int) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float, resized to ``size`` (bilinear, antialiased), normalised."""
    x = images.float().div_(255)
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"images have {x.shape[1]} channels, the model takes {channels}")
        x = x.expand(-1, channels, -1, -1)  # grey -> the model's channels
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(ds.mean, device=x.device).repeat(channels // len(ds.mean)).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=x.device).repeat(channels // len(ds.std)).view(1, -1, 1, 1)
    return (x - mean) / std


def batches(
    ds: ImageSet,
    batch_size: int,
    size: int,
    channels: int = 3,
    shuffle_seed: int | None = None,
    device: str | torch.device = "cpu",
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(images [B, C, size, size], labels [B])``; the last batch may be smaller.

    The order is a pure function of ``shuffle_seed`` (the loop passes ``seed`` and the epoch), so
    a resumed run sees exactly the batches it would have seen; ``start`` skips that many batches.
    """
    n = len(ds)
    if shuffle_seed is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    for first in range(start * batch_size, n, batch_size):
        idx = order[first : first + batch_size]
        x = ds.images[idx].to(device, non_blocking=True)
        yield prepare(x, ds, size, channels), ds.labels[idx].to(device, non_blocking=True)


def num_batches(ds: ImageSet, batch_size: int) -> int:
    return -(-len(ds) // batch_size)
