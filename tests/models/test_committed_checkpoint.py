"""The committed pretrained checkpoint of the CPU protocol: present, intact, what its note says, usable
by the fine-tuning experiments without pretraining again."""

import hashlib
import json
import re

import pytest
import torch

from splitvit.models import create_model, load_checkpoint, read_metadata
from splitvit.models.pretrained import REPO_ROOT

FILE = REPO_ROOT / "pretrained" / "vit_nano_patch8_32-cifar100_0-49.safetensors"
NOTE = REPO_ROOT / "pretrained" / "README.md"
CIFAR = REPO_ROOT.parent / "shared" / "data"  # where this machine keeps the official files, if it has them


def test_the_file_is_what_its_note_says():
    recorded = re.search(r"sha256\W* `([0-9a-f]{64})`", NOTE.read_text()).group(1)
    assert hashlib.sha256(FILE.read_bytes()).hexdigest() == recorded
    assert FILE.stat().st_size < 10_000_000
    meta = read_metadata(FILE)
    assert meta["model"] == "vit_nano_patch8_32" and meta["num_classes"] == "50"
    assert meta["dataset"] == "cifar100" and json.loads(meta["dataset_classes"]) == "0:50"
    assert json.loads(meta["split_index"]) is None  # pretrained in one piece
    assert f"{float(meta['final_val_acc']):.4f}" in NOTE.read_text()  # the note quotes the accuracy it was exported with


def test_it_loads_and_every_fine_tuning_experiment_builds_from_it():
    from hydra import compose, initialize_config_module

    from splitvit.train.build import build_halves

    model = create_model("vit_nano_patch8_32", num_classes=50)
    load_checkpoint(model, FILE)
    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = compose("config", overrides=["+experiment=cpu/main_adc"])
    client, server, _, _ = build_halves(cfg, 50, torch.device("cpu"))
    assert torch.equal(client.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert torch.equal(server.blocks["7"].mlp.fc1.weight, model.blocks[7].mlp.fc1.weight)
    assert not torch.equal(server.head.weight, model.head.weight)  # model.new_head: the classes are new


@pytest.mark.skipif(not (CIFAR / "cifar-100-python" / "test").is_file(), reason="needs the official CIFAR-100 files")
def test_its_accuracy_on_its_own_classes():
    from splitvit.data import batches, eval_subset, load_dataset

    data = load_dataset("cifar100", CIFAR, classes="0:50", normalize="imagenet")
    model = create_model("vit_nano_patch8_32", num_classes=50).eval()
    load_checkpoint(model, FILE)
    correct = n = 0
    with torch.no_grad():
        for x, y in batches(data.test, 500, 32, indices=eval_subset(data.test, 2000)):
            correct += int((model(x).argmax(-1) == y).sum())
            n += len(y)
    recorded = float(read_metadata(FILE)["final_val_acc"])  # on all 5,000 test images
    assert abs(correct / n - recorded) < 0.04
