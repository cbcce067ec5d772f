"""Class subsets: ``dataset.classes=0:50``, ``dataset.classes=[3,7,9]`` or ``dataset.classes=[apple,bear]``.

The chosen classes are relabelled ``0..n-1`` in the order the spec gives them, identically in the
train and the test split, so a model pretrained on one subset and fine-tuned on another sees two
ordinary datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .base import Splits


class ClassSpecError(ValueError):
    """A ``dataset.classes`` spec that names no valid, distinct classes; the message gives the valid range."""


def parse_classes(spec, classes: list[str]) -> list[int]:
    """The class ids ``spec`` selects from ``classes`` (the dataset's class names), in the spec's order.

    ``spec`` is ``"a:b"`` (ids ``a..b-1``; either end may be left out, as a Python slice), a single id
    or name, or a sequence of ids and/or names (a list, a tuple, an OmegaConf list from a config).
    """
    n = len(classes)
    where = f"valid ids are 0..{n - 1} (range a:b with 0 <= a < b <= {n}), or class names such as {classes[0]!r}"
    if isinstance(spec, str) and ":" in spec:
        parts = spec.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            lo = int(parts[0]) if parts[0].strip() else 0
            hi = int(parts[1]) if parts[1].strip() else n
        except ValueError:
            raise ClassSpecError(f"dataset.classes={spec!r} is not a range a:b; {where}") from None
        if not 0 <= lo < hi <= n:
            raise ClassSpecError(f"dataset.classes={spec!r} is out of range or empty; {where}")
        return list(range(lo, hi))
    items = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else [spec]
    if not items:
        raise ClassSpecError(f"dataset.classes is an empty list; {where}")
    index = {name: i for i, name in enumerate(classes)}
    ids = []
    for item in items:
        if isinstance(item, bool):
            raise ClassSpecError(f"dataset.classes has {item!r}, not a class; {where}")
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit() and item not in index):
            i = int(item)
            if not 0 <= i < n:
                raise ClassSpecError(f"dataset.classes has id {i}, out of range; {where}")
        elif isinstance(item, str) and item in index:
            i = index[item]
        else:
            raise ClassSpecError(f"dataset.classes has {item!r}, which is no class of this dataset; {where}")
        ids.append(i)
    dupes = sorted({classes[i] for i in ids if ids.count(i) > 1})
    if dupes:
        raise ClassSpecError(f"dataset.classes names {', '.join(map(repr, dupes))} more than once; name each class once")
    return ids


def select_classes(splits: Splits, spec) -> tuple[Splits, list[int]]:
    """Keep only the classes ``spec`` selects (see :func:`parse_classes`), relabelled ``0..n-1``.

    Works on any split whose images are indexed like its ``labels`` (in-memory ``images`` or file
    ``paths``). Returns the new splits and the original ids of the kept classes, in label order.
    """
    ids = parse_classes(spec, splits.train.classes)
    lookup = torch.full((splits.train.num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(ids)] = torch.arange(len(ids))
    names = [splits.train.classes[i] for i in ids]

    def keep(ds):
        new = lookup[ds.labels]
        idx = (new >= 0).nonzero().squeeze(1)
        if hasattr(ds, "images"):
            return replace(ds, images=ds.images[idx], labels=new[idx], classes=names)
        return replace(ds, paths=[ds.paths[i] for i in idx.tolist()], labels=new[idx], classes=names)

    return Splits(train=keep(splits.train), test=keep(splits.test), class_ids=ids), ids
