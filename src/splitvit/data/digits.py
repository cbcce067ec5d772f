"""The 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set): needs no download."""

from __future__ import annotations

import numpy as np
import torch

from .base import ImageSet, Splits

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is fixed: the same 1437 / 360 images everywhere


def load_digits() -> Splits:
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    # pixel values are 0..16; keep them as uint8 images like every other dataset
    images = torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    n_test = int(round(TEST_FRACTION * len(labels)))
    classes = [str(c) for c in d.target_names]
    stats = dict(mean=(0.5,), std=(0.5,))
    test, train = order[:n_test], order[n_test:]
    return Splits(
        train=ImageSet(images[train], labels[train], classes, **stats),
        test=ImageSet(images[test], labels[test], classes, **stats),
    )
