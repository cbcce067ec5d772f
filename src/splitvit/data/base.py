"""In-memory image sets and the batches the training loop draws from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .download import MissingDataset



class ImageFiles(Protocol):
    """A labelled set of image files (:class:`~splitvit.data.files.FileImageSet`, which builds on this module)."""

    paths: Sequence
    labels: torch.Tensor

    def __len__(self) -> int: ...

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what timm's DeiT weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        """Classes in the set."""
        return len(self.classes)


@dataclass
class Splits:
    """A dataset's training and test sets, and the dataset's ids of the classes kept (``dataset.classes``)."""
    train: ImageSet
    test: ImageSet
    class_ids: list[int] | None = None  # the dataset's ids of the kept classes, when dataset.classes chose some

    @property
    def num_classes(self) -> int:
        """Classes of the dataset (of the subset kept)."""
        return self.train.num_classes


class Decoded(torch.utils.data.Dataset):
    """``(uint8 [3, size, size], label)`` per file: decoded and resized to the model input (bilinear)."""

    def __init__(self, ds: ImageFiles, size: int):
        self.ds, self.size = ds, size

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        path = self.ds.paths[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError) as e:
            raise MissingDataset(f"{path} cannot be read as an image ({e}); replace or remove it") from None
        return x, self.ds.labels[i]


def prepare(images: torch.Tensor, ds, size: int, channels: int,
            augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float, resized to ``size`` (bilinear, antialiased), augmented, normalised."""
    x = images.float().div_(255)
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"images have {x.shape[1]} channels, the model takes {channels}")
        x = x.expand(-1, channels, -1, -1)  # grey -> the model's channels
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if augment is not None:
        x = augment(x)
    mean = torch.tensor(ds.mean, device=x.device).repeat(channels // len(ds.mean)).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, device=x.device).repeat(channels // len(ds.std)).view(1, -1, 1, 1)
    return (x - mean) / std


def batches(
    ds,
    batch_size: int,
    size: int,
    channels: int = 3,
    shuffle_seed: int | None = None,
    device: str | torch.device = "cpu",
    start: int = 0,
    augment=None,
    workers: int = 0,
    indices: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(images [B, C, size, size], labels [B])``; the last batch may be smaller.

    The order is a pure function of ``shuffle_seed`` (the loop passes ``seed`` and the epoch), so
    a resumed run sees exactly the batches it would have seen; ``start`` skips that many batches.
    ``augment(x, key)`` (see :class:`~splitvit.data.augment.Augment`) gets the batch in [0, 1] on
    ``device`` and a key that identifies the batch, so its random draws are reproducible too.
    In-memory sets are sliced; file sets are decoded by ``workers`` DataLoader processes into
    pinned memory when ``device`` is a GPU, and copied without blocking. ``indices`` restricts the
    epoch to those samples (see :func:`eval_subset`).
    """
    device = torch.device(device)
    n = len(ds)
    if indices is not None:
        order = indices if shuffle_seed is None else indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(shuffle_seed))]
    elif shuffle_seed is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
    order = order[start * batch_size:]
    pin = device.type == "cuda"
    if hasattr(ds, "images"):
        source = ((ds.images[idx], ds.labels[idx]) for idx in order.split(batch_size))
    else:
        source = torch.utils.data.DataLoader(
            Decoded(ds, size), batch_size=batch_size, sampler=order.tolist(), num_workers=workers, pin_memory=pin,
        )
    for i, (x, y) in enumerate(_one_line_errors(source), start=start):
        if pin and not x.is_pinned():
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        key = None if shuffle_seed is None else shuffle_seed * 1_000_003 + i
        aug = None if augment is None else (lambda t: augment(t, key))  # noqa: E731
        yield prepare(x, ds, size, channels, aug), y


def _one_line_errors(source):
    """``source``'s batches; a file a DataLoader worker could not read is reported as one line, as without
    workers (a worker's error comes back with the worker's whole traceback in its message)."""
    it = iter(source)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except MissingDataset as e:
            lines = str(e).strip().splitlines()
            if len(lines) > 1 and lines[-1].startswith(f"{MissingDataset.__module__}.{MissingDataset.__name__}: "):
                raise MissingDataset(lines[-1].split(": ", 1)[1]) from None
            raise
        yield batch


def num_batches(ds, batch_size: int) -> int:
    """Batches of ``batch_size`` in ``ds``, the last one partial."""
    return -(-len(ds) // batch_size)


EVAL_SUBSET_SEED = 0  # not the run's seed: runs with different seeds are compared on the same images


def eval_subset(ds, size: int) -> torch.Tensor:
    """Sorted ids of a fixed random subset of ``size`` samples of ``ds``: the same in every run.

    A quick look at the test set (``eval.max_batches``) must not be its first batches: many test
    sets are sorted by class, and the first batches would be one class.
    """
    if size >= len(ds):
        return torch.arange(len(ds))
    g = torch.Generator().manual_seed(EVAL_SUBSET_SEED)
    return torch.randperm(len(ds), generator=g)[:size].sort().values


def default_workers() -> int:
    """DataLoader processes for image files: the cores this process may use, at most 4."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
