"""Datasets (the embedded ``digits`` default and CIFAR-100) and batching."""

from __future__ import annotations

from .base import ImageSet, Splits, batches, num_batches, prepare
from .cifar import MissingDataset, load_cifar100
from .digits import load_digits

DATASETS = ("digits", "cifar100")


def load_dataset(name: str, root: str | None = None, download: bool = False) -> Splits:
    if name == "digits":
        return load_digits()
    if name == "cifar100":
        if not root:
            raise ValueError("dataset.root is required for cifar100: the folder that holds cifar-100-python/")
        return load_cifar100(root, download=download)
    raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "ImageSet", "MissingDataset", "Splits", "batches", "load_dataset", "num_batches", "prepare"]
