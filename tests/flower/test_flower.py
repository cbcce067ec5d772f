"""splitvit on Flower (the ``flower`` extra): the run config's mapping, and the same experiment on Flower's
simulation engine and on splitvit's own, step for step and byte for byte."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the flower extra: pip install -e '.[flower]'")

from splitvit.flower import content_bytes, overrides  # noqa: E402

RUN = ["model.embed_dim=64", "model.depth=3", "model.num_heads=2", "train.progress=false", "eval.max_batches=1",
       "eval.batch_size=64", "train.batch_size=16", "clients.num=3", "clients.local_steps=2", "clients.rounds=2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same float sums in every process


def train(run_dir: Path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "splitvit", "train", *RUN, *args, f"run_dir={run_dir}"],
                          env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_the_run_config_is_overrides_one_way():
    config = {"method": "adc", "method.compression": 0.1, "clients.num": 3, "train.progress": False,
              "eval.also": "[compressed]"}
    assert overrides(config) == ["clients.num=3", "eval.also=[compressed]", "method=adc", "method.compression=0.1",
                                 "train.progress=false"]


def test_control_bytes_are_the_serialised_records():
    from flwr.app import ConfigRecord, RecordDict

    small = content_bytes(RecordDict({"splitvit": ConfigRecord({"action": "join"})}))
    large = content_bytes(RecordDict({"splitvit": ConfigRecord({"action": "join" + "x" * 1000})}))
    assert 0 < small < 100 and large - small >= 1000


@pytest.mark.parametrize("scheme", ["sequential", "splitfed_v1", "splitfed_v2"])
def test_flower_gives_the_simulations_steps_bytes_and_accuracy(tmp_path, scheme):
    flower = train(tmp_path / "flower", f"clients.scheme={scheme}", "clients.engine=flower")
    sim = train(tmp_path / "sim", f"clients.scheme={scheme}")
    assert flower["engine"] == "flower" and flower["steps"] == sim["steps"] == 12
    for key in ("bytes_up", "bytes_down", "final_val_acc", "final_val_loss", "rounds", "stopped_by",
                "baseline_bytes_up", "baseline_bytes_down", "compression_measured", "epochs"):
        assert flower[key] == sim[key], key
    assert flower["per_client"] == sim["per_client"]  # every byte of every client, weights included
    assert flower["flower_messages"] == 3 + 3 * 2 + 3  # join, two rounds of three, finish
    assert flower["flower_control_bytes_down"] > 0 and flower["flower_control_bytes_up"] > 0
    rows = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    sim_rows = [json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["round"], r["val_acc"], r["bytes_up"], r["bytes_down"]) for r in rows] == \
           [(r["step"], r["round"], r["val_acc"], r["bytes_up"], r["bytes_down"]) for r in sim_rows]


def test_the_engines_benchmark_runs_in_smoke_mode():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "flower" / "engines.py"
    proc = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **ONE_THREAD})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "engine=flower" in proc.stdout and "on both engines: True" in proc.stdout


def test_a_flower_strategy_averages_the_halves_and_fedavg_is_splitvits_to_the_bit():
    import torch

    from splitvit.train.fedavg import fedavg
    from splitvit.train.strategy import averaging

    g = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(64, 32, generator=g), "b": torch.randn(7, generator=g), "n": torch.tensor(3)}
              for _ in range(3)]
    weights = [480.0, 479.0, 478.0]
    ours, theirs = fedavg(states, weights), averaging("FedAvg")(states, weights)
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    median = averaging("FedMedian")(states, weights)
    assert torch.equal(median["w"], torch.stack([s["w"] for s in states]).median(0).values)
    assert torch.equal(median["n"], torch.tensor(3))
    with pytest.raises(ValueError, match="FedAvg, FedAvgM"):
        averaging("FedAverage")


def test_clients_strategy_fedavg_gives_the_same_run_and_fedmedian_another(tmp_path):
    ours = train(tmp_path / "ours", "clients.scheme=splitfed_v1")
    flower = train(tmp_path / "flower", "clients.scheme=splitfed_v1", "clients.strategy=FedAvg")
    median = train(tmp_path / "median", "clients.scheme=splitfed_v1", "clients.strategy=FedMedian")
    for key in ("bytes_up", "bytes_down", "final_val_acc", "final_val_loss", "per_client"):
        assert flower[key] == ours[key], key
    assert median["final_val_loss"] != ours["final_val_loss"]  # the strategy is the one that averaged


def test_a_ray_that_did_not_start_is_started_again_and_other_errors_are_not(tmp_path, monkeypatch):
    """Ray's node waits a fixed 30 s for its raylet, which a busy machine can miss: Flower then ends the
    simulation before any node got a message. That error, and only that one, starts it again."""
    import flwr.simulation
    import ray

    from conftest import SMALL, make_cfg
    from splitvit.flower import simulate

    def ray_timeout():
        try:
            try:
                raise Exception("The current node timed out during startup. This could happen because ...")
            except Exception as e:
                raise RuntimeError("Simulation Runtime crashed.") from e
        except RuntimeError as e:
            raise RuntimeError("An error was encountered. Ending simulation.") from e

    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["num_supernodes"])
        if len(calls) == 1:
            ray_timeout()
        (tmp_path / "summary.json").write_text('{"engine": "flower"}')

    monkeypatch.setattr(flwr.simulation, "run_simulation", flaky)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    cfg = make_cfg(*SMALL, "clients.num=2", "clients.engine=flower")
    assert simulate(cfg, tmp_path) == {"engine": "flower"} and calls == [2, 2]

    def init_ray():  # as Flower's RayBackend.init_ray fails when ray.init does: a GCS port not written in time
        raise RuntimeError("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_y")

    def gcs_timeout(*args, **kwargs):
        calls.append("gcs")
        if calls.count("gcs") < 3:
            try:
                init_ray()
            except RuntimeError as e:
                raise RuntimeError("An error was encountered. Ending simulation.") from e
        (tmp_path / "summary.json").write_text('{"engine": "flower"}')

    monkeypatch.setattr(flwr.simulation, "run_simulation", gcs_timeout)
    assert simulate(cfg, tmp_path) == {"engine": "flower"} and calls[2:] == ["gcs"] * 3
    del calls[2:]

    def broken(*args, **kwargs):
        calls.append("broken")
        raise RuntimeError("An error was encountered. Ending simulation.") from ValueError("a client failed")

    monkeypatch.setattr(flwr.simulation, "run_simulation", broken)
    with pytest.raises(RuntimeError, match="Ending simulation"):
        simulate(cfg, tmp_path / "other")
    assert calls[2:] == ["broken"]
