"""The 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set): needs no download."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .base import ImageSet, MissingDataset, Splits

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is fixed: the same 1437 / 360 images everywhere


def digits_file() -> Path:
    """scikit-learn's ``digits.csv.gz`` (1,797 rows: 64 pixels, then the digit), found without importing
    scikit-learn, whose import costs a process seconds for one 57 kB file."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataset("dataset=digits reads the 8x8 digits that ship with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise MissingDataset(f"scikit-learn's digits are not at {path}: reinstall scikit-learn")
    return path


def load_digits() -> Splits:
    """scikit-learn's 8x8 handwritten digits, read from the file it ships (no import of scikit-learn),
    split into training and test sets with a fixed seed."""
    # what sklearn.datasets.load_digits reads, the same way
    data = np.loadtxt(digits_file(), delimiter=",")
    pixels, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    # pixel values are 0..16; keep them as uint8 images like every other dataset
    images = torch.from_numpy(np.rint(pixels * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(target)
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    n_test = int(round(TEST_FRACTION * len(labels)))
    classes = [str(c) for c in range(10)]
    stats = dict(mean=(0.5,), std=(0.5,))
    test, train = order[:n_test], order[n_test:]
    return Splits(
        train=ImageSet(images[train], labels[train], classes, **stats),
        test=ImageSet(images[test], labels[test], classes, **stats),
    )
