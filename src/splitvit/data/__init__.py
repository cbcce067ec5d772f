"""Datasets (the embedded ``digits`` default, CIFAR-10/100, Food-101, Flowers-102, Imagenette, any
image folder), batching and augmentation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .base import IMAGENET_MEAN, IMAGENET_STD, ImageSet, Splits, batches, default_workers, eval_subset, num_batches, prepare
from .cifar import load_cifar10, load_cifar100
from .download import MissingDataset
from .digits import load_digits
from .files import FileImageSet, load_flowers102, load_food101, load_image_folder, load_imagenette
from .subsets import ClassSpecError, parse_classes, select_classes

DATASETS = ("digits", "cifar10", "cifar100", "food101", "flowers102", "imagenette", "folder")
NORMALIZATIONS = ("dataset", "imagenet")


def load_dataset(name: str, root: str | Path | None = None, download: bool = False, variant: str | None = None,
                 normalize: str = "dataset", classes=None) -> Splits:
    """The train and test splits of dataset ``name`` under ``root``.

    ``normalize="imagenet"`` normalises with ImageNet's statistics (what pretrained DeiT expects)
    instead of the dataset's own; image-file datasets use ImageNet's either way. ``classes`` keeps
    a subset of the classes, relabelled ``0..n-1`` (see :func:`~splitvit.data.subsets.parse_classes`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"dataset.normalize={normalize!r}; choose one of: {', '.join(NORMALIZATIONS)}")
    if name == "digits":
        splits = load_digits()
    elif not root:
        raise ValueError(f"dataset.root is required for {name}: the folder that holds its files (see the docs, 'Data': docs/how-to/data.md)")
    elif name == "cifar10":
        splits = load_cifar10(root, download=download)
    elif name == "cifar100":
        splits = load_cifar100(root, download=download)
    elif name == "food101":
        splits = load_food101(root, download=download)
    elif name == "flowers102":
        splits = load_flowers102(root, download=download)
    elif name == "imagenette":
        splits = load_imagenette(root, download=download, variant=variant or "imagenette2-320")
    else:
        if download:
            raise ValueError("dataset=folder cannot be downloaded: point dataset.root at your train/ and val/ folders")
        splits = load_image_folder(root)
    if normalize == "imagenet" and splits.train.mean != IMAGENET_MEAN:
        stats = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        if len(splits.train.mean) == 1:  # grey: one channel, ImageNet's mean over colours
            stats = dict(mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,))
        splits = Splits(train=replace(splits.train, **stats), test=replace(splits.test, **stats))
    if classes is not None:
        splits, _ = select_classes(splits, classes)
    return splits


__all__ = ["DATASETS", "ClassSpecError", "FileImageSet", "ImageSet", "MissingDataset", "Splits", "batches",
           "default_workers", "eval_subset", "load_dataset", "num_batches", "parse_classes", "prepare", "select_classes"]
