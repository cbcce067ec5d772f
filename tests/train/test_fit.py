"""Whole runs on the embedded digits: learning, run files, determinism, resume, the byte budget."""

import json

import pytest

from conftest import SMALL, make_cfg
from splitvit.train import ConfigError, fit

METRIC_KEYS = {"step", "epoch", "bytes_up", "bytes_down", "train_loss", "val_loss", "val_acc", "wall_s"}
SUMMARY_KEYS = {"method", "compression_target", "compression_measured", "bytes_up", "bytes_down", "steps",
                "best_val_acc", "final_val_acc", "wall_s"}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


CLOCK = {"wall_s", "time_s"}  # measured time: the one thing a rerun may change


def without_wall(rows, drop=CLOCK):
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_adc_on_digits_learns_well_above_chance(tmp_path):
    cfg = make_cfg(*SMALL, "train.epochs=8", "train.lr=1e-3", "train.batch_size=32")
    s = fit(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert s["final_val_acc"] > 0.35 and s["best_val_acc"] > rows[0]["val_acc"] + 0.2  # chance is 0.1
    assert SUMMARY_KEYS <= set(s) and json.loads((tmp_path / "summary.json").read_text()) == s
    assert len(rows) == 8 and all(METRIC_KEYS <= set(r) for r in rows)
    assert all(0 <= r["val_acc"] <= 1 for r in rows)
    assert [r["bytes_up"] for r in rows] == sorted(r["bytes_up"] for r in rows)
    assert s["compression_measured"] == pytest.approx(0.1, rel=0.1)


def test_same_seed_same_metrics(tmp_path):
    args = (*SMALL, "train.max_steps=6")
    a = fit(make_cfg(*args), tmp_path / "a")
    fit(make_cfg(*args), tmp_path / "b")
    assert without_wall(read_metrics(tmp_path / "a")) == without_wall(read_metrics(tmp_path / "b"))
    c = fit(make_cfg(*args, "seed=1"), tmp_path / "c")
    assert c["final_val_acc"] != a["final_val_acc"] or c["bytes_up"] != a["bytes_up"]


@pytest.mark.parametrize("method", ["adc", "none"])
def test_resume_continues_exactly(tmp_path, method):
    base = (*SMALL, f"method={method}", "train.batch_size=128", "train.epochs=2")
    fit(make_cfg(*base), tmp_path / "straight")
    # stop mid-epoch, then again at the epoch's end, then finish: three processes' worth of runs
    fit(make_cfg(*base, "train.max_steps=5"), tmp_path / "resumed")
    fit(make_cfg(*base, "train.max_steps=12", "train.resume=true"), tmp_path / "resumed")
    s = fit(make_cfg(*base, "train.resume=true"), tmp_path / "resumed")
    straight = without_wall(read_metrics(tmp_path / "straight"))
    resumed = without_wall(read_metrics(tmp_path / "resumed"))
    assert [r["step"] for r in resumed] == [5, 12, 24]
    extra_evals = {"eval_bytes_up", "eval_bytes_down"}  # the resumed run also evaluated at step 5
    # and its gradients at steps 5 and 12 said "stop" (max_steps; see splitvit.wire.protocol): 8 or 16 bytes each,
    # in its bytes and its baseline alike; a run resumed after a crash or Ctrl-C has no such flag
    flags = {"bytes_down", "baseline_bytes"}
    assert {k: v for k, v in resumed[-1].items() if k not in extra_evals | flags} == {
        k: v for k, v in straight[-1].items() if k not in extra_evals | flags
    }
    for key in flags:
        assert 16 <= resumed[-1][key] - straight[-1][key] <= 32
    assert resumed[1]["val_acc"] == straight[0]["val_acc"]
    assert s["steps"] == 24


def test_resume_refuses_a_different_experiment(tmp_path):
    fit(make_cfg(*SMALL, "train.max_steps=2"), tmp_path)
    with pytest.raises(ConfigError, match="method"):
        fit(make_cfg(*SMALL, "method=none", "train.resume=true"), tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        fit(make_cfg(*SMALL, "train.resume=true"), tmp_path / "elsewhere")


def test_grad_center_in_a_run(tmp_path):
    """``split.grad_center``: a no-op where the gradient is exact (none: the true gradient has no
    per-token feature-mean), a different run where 2-bit codes put one there (quant)."""
    import torch

    def client_weights(run_dir):
        return torch.load(run_dir / "checkpoints" / "clients.pt", weights_only=False)["members"][0]["model"]

    runs = {}
    for method in ("none", "quant"):
        for center in ("false", "true"):
            run_dir = tmp_path / f"{method}-{center}"
            fit(make_cfg(*SMALL, f"method={method}", "method.bits=2" if method == "quant" else "wire.dtype=float32",
                         f"split.grad_center={center}", "train.max_steps=4"), run_dir)
            runs[method, center] = client_weights(run_dir)
    def largest_difference(method):
        return max((runs[method, "true"][n] - w).abs().max().item() for n, w in runs[method, "false"].items())

    # Adam at lr 1e-4 moves a weight by up to 1e-4 a step: float rounding stays far below one step,
    # the 2-bit codes' feature-mean moves weights by steps
    assert largest_difference("none") < 1e-5 < 1e-4 < largest_difference("quant")


def test_a_checkpoint_older_than_a_key_resumes_with_its_default():
    """A run saved before ``split.grad_center`` and ``method.grid`` existed ran with their defaults: it
    resumes under today's defaults, and not under another value of either, nor another split."""
    from omegaconf import OmegaConf

    from splitvit.train.config import resume_mismatch

    now = make_cfg(*SMALL, "method=quant")
    old = OmegaConf.to_container(now, resolve=True)
    del old["split"]["grad_center"], old["method"]["grid"], old["channel"]
    assert resume_mismatch(old, now) == []
    assert resume_mismatch(old, make_cfg(*SMALL, "method=quant", "split.grad_center=true")) == [
        "split.grad_center: checkpoint False, now True"]
    assert resume_mismatch(old, make_cfg(*SMALL, "method=quant", "method.grid=zero")) == [
        "method.grid: checkpoint 'minmax', now 'zero'"]
    assert resume_mismatch(old, make_cfg(*SMALL, "method=quant", "split.index=1")) == ["split.index: checkpoint 2, now 1"]
    old["split"]["index"] = None  # no split: None is a value, not a missing key
    assert resume_mismatch(old, now) == ["split.index: checkpoint None, now 2"]


def test_budget_stops_at_the_bytes_of_uncompressed_epochs(tmp_path):
    none = fit(make_cfg(*SMALL, "method=none", "train.batch_size=128", "train.budget_epochs=1", "train.epochs=5"), tmp_path / "none")
    assert none["steps"] == 12 and none["stopped_by"] == "budget"  # 1438 images, batch 128
    assert none["compression_measured"] == 1.0
    budget = none["bytes_up"] + none["bytes_down"]
    adc = fit(make_cfg(*SMALL, "train.batch_size=128", "train.budget_epochs=0.25", "train.epochs=50"), tmp_path / "adc")
    sent = adc["bytes_up"] + adc["bytes_down"]
    assert adc["stopped_by"] == "budget" and budget / 4 <= sent < budget / 4 + sent / adc["steps"] + 1
    assert adc["steps"] > 5 * 3  # ~0.1 of the bytes per step: about ten times the steps


def test_token_mode_evaluation(tmp_path):
    s = fit(make_cfg(*SMALL, "train.max_steps=2", "eval.mode=tokens"), tmp_path)
    assert s["eval_mode"] == "tokens"
    # 359 test images, 21 of 65 tokens each, instead of all 65
    full = fit(make_cfg(*SMALL, "train.max_steps=2"), tmp_path / "full")
    assert s["eval_bytes_up"] < 0.4 * full["eval_bytes_up"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("eval.mode=fast", "uncompressed, tokens"),
        ("method.compression=1.5", r"\(0, 1\]"),
        ("method.feature=median", "attention, cls, mean"),
        ("split.index=9", r"\[1, 3\]"),
        ("train.batch_size=0", "train.batch_size"),
        ("wire.dtype=int4", "float32, bfloat16, float16"),
    ],
)
def test_impossible_configs_are_refused_before_training(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        fit(make_cfg(*SMALL, override), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tokens_mode_needs_a_token_ratio(tmp_path):
    with pytest.raises(ConfigError, match="eval.mode=uncompressed"):
        fit(make_cfg(*SMALL, "method=none", "eval.mode=tokens"), tmp_path)


@pytest.mark.parametrize("method", ["c3sl", "bottlenet", "topk", "randtopk", "quant", "fedlite", "lowrank", "slacc"])
def test_every_method_trains_through_the_loop(tmp_path, method):
    s = fit(make_cfg(*SMALL, f"method={method}", "train.max_steps=4", "eval.mode=compressed"), tmp_path)
    assert s["steps"] == 4 and 0 < s["compression_measured"] < 1
    if method == "lowrank":  # nominal is the rank cap; the energy threshold often picks less
        assert s["compression_measured"] <= 1.1 * s["compression_nominal"]
    else:  # labels, positions, scales and codebooks come on top of nominal
        assert s["compression_measured"] >= 0.9 * s["compression_nominal"]
    assert 0 <= s["final_val_acc"] <= 1
    # resumable like any other: its learned parts and generators are in the checkpoint
    s2 = fit(make_cfg(*SMALL, f"method={method}", "train.max_steps=5", "eval.mode=compressed", "train.resume=true"), tmp_path)
    assert s2["steps"] == 5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_wire_dtype_halves_the_bytes(tmp_path, dtype):
    half = fit(make_cfg(*SMALL, "method=none", "train.max_steps=2", f"wire.dtype={dtype}"), tmp_path / "half")
    full = fit(make_cfg(*SMALL, "method=none", "train.max_steps=2"), tmp_path / "full")
    assert half["compression_measured"] == pytest.approx(0.5, abs=0.01)
    assert half["bytes_up"] < 0.51 * full["bytes_up"]


@pytest.mark.parametrize("override, match", [
    ("method=c3sl method.R=128", "larger than train.batch_size"),
    ("method=quant method.bits=0", r"\[1, 8\]"),
    ("method=lowrank method.rank=0", "rank"),
    ("method=topk method.compression=0", r"\(0, 1\]"),
])
def test_baseline_configs_that_cannot_work_are_refused(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        fit(make_cfg(*SMALL, *override.split()), tmp_path)


def test_link_model_adds_transfer_time_from_the_measured_bytes(tmp_path):
    s = fit(make_cfg(*SMALL, "train.max_steps=3", "link.bandwidth_mbps=20", "link.latency_ms=10"), tmp_path)
    row = read_metrics(tmp_path)[-1]
    # three training steps; evaluation is a measurement and not on the modelled link
    assert row["link_s"] == pytest.approx(3 * 0.02 + 8 * (row["bytes_up"] + row["bytes_down"]) / 20e6, abs=1e-3)  # rounded to ms
    assert row["time_s"] == pytest.approx(row["wall_s"] + row["link_s"], abs=2e-3)
    assert s["time_to_best_s"] == row["time_s"] and s["link_s"] == row["link_s"]
    with pytest.raises(ConfigError, match="bandwidth_mbps"):
        fit(make_cfg(*SMALL, "link.latency_ms=10"), tmp_path / "b")
    with pytest.raises(ConfigError, match="> 0"):
        fit(make_cfg(*SMALL, "link.bandwidth_mbps=0"), tmp_path / "c")


def test_bf16_autocast_trains_with_float32_kmeans(tmp_path):
    s = fit(make_cfg(*SMALL, "train.precision=bf16", "train.max_steps=3"), tmp_path)
    row = read_metrics(tmp_path)[-1]
    assert s["steps"] == 3 and row["train_loss"] == row["train_loss"] and 0 <= row["val_acc"] <= 1
    with pytest.raises(ConfigError, match="train.precision"):
        fit(make_cfg(*SMALL, "train.precision=fp8"), tmp_path / "b")


def test_training_starts_from_a_local_timm_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from splitvit.models import create_model

    weights = create_model("deit_tiny_patch16_224", depth=2, num_classes=1000).state_dict()  # timm's names and shapes
    save_file(weights, tmp_path / "deit.safetensors")
    args = (*SMALL[3:], "model=deit_tiny_patch16_224", "model.depth=2", "model.img_size=64", "train.max_steps=1",
            "split.index=1")
    s = fit(make_cfg(*args, f"model.checkpoint={tmp_path / 'deit.safetensors'}"), tmp_path / "run")
    assert s["steps"] == 1  # ImageNet's 1000-class head replaced by digits' 10, positions resampled to 4x4
    with pytest.raises(ConfigError, match="cannot load the model's weights.*missing.pth"):
        fit(make_cfg(*args, f"model.checkpoint={tmp_path / 'missing.pth'}"), tmp_path / "run2")
