"""The ``splitvit`` command as a user runs it: a subprocess, Hydra overrides, exit codes, run files."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import SMALL


def splitvit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "splitvit.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_train_runs_and_writes_the_run_files(tmp_path):
    r = splitvit("train", *SMALL, "train.max_steps=3", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "compression: measured" in r.stdout and str(tmp_path / "run") in r.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "adc" and summary["steps"] == 3 and summary["compression_target"] == pytest.approx(0.1)
    # where it ran: float sums, and so the numbers a seed gives, depend on the CPU's kernels
    assert summary["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["machine"]["torch"] == torch.__version__ and summary["machine"]["cores"] >= 1
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("method=c3", ["adc", "none"]),
        ("dataset=mnist", ["cifar100", "digits"]),
        ("model=vit_huge", ["deit_tiny_patch16_224", "vit_mini_patch4_32"]),
        ("eval.mode=fast", ["uncompressed, tokens"]),
        ("method.compression=0", ["(0, 1]"]),
    ],
)
def test_a_wrong_value_names_the_allowed_ones(tmp_path, override, allowed):
    r = splitvit("train", *SMALL, override, f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode != 0
    assert all(a in r.stderr for a in allowed), r.stderr
    assert "Traceback" not in r.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    r = splitvit("train", "dataset=cifar100", f"dataset.root={tmp_path}", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2 and "dataset.download=true" in r.stderr


def test_usage(tmp_path):
    assert "splitvit train" in splitvit(cwd=tmp_path).stdout
    r = splitvit("fly", cwd=tmp_path)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_the_end_of_run_summary_has_a_line_for_each_instrument(tmp_path):
    from conftest import make_cfg
    from splitvit.cli import format_summary
    from splitvit.train import fit

    s = fit(make_cfg(*SMALL, "train.max_steps=4", "eval.max_batches=1", "channel=awgn", "channel.snr_db=10",
                     "train.profile=true", "train.inspect=true", "finetune=alast"), tmp_path)
    text = format_summary(s, tmp_path)
    assert "channel awgn (measured): SNR up 10." in text and "SNR down" in text
    assert "profile, client:" in text and "profile, server:" in text and "ms a step" in text
    assert "ALaST, client: budgets" in text and "ALaST, server: budgets" in text
    assert "inspection, client: " in text and "clusters mixed" in text
    plain = fit(make_cfg(*SMALL, "train.max_steps=2", "eval.max_batches=1"), tmp_path / "plain")
    assert not any(w in format_summary(plain, tmp_path / "plain") for w in ("channel", "profile", "ALaST", "inspection"))
