"""Datasets of image files, each from its canonical layout under ``dataset.root``:

- Food-101: ``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/{classes,train,test}.txt``
- Flowers-102: ``flowers-102/jpg/image_NNNNN.jpg``, ``flowers-102/imagelabels.mat``, ``flowers-102/setid.mat``
- Imagenette: ``imagenette2/{train,val}/<wnid>/*.JPEG`` (also ``imagenette2-320``, ``imagenette2-160``)
- any image folder: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (or ``test/``)

Files are decoded (Pillow) and resized to the model input in DataLoader workers; augmentation then
runs batched on the training device (:mod:`splitvit.data.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import IMAGENET_MEAN, IMAGENET_STD, Decoded, Splits  # noqa: F401 - Decoded: decodes these sets
from .download import MissingDataset, download_and_unpack, download_archive

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

FOOD101_URL, FOOD101_MD5 = "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "85eeb15f3717b99a5da872d97d918f87"
FLOWERS_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
FLOWERS_FILES = {  # file: md5
    "102flowers.tgz": "52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "a5357ecc9cb78c4bef273ce3793fc85c",
}
IMAGENETTE = {  # folder: (url, md5)
    "imagenette2": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "imagenette2-320": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "imagenette2-160": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}


@dataclass
class FileImageSet:
    """Image files and their labels; decoded on demand. ``mean``/``std`` per channel in [0, 1] units."""

    paths: list[str]
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.paths),):
            raise ValueError("one label per image file is needed")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """Classes in the set."""
        return len(self.classes)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _from_class_folders(split_dir: Path, classes: list[str] | None = None) -> FileImageSet:
    """``split_dir/<class>/<image>``; class ids in sorted folder order (or ``classes``' order)."""
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classes = classes or found
    extra = set(found) - set(classes)
    if extra:
        raise MissingDataset(f"{split_dir} has class folders {sorted(extra)[:5]} that the training split lacks")
    paths, labels = [], []
    for c, name in enumerate(classes):
        if (split_dir / name).is_dir():
            files = _files(split_dir / name)
            paths += map(str, files)
            labels += [c] * len(files)
    if not paths:
        raise MissingDataset(f"{split_dir} holds no images in class subfolders ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FileImageSet(paths, torch.tensor(labels, dtype=torch.long), list(classes))


def load_image_folder(root: str | Path) -> Splits:
    """Any image folder: ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``root/test/``)."""
    root = Path(root).expanduser()
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise MissingDataset(
            f"no image folder at {root}: expected {root}/train/<class>/<images> and {root}/val/<class>/<images> "
            "(or test/ instead of val/), one subfolder per class"
        )
    train = _from_class_folders(root / "train")
    return Splits(train=train, test=_from_class_folders(test_dir, train.classes))


def load_food101(root: str | Path, download: bool = False) -> Splits:
    """Food-101 from its official archive's layout under ``root/food-101`` (its own train/test lists)."""
    root = Path(root).expanduser()
    folder = root / "food-101"
    needed = [folder / "meta" / n for n in ("classes.txt", "train.txt", "test.txt")] + [folder / "images"]
    if download and not all(p.exists() for p in needed):
        download_and_unpack(root, FOOD101_URL, FOOD101_MD5)
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise MissingDataset(
            f"Food-101 not found: {root} lacks {', '.join(missing)}. Point dataset.root at the folder that holds "
            f"food-101/, or add dataset.download=true to fetch it ({FOOD101_URL}, 5 GB)"
        )
    classes = (folder / "meta" / "classes.txt").read_text().split()
    index = {c: i for i, c in enumerate(classes)}

    def split(name: str) -> FileImageSet:
        ids = (folder / "meta" / f"{name}.txt").read_text().split()
        bad = [i for i in ids if i.split("/")[0] not in index]
        if bad:
            raise MissingDataset(f"{folder}/meta/{name}.txt names images of unknown classes, e.g. {bad[0]}")
        paths = [str(folder / "images" / f"{i}.jpg") for i in ids]
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise MissingDataset(f"Food-101 is incomplete: {len(absent)} images of meta/{name}.txt are missing, e.g. {absent[0]}; "
                                 "unpack the archive again or use dataset.download=true")
        return FileImageSet(paths, torch.tensor([index[i.split("/")[0]] for i in ids]), classes)

    return Splits(train=split("train"), test=split("test"))


def load_flowers102(root: str | Path, download: bool = False) -> Splits:
    """Train on the official train and validation ids (2,040 images), test on the test ids (6,149)."""
    from scipy.io import loadmat  # scipy comes with scikit-learn

    root = Path(root).expanduser()
    folder = root / "flowers-102"
    if download and not ((folder / "jpg").is_dir() and (folder / "imagelabels.mat").is_file() and (folder / "setid.mat").is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        download_and_unpack(folder, FLOWERS_URL + "102flowers.tgz", FLOWERS_FILES["102flowers.tgz"])
        for name in ("imagelabels.mat", "setid.mat"):
            download_archive(FLOWERS_URL + name, folder / name, FLOWERS_FILES[name])
    missing = [n for n in ("jpg", "imagelabels.mat", "setid.mat") if not (folder / n).exists()]
    if missing:
        raise MissingDataset(
            f"Flowers-102 not found: {folder} lacks {', '.join(missing)}. Point dataset.root at the folder that holds "
            f"flowers-102/ (jpg/, imagelabels.mat, setid.mat), or add dataset.download=true ({FLOWERS_URL})"
        )
    try:
        labels = np.asarray(loadmat(folder / "imagelabels.mat")["labels"]).reshape(-1).astype(np.int64) - 1
        setid = loadmat(folder / "setid.mat")
        ids = {k: np.asarray(setid[k]).reshape(-1).astype(np.int64) for k in ("trnid", "valid", "tstid")}
    except (ValueError, KeyError, OSError) as e:
        raise MissingDataset(f"{folder}: imagelabels.mat / setid.mat are not the official files ({e})") from None
    classes = [str(c) for c in range(int(labels.max()) + 1)]

    def split(image_ids: np.ndarray) -> FileImageSet:
        paths = [str(folder / "jpg" / f"image_{i:05d}.jpg") for i in image_ids]
        absent = [p for p in paths if not Path(p).is_file()]
        if absent:
            raise MissingDataset(f"Flowers-102 is incomplete: {len(absent)} images are missing, e.g. {absent[0]}")
        return FileImageSet(paths, torch.from_numpy(labels[image_ids - 1]), classes)

    return Splits(train=split(np.concatenate([ids["trnid"], ids["valid"]])), test=split(ids["tstid"]))


def load_imagenette(root: str | Path, download: bool = False, variant: str = "imagenette2-320") -> Splits:
    """Imagenette (``variant``: imagenette2, imagenette2-320 or imagenette2-160) from its folders under ``root``."""
    if variant not in IMAGENETTE:
        raise ValueError(f"dataset.variant={variant!r}; choose one of: {', '.join(IMAGENETTE)}")
    root = Path(root).expanduser()
    folder = root / variant
    if download and not (folder / "train").is_dir():
        download_and_unpack(root, *IMAGENETTE[variant])
    if not ((folder / "train").is_dir() and (folder / "val").is_dir()):
        raise MissingDataset(
            f"Imagenette not found: expected {folder}/train/<wnid>/ and {folder}/val/<wnid>/. Point dataset.root at the "
            f"folder that holds {variant}/, or add dataset.download=true ({IMAGENETTE[variant][0]})"
        )
    return load_image_folder(folder)
