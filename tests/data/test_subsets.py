"""Class subsets (dataset.classes): parsing, relabelling, the same map in train and test, clear errors."""

import json

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.data import ClassSpecError, ImageSet, Splits, load_dataset, parse_classes, select_classes
from splitvit.data.files import FileImageSet
from splitvit.train import ConfigError, fit

NAMES = ["apple", "bear", "cat", "dog", "eel"]


@pytest.mark.parametrize("spec, ids", [
    ("1:4", [1, 2, 3]), (":2", [0, 1]), ("3:", [3, 4]), ([4, 0], [4, 0]), (["cat", "apple"], [2, 0]),
    (["dog", 1], [3, 1]), (2, [2]), ("eel", [4]), (["3"], [3]),
])
def test_specs(spec, ids):
    assert parse_classes(spec, NAMES) == ids


@pytest.mark.parametrize("spec, words", [
    ("0:6", "out of range"), ("3:3", "empty"), ("a:b", "not a range"), ("1:2:3", "not a range"), ([], "empty"),
    ([1, 1], "more than once"), (["cat", 2], "more than once"), ([5], "out of range"), ([-1], "out of range"),
    (["wolf"], "no class"), ([True], "not a class"),
])
def test_bad_specs_name_the_valid_range(spec, words):
    with pytest.raises(ClassSpecError, match=words) as e:
        parse_classes(spec, NAMES)
    assert "more than once" in words or "0..4" in str(e.value)


def in_memory(labels):
    labels = torch.tensor(labels)
    images = labels.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).to(torch.uint8).clone()  # each image holds its label
    return ImageSet(images, labels, NAMES, (0.5,), (0.5,))


def test_relabelled_the_same_way_in_train_and_test():
    splits = Splits(in_memory([0, 1, 2, 3, 4, 3, 2]), in_memory([4, 3, 2, 1, 0]))
    kept, ids = select_classes(splits, [3, 1])
    assert ids == [3, 1] and kept.class_ids == [3, 1]
    for ds in (kept.train, kept.test):
        assert ds.classes == ["dog", "bear"]
        original = ds.images[:, 0, 0, 0].long()  # the label each image was made with
        assert torch.equal(torch.tensor([3, 1])[ds.labels], original)
    assert kept.train.labels.tolist() == [1, 0, 0] and kept.test.labels.tolist() == [0, 1]


def test_file_sets_keep_their_paths():
    ds = FileImageSet([f"{i}.jpg" for i in range(5)], torch.tensor([0, 1, 2, 1, 0]), NAMES[:3])
    kept, _ = select_classes(Splits(ds, ds), "1:3")
    assert kept.train.paths == ["1.jpg", "2.jpg", "3.jpg"] and kept.train.labels.tolist() == [0, 1, 0]


def test_digits_subset_trains_and_is_recorded(tmp_path):
    splits = load_dataset("digits", classes=[7, 3])
    assert splits.num_classes == 2 and set(splits.test.labels.tolist()) == {0, 1}
    s = fit(make_cfg(*SMALL, "dataset.classes=[7,3]", "train.max_steps=3"), tmp_path)
    assert s["dataset_classes"] == [7, 3] and s["num_classes"] == 2
    assert json.loads((tmp_path / "summary.json").read_text())["dataset_classes"] == [7, 3]


def test_hydra_range_override_reaches_the_loader(tmp_path):
    s = fit(make_cfg(*SMALL, "dataset.classes=2:5", "train.max_steps=2"), tmp_path)
    assert s["dataset_classes"] == [2, 3, 4]


def test_a_bad_spec_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"0\.\.9"):
        fit(make_cfg(*SMALL, "dataset.classes=8:12"), tmp_path)
