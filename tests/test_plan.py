"""The paper's experiment configs: each expands to its jobs without running them, and runs as a multirun."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from conftest import SMALL
from splitvit.plan import experiments, jobs, main as plan

PAPER = ["main_none", "main_adc", "main_bottlenet", "main_topk", "main_randtopk", "main_c3sl", "split_index",
         "batch_size", "grid", "feature"]


CPU = ["pretrain", "main_none", "main_adc", "main_bottlenet", "main_topk", "main_randtopk", "main_c3sl", "main_quant",
       "main_fedlite", "main_lowrank", "adc_merge_only", "adc_select_only", "adc_feature", "clients", "channel", "channel_research", "alast"]


def test_every_paper_and_cpu_experiment_is_shipped():
    assert sorted(experiments()) == sorted([f"paper/{n}" for n in PAPER] + [f"cpu/{n}" for n in CPU])


@pytest.mark.parametrize("name, count, must", [
    ("main_adc", 5 * 2, "method.compression=0.02"),
    ("main_topk", 4 * 2, "method.compression=0.05"),
    ("main_fedlite", 3 * 2, "method.q=32"),
    ("adc_feature", 2 * 2, "method.feature=mean"),
    ("pretrain", 1, None),
    ("clients", 1, None),
    ("channel", 1, None),
    ("channel_research", 1, None),
    ("alast", 1, None),
])
def test_cpu_protocol_jobs(name, count, must):
    listed = jobs([f"+experiment=cpu/{name}"])
    assert len(listed) == count and (must is None or any(must in j for j in listed))
    cfg = compose_job(listed[0])
    if name == "pretrain":
        assert cfg.split.index is None and cfg.dataset.classes == "0:50"
    else:  # the fine-tuning protocol: the committed checkpoint, the other 50 classes, split a quarter in
        assert cfg.model.checkpoint.startswith("pretrained/") and cfg.dataset.classes == "50:100"
        assert cfg.split.index == (None if name == "alast" else 2) and cfg.train.lr == 1e-4
        if name.startswith("channel"):  # a fixed 392 steps: every method and channel trains on the same samples
            assert cfg.train.budget_epochs is None and cfg.train.max_steps == 392 and cfg.channel.name == "awgn"
        elif name == "alast":  # in one piece, profiled, a fixed 392 steps
            assert cfg.train.budget_epochs is None and cfg.train.max_steps == 392 and cfg.train.profile
        else:
            assert cfg.train.budget_epochs == 2


def compose_job(job):
    with initialize_config_module("splitvit.conf", version_base=None):
        return compose("config", overrides=job)


@pytest.mark.parametrize("name, count, must", [
    ("main_adc", 2 * 2 * 7 * 3, "method.compression=0.01"),
    ("main_c3sl", 2 * 2 * 5 * 3, "method.compression=0.03125"),
    ("split_index", 2 * 5 * 3, "split.index=10"),
    ("batch_size", 5 * 3, "train.batch_size=256"),
    ("grid", 6 * 6 * 3, "method.token_ratio=0.7"),
    ("feature", 3 * 3 * 3, "method.feature=mean"),
])
def test_dry_run_lists_the_jobs(name, count, must):
    listed = jobs([f"+experiment=paper/{name}"])
    assert len(listed) == count and len({tuple(j) for j in listed}) == count
    assert any(must in j for j in listed)


def test_command_line_narrows_the_sweep_and_bad_settings_are_caught(capsys):
    listed = jobs(["+experiment=paper/main_adc", "model=deit_tiny_patch16_224", "seed=0", "method.compression=0.1,0.2"])
    assert len(listed) == 2 * 2  # two datasets x the two compressions given
    assert plan(["+experiment=paper/main_adc", "method.compression=1.5"]) == 2
    assert "method.compression" in capsys.readouterr().err  # errors go to stderr


def test_paper_protocol_is_in_the_configs():
    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = compose("config", overrides=["+experiment=paper/main_adc"])
    assert (cfg.model.name, cfg.model.pretrained, cfg.split.index, cfg.train.batch_size) == ("deit_tiny_patch16_224", True, 3, 128)
    assert (cfg.train.lr, cfg.train.budget_epochs, cfg.dataset.augment, cfg.dataset.normalize) == (1e-4, 10, "paper", "imagenet")


def test_slurm_launcher_config_composes():
    with initialize_config_module("splitvit.conf", version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_.lower() and cfg.hydra.launcher.gpus_per_node == 1


def test_an_experiment_runs_as_a_multirun(tmp_path):
    """The experiment's sweep with every axis pinned on the command line: one small job, on this machine."""
    sweep = tmp_path / "multi"
    cmd = [sys.executable, "-m", "splitvit", "train", "--multirun", "+experiment=paper/main_none", *SMALL,
           "model=vit_mini_patch4_32", "model.pretrained=false", "dataset=digits", "dataset.augment=none",
           "device=cpu", "seed=0", "train.max_steps=2", "train.precision=fp32", f"hydra.sweep.dir={sweep}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    summaries = list(sweep.rglob("summary.json"))
    assert len(summaries) == 1 and json.loads(summaries[0].read_text())["steps"] == 2


def test_the_protocol_runner_never_runs_a_job_twice(tmp_path):
    """experiments/cpu_protocol.py locks a job's run directory while a live process runs it."""
    import importlib.util
    import os
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "cpu_protocol.py"
    spec = importlib.util.spec_from_file_location("cpu_protocol", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    lock = tmp_path / runner.LOCK
    assert runner.claim(lock) and lock.read_text().strip() == str(os.getpid())
    assert not runner.claim(lock)  # held by a live process: this one
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(child.stdout)  # a process that has exited: its lock is taken over
    assert runner.claim(lock) and lock.read_text().strip() == str(os.getpid())
    lock.write_text("not a pid")
    assert runner.claim(lock)
