"""Compression schedules: the formula, the methods re-derived at each target, the run files, resume, gRPC."""

import json
import math
import os
import signal

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.compression import build_method
from splitvit.compression.schedule import CompressionSchedule
from splitvit.train import ConfigError, fit
from splitvit.train.client import SplitClient
from splitvit.train.common import Interrupted
from splitvit.train.config import validate
from splitvit.wire import Header, WireError, pack, unpack
from test_codecs import step
from test_methods import OPTIONS, C, D, N

SCHEDULED = ["adc", "topk", "randtopk", "c3sl", "quant", "slacc"]  # the methods whose compression sets their sizes


@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.8, 1.0])
def test_each_schedule_follows_its_formula(p):
    a, b = 0.02, 1.0
    assert CompressionSchedule("constant", a, a).at(p) == a
    assert CompressionSchedule("linear", a, b).at(p) == pytest.approx(a + (b - a) * p, rel=1e-3)
    assert CompressionSchedule("cosine", a, b).at(p) == pytest.approx(b + (a - b) * (1 + math.cos(math.pi * p)) / 2, rel=1e-3)
    stage = min(int(p * 4), 3)
    assert CompressionSchedule("steps", a, b, 4).at(p) == pytest.approx(a + (b - a) * stage / 3, rel=1e-3)
    # clipped outside the run, and read back from a header exactly
    assert CompressionSchedule("linear", a, b).at(1.5) == b and CompressionSchedule("linear", a, b).at(-1) == a
    t = CompressionSchedule("cosine", 0.05, 0.5).at(p)
    assert unpack(pack(Header("train", step=0, target=t), {}), lambda h: __import__("splitvit").wire.Schema({}))[1].target == t


def test_a_schedule_refuses_impossible_targets():
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="compression target in \\(0, 1\\]"):
            CompressionSchedule("linear", bad, 0.5)
    with pytest.raises(ValueError, match="stages"):
        CompressionSchedule("steps", 0.1, 0.5, 1)
    with pytest.raises(WireError, match="compression target"):
        Header("train", step=0, target=2.0)
    with pytest.raises(WireError, match="compression target"):
        Header("weights", step=0, target=0.5)


@pytest.mark.parametrize("name", SCHEDULED)
def test_a_method_at_another_target_has_that_target_s_sizes_and_round_trips(name):
    options = {k: v for k, v in OPTIONS[name].items() if k not in ("bits", "R", "batch_ratio", "token_ratio")}
    base = build_method(name, C, N, D, **{**options, "compression": 0.5})
    for target in (0.05, 0.25):
        derived = base.at(target)
        fresh = build_method(name, C, N, D, **{**options, "compression": target})
        assert type(derived) is type(base) and derived.target_ratio() == pytest.approx(fresh.target_ratio())
        assert derived.nominal_ratio(12, N, D) == fresh.nominal_ratio(12, N, D)
        assert base.at(target) is derived  # derived once per target
        _, _, up, _ = step(derived)
        _, _, up_fresh, _ = step(fresh)
        assert len(up) == len(up_fresh)  # the same message as a method built at that target
    # one side, switched from target to target, sends what a side built there sends
    client = base.client()
    client.use(base.at(0.05))
    assert client.method is base.at(0.05)


def test_the_config_refuses_a_schedule_that_cannot_move_the_method():
    run = [*SMALL, "compression_schedule=linear", "compression_schedule.start=0.05", "compression_schedule.end=0.5"]
    for args, words in (
        (["method=fedlite"], "method=fedlite has no compression key"),
        (["method=bottlenet"], "cannot move method=bottlenet: its learned encoder"),
        (["method=lowrank"], "cannot move method=lowrank"),
        (["method=quant", "method.bits=4"], "method.bits=4 fixes the method's size: set method.bits=null"),
        (["method=adc", "method.batch_ratio=0.5"], "set method.batch_ratio=null"),
        (["split.index=null", "method=none"], "a model trained in one piece sends nothing"),
        (["compression_schedule.end=1.5"], "compression_schedule.end=1.5 must be a compression target in (0, 1]"),
    ):
        with pytest.raises(ConfigError, match=words.replace("(", "\\(").replace(")", "\\)").replace(".", "\\.")):
            validate(make_cfg(*run, *args))
    validate(make_cfg(*run, "method=c3sl"))  # R follows the target
    with pytest.raises(ConfigError, match="larger than train.batch_size"):  # C3-SL at 0.05 binds 20 samples
        validate(make_cfg(*run, "method=c3sl", "train.batch_size=16"))


RUN = [*SMALL, "train.batch_size=32", "train.max_steps=24", "train.eval_every=6", "eval.max_batches=1",
       "eval.batch_size=64", "method=adc", "compression_schedule=linear", "compression_schedule.start=0.05",
       "compression_schedule.end=0.5", "eval.also=[compressed]"]


def rows(run_dir):
    clock = {"wall_s", "time_s", "framing_bytes_up", "framing_bytes_down"}
    return [{k: v for k, v in json.loads(line).items() if k not in clock}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_scheduled_run_records_its_targets_and_sends_more_as_the_target_grows(tmp_path):
    s = fit(make_cfg(*RUN), tmp_path / "run")
    r = rows(tmp_path / "run")
    schedule = CompressionSchedule("linear", 0.05, 0.5)
    # each row: the target of the step after the last one (the server's count when it replied to it)
    assert [x["compression_target"] for x in r] == [schedule.at((x["step"] - 1) / 24) for x in r]
    sent = [b["bytes_up"] - a["bytes_up"] for a, b in zip([{"bytes_up": 0}] + r, r)]
    assert sent == sorted(sent) and sent[-1] > 3 * sent[0]  # ADC's T and k grow with the target
    assert s["compression_schedule"] == {"name": "linear", "start": 0.05, "end": 0.5}
    assert s["compression_target"] == pytest.approx(r[-1]["compression_target"], rel=0.01)
    assert s["final_val_acc_compressed"] is not None  # evaluated through the method at the last target
    constant = fit(make_cfg(*RUN, "compression_schedule=constant", "train.max_steps=6"), tmp_path / "constant")
    assert constant["compression_schedule"] is None
    assert [x["compression_target"] for x in rows(tmp_path / "constant")] == [pytest.approx(0.1)]


def test_a_run_resumed_mid_schedule_continues_it_exactly(tmp_path, monkeypatch):
    args = [*RUN, "method=quant", "method.bits=null"]
    whole = tmp_path / "whole"
    fit(make_cfg(*args), whole)
    # Ctrl-C during step 10: the run stops after it, saved, under the same caps (which the schedule follows)
    step_of = SplitClient._step

    def interrupted(self, images, labels, step):
        if step.index == 9 and self.target is not None:
            os.kill(os.getpid(), signal.SIGINT)
        return step_of(self, images, labels, step)

    part = tmp_path / "part"
    with monkeypatch.context() as m:
        m.setattr(SplitClient, "_step", interrupted)
        with pytest.raises(Interrupted):
            fit(make_cfg(*args), part)
    fit(make_cfg(*args, "train.resume=true"), part)
    assert rows(part) == rows(whole)
    assert len({x["compression_target"] for x in rows(whole)}) == 4


def test_a_scheduled_composed_run_over_grpc_equals_the_run_in_process(tmp_path):
    args = [*RUN, "method=topk", "codec=int4", "train.max_steps=12", "compression_schedule=steps"]
    fit(make_cfg(*args, "link=inprocess"), tmp_path / "local")
    fit(make_cfg(*args, "link=grpc"), tmp_path / "grpc")
    assert rows(tmp_path / "local") == rows(tmp_path / "grpc")
    assert len({x["compression_target"] for x in rows(tmp_path / "grpc")}) > 1


def test_a_server_refuses_a_target_the_schedule_never_reaches(tmp_path):
    from splitvit.train.hub import Hub

    hub = Hub(make_cfg(*RUN), 10, torch.device("cpu"))
    session = hub.session(0, 100)
    for target in (None, 0.9):
        with pytest.raises(WireError, match="must say its compression target, in \\[0.05, 0.5\\]"):
            session.handle(pack(Header("train", step=0, target=target), {}))
    plain = Hub(make_cfg(*RUN, "compression_schedule=constant"), 10, torch.device("cpu")).session(0, 100)
    with pytest.raises(WireError, match="has no compression schedule"):
        plain.handle(pack(Header("train", step=0, target=0.1), {}))


def test_a_schedule_composes_with_several_clients_a_channel_and_a_codec(tmp_path):
    args = [*RUN, "method=topk", "codec=int8", "channel=awgn", "channel.snr_db=20", "clients.num=2",
            "clients.scheme=splitfed_v2", "clients.local_steps=3", "train.max_steps=12"]
    s = fit(make_cfg(*args), tmp_path / "a")
    r = rows(tmp_path / "a")
    targets = [x["compression_target"] for x in r]
    assert targets == sorted(targets) and targets[0] < targets[-1] <= 0.5  # the federation's count moves it
    assert s["compression_schedule"]["name"] == "linear" and s["channel"] == "awgn" and s["clients"] == 2
    fit(make_cfg(*args), tmp_path / "b")
    assert rows(tmp_path / "b") == r  # and the same seed gives the same run
