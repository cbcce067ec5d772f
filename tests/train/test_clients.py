"""Several clients on one server, simulated: the schemes' orders, weights messages and their bytes,
per-client figures, determinism and resume."""

import json

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.train import ConfigError, fit
from splitvit.train.federation import SAMPLES, Federation
from splitvit.train.schemes import SCHEMES, build_scheme, participants
from splitvit.wire import Header, pack

FAST = [*SMALL, "eval.max_batches=1", "eval.batch_size=64", "train.batch_size=16", "clients.num=3",
        "clients.local_steps=2", "clients.rounds=2"]
CLOCK = {"wall_s", "time_s", "time_to_best_s"}


def test_participants_are_a_seeded_share_of_the_clients():
    assert participants(0, 0, 5, 1.0) == [0, 1, 2, 3, 4]
    draws = {tuple(participants(0, r, 10, 0.3)) for r in range(20)}
    assert all(len(d) == 3 and list(d) == sorted(d) for d in draws) and len(draws) > 5  # rounds differ
    assert participants(0, 4, 10, 0.3) == participants(0, 4, 10, 0.3)  # and are the seed's
    assert participants(0, 0, 10, 0.01) != []  # at least one client


def order(scheme: str, round_: int, sizes=(48, 48, 48)) -> list[int]:
    plan = build_scheme(scheme).plan(0, round_, list(sizes), 1.0, 16, None)
    return [c for stage in plan.stages for c, what in stage if what == "train"]


def test_sequential_gives_each_client_one_turn_and_splitfed_interleaves():
    seq = order("sequential", 0)
    turns = [c for i, c in enumerate(seq) if i == 0 or seq[i - 1] != c]
    assert sorted(turns) == [0, 1, 2] and sorted(seq) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    mixed = order("splitfed_v2", 0)
    assert sorted(mixed) == sorted(seq) and mixed == order("splitfed_v2", 0)
    assert any(order("splitfed_v2", r) != mixed for r in range(1, 5))
    assert any(len(set(order("splitfed_v2", r)[:3])) > 1 for r in range(5))  # not in turns


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_plans_a_round_that_closes_and_is_evaluated(scheme):
    s = build_scheme(scheme)
    plan = s.plan(3, 1, [40, 20, 33], 1.0, 16, None)
    events = [e for stage in plan.stages for e in stage]
    assert events[-1] == (plan.evaluator, "done") and 0 <= plan.closing < len(plan.stages) - 1
    assert all(events.count((c, "train")) == plan.steps[c] == -(-n // 16) for c, n in enumerate([40, 20, 33]))
    assert {c for c, what in events if what == "upload"} == {0, 1, 2}  # every half goes back to the server
    assert s.server_copies(3) in (1, 3)
    # a federation of one hands nothing on, and runs up to its next evaluation
    alone = s.plan(3, 0, [100], 1.0, 16, None, steps_done=5, eval_every=4)
    assert [what for stage in alone.stages for _, what in stage] == ["train", "train", "train", "done"]
    assert s.cuts_at_caps(1)
    cut = s.cut(alone, 1)
    assert cut.steps == {0: 2} and cut.stages[-1] == [(0, "done")] and cut.closing == 1


def test_a_cap_cuts_a_sequential_round_in_the_turn_in_progress():
    s = build_scheme("sequential")
    plan = s.plan(0, 0, [32, 32, 32], 1.0, 16, None)
    first = next(i for i, st in enumerate(plan.stages) if st[0][1] == "train")
    c = plan.stages[first][0][0]
    cut = s.cut(plan, first)
    assert [e for st in cut.stages for e in st] == [(c, "fetch"), (c, "train"), (c, "upload"), (c, "done")]
    assert cut.evaluator == c and cut.closing == 2 and cut.steps == {c: 1}
    assert not build_scheme("splitfed_v2").cuts_at_caps(3)  # a parallel round ends whole: its average needs them all


def test_federation_averages_by_samples_and_sequential_hands_on():
    template = {"w": torch.zeros(2)}
    fed = Federation(build_scheme("splitfed_v2"), template)
    fed.upload(0, {"w": torch.tensor([1.0, 1.0]), SAMPLES: torch.tensor(30)})
    fed.upload(1, {"w": torch.tensor([5.0, 1.0]), SAMPLES: torch.tensor(10)})
    assert fed.version == 0  # nothing is applied until the round's average
    assert fed.average() == [30.0, 10.0]
    assert torch.allclose(fed.current["w"], torch.tensor([2.0, 1.0])) and fed.version == 1
    seq = Federation(build_scheme("sequential"), template)
    seq.upload(2, {"w": torch.tensor([7.0, 7.0]), SAMPLES: torch.tensor(4)})
    assert seq.version == 1 and torch.equal(seq.current["w"], torch.tensor([7.0, 7.0]))


@pytest.mark.parametrize("scheme", ["sequential", "splitfed_v1", "splitfed_v2"])
def test_schemes_run_count_weights_bytes_and_repeat_exactly(tmp_path, scheme):
    cfg = make_cfg(*FAST, f"clients.scheme={scheme}")
    s = fit(cfg, tmp_path / "a")
    again = fit(cfg, tmp_path / "b")
    assert {k: v for k, v in s.items() if k not in CLOCK} == {k: v for k, v in again.items() if k not in CLOCK}
    assert s["steps"] == 3 * 2 * 2 and s["rounds"] == 2 and s["stopped_by"] == "rounds"
    per = s["per_client"]
    assert [c["steps"] for c in per] == [4, 4, 4]
    assert sum(c["bytes_up"] for c in per) == s["bytes_up"] and sum(c["bytes_down"] for c in per) == s["bytes_down"]
    # a weights message is a whole client half: its size is the serialised half's
    from splitvit.train.build import build_halves
    client_model, _, _, _ = build_halves(cfg, 10, torch.device("cpu"))
    half = {f"model.{k}": v for k, v in client_model.state_dict().items()}
    one_half = len(pack(Header("weights", client=0, step=0), {**half, SAMPLES: torch.tensor(32)}))
    uploads = {"sequential": 2, "splitfed_v1": 2, "splitfed_v2": 2}[scheme]  # each client, once a round
    assert all(c["weights_bytes_up"] >= uploads * one_half for c in per)
    assert all(c["weights_bytes_up"] < uploads * one_half + 4 * 200 for c in per)  # plus small control messages
    assert s["total_bytes"] == s["bytes_up"] + s["bytes_down"] + s["weights_bytes_up"] + s["weights_bytes_down"]
    parts = json.loads((tmp_path / "a" / "clients.json").read_text())["clients"]
    assert sum(c["samples"] for c in parts) == 1438 and all(sum(c["histogram"]) == c["samples"] for c in parts)


def test_schemes_differ_and_one_client_is_plain_split_learning(tmp_path):
    a = fit(make_cfg(*FAST, "clients.scheme=splitfed_v2"), tmp_path / "v2")
    b = fit(make_cfg(*FAST, "clients.scheme=sequential"), tmp_path / "seq")
    assert a["final_val_loss"] != b["final_val_loss"]
    one = [fit(make_cfg(*SMALL, "train.max_steps=3", "train.batch_size=16", "eval.max_batches=1", f"clients.scheme={s}"),
               tmp_path / s) for s in SCHEMES]
    # a federation of one: nothing handed on, and the same run under every scheme
    assert all(o["clients"] == 1 and o["weights_bytes_up"] < 200 and o["steps"] == 3 for o in one)  # control only
    assert len({(o["final_val_loss"], o["bytes_up"], o["bytes_down"]) for o in one}) == 1


def test_dirichlet_split_is_recorded_and_skewed(tmp_path):
    fit(make_cfg(*FAST, "clients.partition=dirichlet", "clients.alpha=0.1", "clients.rounds=1"), tmp_path)
    parts = json.loads((tmp_path / "clients.json").read_text())["clients"]
    top_share = [max(c["histogram"]) / c["samples"] for c in parts]
    assert max(top_share) > 0.3  # IID would give each class about 0.1 of a client


def test_resume_after_a_round_gives_the_uninterrupted_result(tmp_path):
    full = fit(make_cfg(*FAST, "clients.scheme=splitfed_v2"), tmp_path / "full")
    fit(make_cfg(*FAST, "clients.scheme=splitfed_v2", "clients.rounds=1"), tmp_path / "cut")
    resumed = fit(make_cfg(*FAST, "clients.scheme=splitfed_v2", "train.resume=true"), tmp_path / "cut")
    # the cut run's last replies said "stop" where the full run's said "ack": a few bytes of control
    control = {"weights_bytes_down", "total_bytes", "per_client", "config_hash"}
    keep = lambda s: {k: v for k, v in s.items() if k not in CLOCK | control}  # noqa: E731
    assert keep(resumed) == keep(full)
    assert 0 < resumed["weights_bytes_down"] - full["weights_bytes_down"] <= 8 * 3


def test_bad_client_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="clients.id=5"):
        fit(make_cfg(*FAST, "clients.id=5"), tmp_path)
    with pytest.raises(ConfigError, match="clients.scheme"):
        fit(make_cfg(*FAST, "clients.scheme=ring"), tmp_path)
    with pytest.raises(ConfigError, match="clients.fraction"):
        fit(make_cfg(*FAST, "clients.fraction=0"), tmp_path)
    with pytest.raises(ConfigError, match="1438"):
        fit(make_cfg(*FAST, "clients.num=1000", "clients.min_samples=2"), tmp_path)
