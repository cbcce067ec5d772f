"""CIFAR-10 and the image-file datasets, each from small files written in its real on-disk layout."""

import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from splitvit.data import IMAGENET_MEAN, MissingDataset, batches, load_dataset
from splitvit.data import files
from splitvit.data.augment import Augment
from splitvit.train import fit

from conftest import SMALL, make_cfg


def image(path, color, size=(40, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def write_cifar10(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"labels": [i % 10 for i in range(n)],
             b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_food101(root):
    folder = root / "food-101"
    classes = ["apple_pie", "sushi"]
    train, test = [], []
    for c, name in enumerate(classes):
        for i in range(3):
            image(folder / "images" / name / f"{100 + i}.jpg", (200 * c, 50, 50), fmt="JPEG")
            (train if i < 2 else test).append(f"{name}/{100 + i}")
    (folder / "meta").mkdir()
    (folder / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    (folder / "meta" / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "meta" / "test.txt").write_text("\n".join(test) + "\n")


def write_flowers102(root):
    from scipy.io import savemat

    folder = root / "flowers-102"
    for i in range(1, 7):
        image(folder / "jpg" / f"image_{i:05d}.jpg", (40 * i, 0, 0), fmt="JPEG")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 1, 2, 3]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]), "tstid": np.array([[4, 5, 6]])})


def write_folder(root, classes=("cat", "dog"), val="val"):
    for c, name in enumerate(classes):
        for i in range(3):
            image(root / "train" / name / f"{i}.png", (0, 100 * c, 0))
        image(root / val / name / "x.jpeg", (0, 100 * c, 0), fmt="JPEG")


@pytest.mark.parametrize("name, writer, n_train, n_test, n_classes", [
    ("cifar10", write_cifar10, 20, 4, 10),
    ("food101", write_food101, 4, 2, 2),
    ("flowers102", write_flowers102, 3, 3, 3),
    ("folder", write_folder, 6, 2, 2),
])
def test_each_dataset_loads_from_its_real_layout(tmp_path, name, writer, n_train, n_test, n_classes):
    writer(tmp_path)
    s = load_dataset(name, tmp_path, normalize="imagenet")
    assert (len(s.train), len(s.test), s.num_classes) == (n_train, n_test, n_classes)
    assert s.train.mean == IMAGENET_MEAN
    x, y = next(batches(s.train, 4, 32, shuffle_seed=0))
    assert x.shape == (min(4, n_train), 3, 32, 32) and x.dtype == torch.float32 and y.max() < n_classes


def test_labels_follow_the_official_files(tmp_path):
    write_food101(tmp_path)
    s = load_dataset("food101", tmp_path)
    assert s.train.labels.tolist() == [0, 0, 1, 1] and s.train.paths[2].endswith("sushi/100.jpg")
    write_flowers102(tmp_path)
    f = load_dataset("flowers102", tmp_path)
    assert f.train.labels.tolist() == [0, 1, 2] and f.test.paths[0].endswith("image_00004.jpg")
    # decoded colours survive: flower 4 is (160, 0, 0) red
    x, _ = files.Decoded(f.test, 8)[0]
    assert x.shape == (3, 8, 8) and abs(int(x[0].float().mean()) - 160) < 8 and int(x[1].float().mean()) < 8


def test_imagenette_layout_and_variants(tmp_path):
    write_folder(tmp_path / "imagenette2-320", classes=("n01440764", "n02102040"))
    s = load_dataset("imagenette", tmp_path, variant="imagenette2-320")
    assert s.train.classes == ["n01440764", "n02102040"] and len(s.test) == 2
    with pytest.raises(MissingDataset, match=r"imagenette2-160/train.*dataset.download=true"):
        load_dataset("imagenette", tmp_path, variant="imagenette2-160")
    with pytest.raises(ValueError, match="imagenette2-320"):
        load_dataset("imagenette", tmp_path, variant="imagenette3")


@pytest.mark.parametrize("name, says", [
    ("cifar10", "cifar-10-batches-py.*dataset.download=true"),
    ("food101", "food-101/meta/classes.txt.*dataset.download=true"),
    ("flowers102", "flowers-102 lacks jpg, imagelabels.mat, setid.mat.*dataset.download=true"),
    ("imagenette", "imagenette2-320/train"),
    ("folder", "train/<class>/<images>"),
])
def test_missing_dataset_says_where_and_how(tmp_path, name, says):
    with pytest.raises(MissingDataset, match=says):
        load_dataset(name, tmp_path)


def test_partial_datasets_are_reported(tmp_path):
    write_food101(tmp_path)
    (tmp_path / "food-101" / "images" / "sushi" / "101.jpg").unlink()
    with pytest.raises(MissingDataset, match="incomplete: 1 images.*sushi/101.jpg"):
        load_dataset("food101", tmp_path)
    write_folder(tmp_path / "f")
    (tmp_path / "f" / "train" / "cat" / "0.png").write_bytes(b"not a png")
    s = load_dataset("folder", tmp_path / "f")
    with pytest.raises(MissingDataset, match="0.png cannot be read"):
        list(batches(s.train, 8, 16))


def test_download_checks_the_archive_and_unpacks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_folder(src / "imagenette2-160", classes=("n01440764",))
    archive = tmp_path / "imagenette2-160.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "imagenette2-160", arcname="imagenette2-160")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(files.IMAGENETTE, "imagenette2-160", (archive.as_uri(), md5))
    s = load_dataset("imagenette", tmp_path / "data", download=True, variant="imagenette2-160")
    assert len(s.train) == 3
    monkeypatch.setitem(files.IMAGENETTE, "imagenette2-160", (archive.as_uri(), "0" * 32))
    with pytest.raises(RuntimeError, match="md5"):
        load_dataset("imagenette", tmp_path / "other", download=True, variant="imagenette2-160")


def test_workers_decode_the_same_batches(tmp_path):
    write_folder(tmp_path)
    s = load_dataset("folder", tmp_path)
    a = list(batches(s.train, 4, 16, shuffle_seed=3))
    b = list(batches(s.train, 4, 16, shuffle_seed=3, workers=2))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    skipped = list(batches(s.train, 4, 16, shuffle_seed=3, start=1))
    assert torch.equal(skipped[0][0], a[1][0])


def test_augmentation_is_per_sample_and_reproducible():
    aug = Augment()
    x = torch.rand(16, 3, 32, 32)
    a, b, c = aug(x, 1), aug(x, 1), aug(x, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    same = torch.stack([aug(x[:1].expand(16, -1, -1, -1).contiguous(), 5)])[0]
    assert len({t.sum().item() for t in same}) > 8  # one image, sixteen different augmentations
    with pytest.raises(ValueError, match="RGB"):
        aug(torch.rand(2, 1, 8, 8), 0)


def test_training_on_an_image_folder_with_augmentation(tmp_path):
    write_folder(tmp_path / "imgs")
    s = fit(make_cfg(*SMALL, "dataset=folder", f"dataset.root={tmp_path / 'imgs'}", "dataset.workers=0",
                     "train.batch_size=4", "train.max_steps=2"), tmp_path / "run")
    assert s["steps"] == 2 and s["dataset"] == "folder"


def test_deit_at_224_with_augmentation_on_cifar100_files(tmp_path):
    """The paper's input pipeline on this machine: CIFAR-100 files, resized to 224, augmented, DeiT-Tiny."""
    from test_datasets import write_cifar100

    write_cifar100(tmp_path / "data", n_train=8, n_test=4)
    s = fit(make_cfg("dataset=cifar100", f"dataset.root={tmp_path / 'data'}", "model=deit_tiny_patch16_224",
                     "model.depth=4", "split.index=3", "train.batch_size=4", "train.max_steps=2", "eval.batch_size=4",
                     "train.progress=false"), tmp_path / "run")
    assert s["steps"] == 2 and s["model"] == "deit_tiny_patch16_224"
    assert s["bytes_up"] < 2 * 4 * 197 * 192 * 4 * 0.2  # ADC at 0.1 of DeiT-Tiny's 197 x 192 activations


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_one_line_with_workers_or_without(tmp_path, workers):
    write_folder(tmp_path / "imgs")
    bad = next((tmp_path / "imgs" / "train").rglob("*.*"))
    bad.write_bytes(b"not an image")
    s = load_dataset("folder", tmp_path / "imgs")
    with pytest.raises(MissingDataset) as e:
        list(batches(s.train, 4, 16, workers=workers))
    assert len(str(e.value).splitlines()) == 1 and str(bad) in str(e.value) and "replace or remove it" in str(e.value)
