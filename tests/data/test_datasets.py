import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from splitvit.data import MissingDataset, batches, load_dataset
from splitvit.data import cifar


def write_cifar100(root, n_train=12, n_test=6, seed=0):
    """Tiny CIFAR-100 files in the official layout: pickled dicts with bytes keys, uint8 rows of 3072."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        d = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": [int(i % 100) for i in range(n)],
            b"coarse_labels": [int(i % 20) for i in range(n)],
            b"data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_digits_is_embedded_and_split_fixed():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.test), a.num_classes) == (1438, 359, 10)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 8, 8)


def test_batches_resize_normalise_and_resume_order():
    ds = load_dataset("digits").train
    xs = list(batches(ds, 100, 32, 3, shuffle_seed=7))
    assert len(xs) == 15 and xs[-1][0].shape == (38, 3, 32, 32)
    assert xs[0][0].mean().abs() < 1.5
    later = list(batches(ds, 100, 32, 3, shuffle_seed=7, start=3))
    assert torch.equal(later[0][1], xs[3][1])  # skipping batches keeps the epoch's order
    assert not torch.equal(next(batches(ds, 100, 32, 3, shuffle_seed=8))[1], xs[0][1])


def test_cifar100_loads_from_the_official_layout(tmp_path):
    write_cifar100(tmp_path)
    s = load_dataset("cifar100", str(tmp_path))
    assert (len(s.train), len(s.test), s.num_classes) == (12, 6, 100)
    assert s.train.images.shape == (12, 3, 32, 32) and s.train.classes[3] == "class3"
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes(), encoding="bytes")[b"data"]
    assert torch.equal(s.train.images[1].flatten(), torch.from_numpy(raw[1]))  # channel-major rows
    x, y = next(batches(s.train, 4, 64, 3))
    assert x.shape == (4, 3, 64, 64) and torch.equal(y, torch.arange(4))


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(MissingDataset, match="dataset.download=true") as e:
        load_dataset("cifar100", str(tmp_path))
    assert str(tmp_path / "cifar-100-python") in str(e.value)


def test_truncated_cifar_file_is_reported(tmp_path):
    folder = write_cifar100(tmp_path)
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    with pytest.raises(MissingDataset, match="not a complete"):
        load_dataset("cifar100", str(tmp_path))


def test_cifar_files_cannot_run_code(tmp_path):
    folder = write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load_dataset("cifar100", str(tmp_path))


def make_archive(tmp_path):
    src = tmp_path / "src"
    write_cifar100(src)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_checks_md5_and_unpacks(tmp_path, monkeypatch):
    archive, md5 = make_archive(tmp_path)
    monkeypatch.setattr(cifar, "CIFAR100_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "CIFAR100_MD5", md5)
    root = tmp_path / "data"
    s = load_dataset("cifar100", str(root), download=True)
    assert len(s.train) == 12 and (root / "cifar-100-python.tar.gz").is_file()


def test_corrupt_download_is_not_kept(tmp_path, monkeypatch):
    archive, _ = make_archive(tmp_path)
    monkeypatch.setattr(cifar, "CIFAR100_URL", archive.as_uri())
    monkeypatch.setattr(cifar, "CIFAR100_MD5", "0" * 32)
    root = tmp_path / "data"
    with pytest.raises(RuntimeError, match="md5"):
        load_dataset("cifar100", str(root), download=True)
    assert list(root.iterdir()) == []  # no partial archive left behind


def test_digits_are_scikit_learn_s_read_without_importing_it():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits as sklearn_digits

    from splitvit.data.digits import load_digits

    d, s = sklearn_digits(), load_digits()
    pixels = torch.cat([s.test.images, s.train.images])  # the split's order: test first
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(d.target)))
    assert torch.equal(pixels, torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)[order])
    assert torch.equal(torch.cat([s.test.labels, s.train.labels]), torch.from_numpy(d.target)[order])
    code = "import sys; from splitvit.data.digits import load_digits; load_digits(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
