from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several workers, one per core: one thread each, and for
    os.environ["OMP_NUM_THREADS"] = "1"     # the processes the tests start (the machine's cores are shared out)

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
from hydra import compose, initialize_config_module

# a model small enough that a few epochs on digits take seconds on two CPU cores
SMALL = ["model.embed_dim=64", "model.depth=3", "model.num_heads=2", "train.progress=false"]


def make_cfg(*overrides: str):
    """The config ``splitvit train <overrides>`` would run."""
    with initialize_config_module("splitvit.conf", version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
