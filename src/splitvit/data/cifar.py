"""CIFAR-10 and CIFAR-100 from their official python-pickle directories:
``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
``<root>/cifar-100-python/{train,test,meta}``. Also the checked download every dataset uses."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from .base import ImageSet, Splits
from .download import MissingDataset, download_and_unpack

log = logging.getLogger(__name__)

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _ArraysOnly(pickle.Unpickler):
    """The official files are pickles of dicts, lists, bytes and numpy arrays: allow nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = _ArraysOnly(f, encoding="bytes").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def download_cifar100(root: Path, url: str | None = None, checksum: str | None = None) -> None:
    """Fetch the official CIFAR-100 archive into ``root`` (md5-checked) and unpack it."""
    download_and_unpack(root, url or CIFAR100_URL, checksum or CIFAR100_MD5)


def load_cifar100(root: str | Path, download: bool = False) -> Splits:
    """CIFAR-100 from the official python files under ``root/cifar-100-python`` (downloaded first with
    ``download=True``)."""
    root = Path(root).expanduser()
    folder = root / CIFAR100_DIR
    files = [folder / n for n in ("train", "test", "meta")]
    if download and not all(f.is_file() for f in files):
        download_cifar100(root)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise MissingDataset(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}. Point dataset.root at the folder "
            f"that holds {CIFAR100_DIR}/, or add dataset.download=true to fetch it ({CIFAR100_URL})"
        )
    classes = [c.decode() for c in _unpickle(folder / "meta")["fine_label_names"]]

    def split(name: str) -> ImageSet:
        try:
            d = _unpickle(folder / name)
            data = np.asarray(d["data"], dtype=np.uint8)
            labels = np.asarray(d["fine_labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, io.UnsupportedOperation) as e:
            raise MissingDataset(f"{folder / name} is not a complete CIFAR-100 file ({e}); delete it and download again") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise MissingDataset(f"{folder / name} holds data of shape {data.shape} for {len(labels)} labels; expected [n, 3072]")
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        return ImageSet(images, torch.from_numpy(labels), classes, CIFAR_MEAN, CIFAR_STD)

    return Splits(train=split("train"), test=split("test"))


def load_cifar10(root: str | Path, download: bool = False, url: str | None = None, checksum: str | None = None) -> Splits:
    """CIFAR-10 from the official python files under ``root/cifar-10-batches-py`` (downloaded first with
    ``download=True``)."""
    root = Path(root).expanduser()
    folder = root / CIFAR10_DIR
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    if download and not all((folder / n).is_file() for n in names):
        download_and_unpack(root, url or CIFAR10_URL, checksum or CIFAR10_MD5)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingDataset(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}. Point dataset.root at the folder "
            f"that holds {CIFAR10_DIR}/, or add dataset.download=true to fetch it ({CIFAR10_URL})"
        )
    classes = [c.decode() for c in _unpickle(folder / "batches.meta")["label_names"]]

    def part(names: list[str]) -> ImageSet:
        data, labels = [], []
        for name in names:
            try:
                d = _unpickle(folder / name)
                data.append(np.asarray(d["data"], dtype=np.uint8))
                labels.append(np.asarray(d["labels"], dtype=np.int64))
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, io.UnsupportedOperation) as e:
                raise MissingDataset(f"{folder / name} is not a complete CIFAR-10 file ({e}); delete it and download again") from None
            if data[-1].ndim != 2 or data[-1].shape[1] != 3072 or len(labels[-1]) != len(data[-1]):
                raise MissingDataset(f"{folder / name} holds data of shape {data[-1].shape}; expected [n, 3072]")
        images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32).copy())
        return ImageSet(images, torch.from_numpy(np.concatenate(labels)), classes, CIFAR10_MEAN, CIFAR10_STD)

    return Splits(train=part(names[:5]), test=part(["test_batch"]))
