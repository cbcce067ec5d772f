"""Pieces the CPU protocol needs: training in one piece, the learning-rate schedule, the seeded quick
evaluation subset, the worker default, when checkpoints are written."""

import pytest
import torch
from PIL import Image

from conftest import SMALL, make_cfg
from splitvit.data import default_workers, eval_subset, load_dataset
from splitvit.train import fit
from splitvit.train.common import lr_factor


def test_whole_model_learns_and_sends_nothing(tmp_path):
    s = fit(make_cfg(*SMALL, "split.index=null", "train.epochs=3", "train.lr=2e-3", "train.batch_size=32"), tmp_path)
    assert s["method"] == "whole" and s["split_index"] is None
    assert s["bytes_up"] == s["bytes_down"] == s["baseline_bytes_up"] == 0 and s["compression_measured"] is None
    assert s["final_val_acc"] > 0.17  # chance is 0.1: a ViT from scratch on digits starts slowly
    assert (tmp_path / "checkpoints" / "client.pt").is_file()


def test_cosine_schedule():
    assert [lr_factor("constant", s, 100, 10) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert lr_factor("cosine", 0, 100, 10) == pytest.approx(0.1) and lr_factor("cosine", 9, 100, 10) == 1.0
    assert lr_factor("cosine", 10, 100, 10) == 1.0 and lr_factor("cosine", 55, 100, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100, 10) == pytest.approx(0.0)


def test_the_schedule_reaches_both_halves(tmp_path):
    fit(make_cfg(*SMALL, "train.schedule=cosine", "train.max_steps=4"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "clients.pt", weights_only=True)
    # the last step (3 of 4) ran at 1e-4 * lr_factor(3, 4, 0)
    expected = 1e-4 * lr_factor("cosine", 3, 4, 0)
    assert state["members"][0]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected)
    assert state["hub"]["halves"][0]["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected)


def sorted_folder(root, classes=4, per_class=30):
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class if split == "val" else 2):
                Image.new("RGB", (8, 8), (60 * c, 0, 0)).save(d / f"{i}.png")


def test_quick_evaluation_is_a_fixed_mix_of_classes(tmp_path):
    sorted_folder(tmp_path)
    data = load_dataset("folder", tmp_path)
    ids = eval_subset(data.test, 20)
    assert torch.equal(ids, eval_subset(data.test, 20)) and len(set(ids.tolist())) == 20
    assert len(set(data.test.labels[ids].tolist())) == 4  # the first 20 sorted files would be one class
    assert torch.equal(eval_subset(data.test, 1000), torch.arange(len(data.test)))


def test_max_batches_evaluates_the_same_subset_in_every_run(tmp_path):
    sorted_folder(tmp_path / "data")
    args = (*SMALL, "dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.augment=none", "dataset.workers=0",
            "train.max_steps=1", "eval.batch_size=10", "eval.max_batches=2")
    a = fit(make_cfg(*args), tmp_path / "a")
    b = fit(make_cfg(*args, "seed=1"), tmp_path / "b")
    # 20 images of 4 classes: accuracy is a multiple of 1/20, and not the 1.0 or 0.0 of a one-class slice
    for s in (a, b):
        assert round(s["final_val_acc"] * 20) == pytest.approx(s["final_val_acc"] * 20)
        assert 0 < s["final_val_acc"] < 1


def test_workers_default_to_the_usable_cores_at_most_4():
    import os

    assert default_workers() == max(1, min(4, len(os.sched_getaffinity(0))))
    assert make_cfg("dataset=food101").dataset.workers is None


@pytest.mark.parametrize("mode, files", [("every_eval", True), ("last", True), ("none", False)])
def test_checkpoint_modes(tmp_path, mode, files):
    fit(make_cfg(*SMALL, f"train.checkpoint={mode}", "train.max_steps=3", "train.eval_every=1"), tmp_path)
    assert (tmp_path / "checkpoints" / "clients.pt").is_file() == files  # both halves, in a simulation


def test_eval_every_gives_short_runs_more_points(tmp_path):
    fit(make_cfg(*SMALL, "train.max_steps=5", "train.eval_every=2"), tmp_path)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5]


def test_tensorboard_logger_writes_live_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(make_cfg(*SMALL, "logger=tensorboard", "logger.every_steps=1", "train.max_steps=4", "train.eval_every=2"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "eval/val_acc", "eval/MB_sent"} <= set(tags)
    assert [e.step for e in events.Scalars("eval/val_acc")] == [2, 4]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_resuming_a_finished_run_measures_it_without_training(tmp_path):

    s = fit(make_cfg(*SMALL, "train.max_steps=3", "train.eval_every=2"), tmp_path)
    again = fit(make_cfg(*SMALL, "train.max_steps=3", "train.eval_every=2", "train.resume=true", "eval.also=[compressed]"), tmp_path)
    assert again["steps"] == s["steps"] == 3 and again["stopped_by"] == "max_steps"
    assert again["final_val_acc"] == s["final_val_acc"] and "final_val_acc_compressed" in again
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # no new evaluation, no new step
    # a raised cap does continue it
    more = fit(make_cfg(*SMALL, "train.max_steps=5", "train.eval_every=2", "train.resume=true"), tmp_path)
    assert more["steps"] == 5
