"""Channels: the SNR and bit error rate they apply, packet loss and its bytes, every method through
damage without a crash, and the same noise in process, over gRPC and across a resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.channel import (DIGITAL, Channel, ChannelSpec, analog, bpsk_error_rate, erasures, flip_bits, lenient,
                              packet_losses, rayleigh_gains)
from splitvit.compression import METHODS, build_method
from splitvit.link import Reply, Request
from splitvit.train import ConfigError, fit
from splitvit.train.state import Progress
from splitvit.wire import Header, WireError, pack, unpack

RUN = (*SMALL, "train.batch_size=64", "train.max_steps=6", "train.eval_every=3", "eval.max_batches=2")
CLOCK = {"wall_s", "time_s", "framing_bytes_up", "framing_bytes_down"}


def metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in rows]


def db(signal: float, noise: float) -> float:
    return 10 * math.log10(signal / noise)


# -- the physics: what is applied is what was asked ---------------------------------------------------
@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 7.5, 20.0])
def test_awgn_applies_the_snr_it_names(snr_db):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8192) * torch.rand(512, 1) * 5  # blocks of different power: each gets its own sigma
    y, signal, noise = analog(x, snr_db, "sample", g)
    assert abs(db(signal, noise) - snr_db) < 0.1
    per_block = 10 * torch.log10(x.pow(2).mean(1) / (y - x).pow(2).mean(1))
    assert per_block.mean().item() == pytest.approx(snr_db, abs=0.1)  # normalised per sample, not over the batch


@pytest.mark.parametrize("snr_db", [-5.0, 10.0])
def test_rayleigh_applies_the_average_snr_and_zero_forcing_inverts_the_gain(snr_db):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40_000, 256)
    gains = rayleigh_gains(x.shape[0], g)
    assert gains.pow(2).mean().item() == pytest.approx(1.0, abs=0.02)  # E|h|^2 = 1 for h ~ CN(0, 1)
    y, signal, noise = analog(x, snr_db, "sample", g, gains, equalise=True)
    assert abs(db(signal, noise) - snr_db) < 0.1
    # zero forcing: y = x + n / |h|, so the residual of a block is larger where its gain is small
    residual = (y - x).pow(2).mean(1)
    expected = x.pow(2).mean(1) / 10 ** (snr_db / 10) / gains.pow(2)
    assert (residual / expected).median().item() == pytest.approx(1.0, abs=0.05)
    y_raw, *_ = analog(x, snr_db, "sample", torch.Generator().manual_seed(1).manual_seed(2), gains, equalise=False)
    assert (y_raw - x * gains[:, None]).pow(2).mean().item() < (y_raw - x).pow(2).mean().item()


def test_the_research_normalisation_is_not_the_snr_it_names():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 65, 192)
    _, signal, noise = analog(x, 0.0, "research", g)
    assert abs(db(signal, noise)) > 10  # |x|_2 / d is a norm over d, not a power: off by tens of dB here
    _, signal, noise = analog(x, 0.0, "token", g)
    assert abs(db(signal, noise)) < 0.1


@pytest.mark.parametrize("p", [1e-3, 0.05, 0.5])
def test_bit_flips_are_within_their_binomial_bounds(p):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (100, 2500), dtype=torch.uint8, generator=g)  # 2,000,000 bits
    out, errors = flip_bits(data, p, g)
    n = data.numel() * 8
    differing = int(torch.tensor([bin(v).count("1") for v in range(256)])[(out ^ data).long()].sum())
    assert differing == errors  # what it reports is what it did
    assert abs(errors - n * p) < 5 * math.sqrt(n * p * (1 - p))
    assert flip_bits(data, 0.0, g)[1] == 0


def test_bpsk_error_rate_is_q_of_the_root_snr():
    # real BPSK at SNR P / sigma^2 = 1 (0 dB): P(n > sqrt(P)) = Q(1) = 0.1587; 9.6 dB: Q(3.02) ~ 1.3e-3
    assert bpsk_error_rate(0.0).item() == pytest.approx(0.158655, rel=1e-4)
    assert bpsk_error_rate(9.6).item() == pytest.approx(1.26e-3, rel=0.03)


def test_arq_resends_exactly_the_lost_packets():
    g = torch.Generator().manual_seed(0)
    spans, lost, resent = packet_losses(1400 * 1000, 1400, 0.2, True, g)
    assert spans == [] and resent == lost * 1400
    assert lost == pytest.approx(1000 * 0.2 / 0.8, rel=0.15)  # a packet is sent 1 / (1 - loss) times on average
    spans, lost, resent = packet_losses(1400 * 1000 + 100, 1400, 0.3, False, g)
    assert resent == 0 and sum(e - s for s, e in spans) in (lost * 1400, (lost - 1) * 1400 + 100)


# -- the mod on real messages ----------------------------------------------------------------------------
def through(spec: ChannelSpec, method, tensors: dict, direction: str = "up", kind: str = "train", seed: int = 0):
    """``tensors`` sent through the channel once, as the receiver gets them (repaired), with the counters."""
    progress = Progress()
    mod = Channel(spec, method.role, method.repair, progress.channel, seed)
    header = Header(kind, step=0) if kind == "train" else Header("eval", mode="uncompressed")
    payload, resent = mod.transmit(pack(header, tensors), direction)
    message, got = unpack(payload, _schema_of(tensors, method))
    repaired, _ = method.repair(message, erasures(got, message))
    return repaired, progress.channel[direction], resent


def _schema_of(tensors, method):
    from splitvit.wire import Schema, TensorSpec

    return lenient(Schema({k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in tensors.items()}), method.role)


def test_the_mod_measures_the_snr_it_applied_and_protects_labels():
    c = build_method("none", 10, 65, 64)
    h = torch.randn(64, 65, 64)
    labels = torch.arange(64) % 10
    got, stats, _ = through(ChannelSpec("awgn", snr_db=(3.0, 3.0)), c, {"z": h, "labels": labels})
    assert stats["snr_db_sum"] / stats["snr_messages"] == pytest.approx(3.0, abs=0.1)
    assert db((h ** 2).sum().item(), ((got["z"] - h) ** 2).sum().item()) == pytest.approx(3.0, abs=0.1)
    assert torch.equal(got["labels"], labels)  # side data rides the protected control channel


def test_a_channel_that_does_not_hit_a_message_leaves_it_bit_exact():
    c = build_method("none", 10, 65, 64)
    payload = pack(Header("train", step=0), {"z": torch.randn(4, 65, 64), "labels": torch.zeros(4, dtype=torch.long)})
    seen = []

    def link(request):
        seen.append(request.payload)
        return Reply(pack(Header("grad", step=0, loss=1.0), {"grad": torch.ones(4, 65, 64)}))

    for spec, kind in ((ChannelSpec("awgn", direction="down"), "train"), (ChannelSpec("awgn"), "eval"),
                       (ChannelSpec("packet_loss", loss=0.5), "weights")):
        mod = Channel(spec, c.role, c.repair, {}, 0)
        header = Header(kind, step=0, mode="uncompressed" if kind == "eval" else None)
        mod(Request(header, payload), link)
        assert seen[-1] == payload
    assert not ChannelSpec().hits("train", "up")  # ideal hits nothing: no mod is even built


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("spec", [ChannelSpec("bit_errors", ber=0.3), ChannelSpec("packet_loss", loss=0.4, arq=False, packet_bytes=64),
                                  ChannelSpec("rayleigh", snr_db=(-10.0, -10.0), csi="none")], ids=["ber", "loss", "rayleigh"])
def test_every_method_survives_heavy_damage_both_ways(name, spec):
    """A method's message through a damaging channel decodes, its gradient goes back (also damaged), and
    the client back-propagates it: no crash, no value outside a tensor, nothing non-finite."""
    options = {"topk": {"compression": 0.05}, "randtopk": {"compression": 0.05}, "fedlite": {"L": 50}}.get(name, {})
    c = build_method(name, 10, 33, 64, **options)
    h = torch.randn(16, 33, 64, requires_grad=True)
    cls_attn = torch.softmax(torch.randn(16, 33), -1)
    sent = c.client().encode(h * 1.0, cls_attn, torch.arange(16) % 10)
    schema = lenient(c.up_schema(16, 33, 64), c.role)
    progress = Progress()
    mod = Channel(spec, c.role, c.repair, progress.channel, seed=3)
    payload, _ = mod.transmit(pack(Header("train", step=0), sent.message), "up")
    message, header = unpack(payload, schema)
    server = c.server().decode(c.repair(message, erasures(header, message))[0])
    assert torch.isfinite(server.z).all()
    (server.z.float().pow(2).mean() + 0 * server.targets.sum()).backward()
    payload, _ = mod.transmit(pack(Header("grad", step=0, loss=1.0), server.reply()), "down")
    reply, header = unpack(payload, lenient(c.grad_schema(sent.tensor), c.role))
    grad = sent.decode(c.repair(reply, erasures(header, reply))[0])
    assert grad.shape == sent.tensor.shape and torch.isfinite(grad).all()
    sent.tensor.backward(grad)
    assert torch.isfinite(h.grad).all()
    digital = any(c.role(k) == DIGITAL for k in sent.message)
    stats = progress.channel["up"]
    if spec.kind == "bit_errors":
        assert (stats["bit_errors"] > 0) == digital
    if spec.kind == "packet_loss":
        assert stats["packets_lost"] > 0 and (stats["erased"] + stats["dropped"] > 0)


def test_a_flipped_index_is_dropped_and_counted_never_written_out_of_bounds():
    c = build_method("topk", 10, 33, 64, compression=0.05)  # K = 106 of 2112: positions as uint16 indices
    assert c.position_format[0] == "index"
    h = torch.randn(8, 33, 64)
    sent = c.client().encode(h, torch.ones(8, 33) / 33, torch.zeros(8, dtype=torch.long))
    got, stats, _ = through(ChannelSpec("bit_errors", ber=0.05), c, sent.message)
    assert stats["dropped"] > 0  # 16-bit indices into 2112 positions: most flips of the top bits land outside
    assert (got["index"] >= 0).all() and (got["index"] < 33 * 64).all()
    z = c.server().decode(got).z
    assert z.shape == (8, 33, 64) and torch.isfinite(z).all()


def test_a_malformed_lost_field_is_refused():
    tensors = {"z": torch.zeros(2, 3)}
    for lost in ('{"z": [[0, 7]]}', '{"q": [[0, 1]]}', '[1, 2]', '{"z": [[2, 1]]}', "{", '{"z": [[0, 1.5]]}'):
        with pytest.raises(WireError):
            erasures(Header("train", step=0, lost=lost), tensors)
    with pytest.raises(WireError):
        Header("weights", step=0, lost="{}")
    for lost in ('{"z": [[0, true]]}', '{"z": [[0, 1, 2]]}', '{"z": [0, 1]}'):
        with pytest.raises(WireError):
            erasures(Header("train", step=0, lost=lost), tensors)


def test_lost_spans_are_read_at_once_and_bounded():
    import json

    n = 2_000_000
    spans = [[i, i + 3] for i in range(0, 87_000 * 8, 8)] + [[n - 2, n]]
    tensors = {"z": torch.zeros(n)}
    mask = erasures(Header("train", step=0, lost=json.dumps({"z": spans})), tensors)["z"]  # 87,000 spans, vectorised
    expect = torch.zeros(n, dtype=torch.bool)
    for a, b in spans[:5] + spans[-2:]:
        expect[a:b] = True
    assert int(mask.sum()) == 87_000 * 3 + 2 and torch.equal(mask[:40], expect[:40]) and mask[-2:].all()
    with pytest.raises(WireError, match="more than"):
        erasures(Header("train", step=0, lost=json.dumps({"z": [[i, i + 1] for i in range(0, 2 * (1 << 18) + 4, 2)]})), tensors)


# -- whole runs -------------------------------------------------------------------------------------------
def test_arq_bytes_count_on_the_wire_and_on_the_link_clock(tmp_path):
    args = (*RUN, "method=quant", "link.bandwidth_mbps=10")
    clean = fit(make_cfg(*args), tmp_path / "clean")
    arq = fit(make_cfg(*args, "channel=packet_loss", "channel.loss=0.2", "channel.packet_bytes=256"), tmp_path / "arq")
    assert arq["bytes_retransmitted_up"] > 0 and arq["bytes_retransmitted_down"] > 0
    assert arq["bytes_up"] == clean["bytes_up"] + arq["bytes_retransmitted_up"]
    assert arq["bytes_down"] == clean["bytes_down"] + arq["bytes_retransmitted_down"]
    extra_s = 8 * (arq["bytes_retransmitted_up"] + arq["bytes_retransmitted_down"]) / 10e6
    assert arq["link_s"] == pytest.approx(clean["link_s"] + extra_s, abs=2e-3)
    assert arq["final_val_acc"] == clean["final_val_acc"]  # everything arrived: the same training
    assert arq["channel_packets_lost"] > 0 and arq["channel"] == "packet_loss"


def test_ideal_is_the_run_without_a_channel_and_noise_changes_it(tmp_path):
    plain = fit(make_cfg(*RUN), tmp_path / "plain")
    ideal = fit(make_cfg(*RUN, "channel=ideal"), tmp_path / "ideal")
    assert metrics(tmp_path / "plain") == metrics(tmp_path / "ideal") and ideal["channel"] == "ideal"
    noisy = fit(make_cfg(*RUN, "channel=awgn", "channel.snr_db=0"), tmp_path / "noisy")
    assert noisy["final_val_loss"] != plain["final_val_loss"]
    assert noisy["channel_snr_db_up"] == pytest.approx(0.0, abs=0.1) and noisy["channel_snr_db_down"] == pytest.approx(0.0, abs=0.1)


def test_resume_continues_the_same_noise(tmp_path):
    args = (*RUN, "method=topk", "method.compression=0.05", "channel=packet_loss", "channel.loss=0.1",
            "channel.arq=false", "channel.packet_bytes=128")
    fit(make_cfg(*args), tmp_path / "straight")
    fit(make_cfg(*args, "train.max_steps=3"), tmp_path / "resumed")
    fit(make_cfg(*args, "train.resume=true"), tmp_path / "resumed")
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    # the cut run's gradient at step 3 said "stop" (max_steps), where the straight run's said nothing: a few
    # bytes, in its bytes and its baseline alike
    for key in ("bytes_down", "baseline_bytes"):
        assert resumed[-1][key] - straight[-1][key] in (8, 16)
    keep = lambda r: {k: v for k, v in r.items() if k not in ("bytes_down", "baseline_bytes")}  # noqa: E731
    assert keep(resumed[-1]) == keep(straight[-1]) and straight[-1]["channel_erased"] > 0


@pytest.mark.parametrize("overrides, message", [
    (("channel.snr_db=[5,1]",), "lo <= hi"),
    (("channel.snr_db=abc",), "number of dB"),
    (("channel.power=norm",), "channel.power"),
])
def test_bad_channel_values_name_the_key(overrides, message):
    from splitvit.train.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(*SMALL, "channel=awgn", *overrides))


def test_several_clients_each_cross_their_own_channel(tmp_path):
    args = (*RUN, "channel=awgn", "channel.snr_db=10", "clients.num=2", "clients.local_steps=2", "clients.rounds=2")
    s = fit(make_cfg(*args, "clients.scheme=splitfed_v2"), tmp_path / "a")
    record = metrics(tmp_path / "a")[-1]
    per = record["channel_per_client"]
    assert sorted(per) == ["0", "1"] and all(abs(c["channel_snr_db_up"] - 10) < 0.5 for c in per.values())
    assert s["channel_snr_db_up"] == pytest.approx(10, abs=0.5) and s["channel_per_client"] == per


def test_bad_channel_settings_are_config_errors():
    from splitvit.train.config import validate

    with pytest.raises(ConfigError, match=r"channel.loss"):
        validate(make_cfg(*SMALL, "channel=packet_loss", "channel.loss=1.0"))
    with pytest.raises(ConfigError, match="unknown key channel.snr"):
        validate(make_cfg(*SMALL, "channel=bit_errors", "+channel.snr_db=3"))


@pytest.mark.parametrize("channel", [("channel=awgn", "channel.snr_db=[-5,5]"),
                                     ("method=topk", "method.compression=0.05", "channel=packet_loss", "channel.loss=0.2",
                                      "channel.arq=false", "channel.packet_bytes=128", "channel.eval=true")], ids=["awgn", "loss"])
def test_the_same_noise_in_process_and_over_grpc(tmp_path, channel):
    """The channel plays both directions in the client's process from one generator; the server repairs
    what comes up: the same run, message for message, whichever link carries it."""
    local = fit(make_cfg(*RUN, *channel), tmp_path / "local")
    remote = fit(make_cfg(*RUN, *channel, "link=grpc"), tmp_path / "grpc")
    assert metrics(tmp_path / "local") == metrics(tmp_path / "grpc")
    assert remote["final_val_acc"] == local["final_val_acc"] and remote["link"] == "grpc"


def test_the_handshake_compares_the_channel():
    from splitvit.train.config import config_diff, shared_config

    ours = shared_config(make_cfg(*SMALL, "channel=awgn", "channel.snr_db=5"))
    theirs = shared_config(make_cfg(*SMALL, "channel=awgn", "channel.snr_db=6"))
    assert [d.split(":")[0] for d in config_diff(ours, theirs)] == ["channel.snr_db"]
    assert config_diff(shared_config(make_cfg(*SMALL)), shared_config(make_cfg(*SMALL, "channel=ideal"))) == []


def test_bit_errors_on_a_method_without_digital_payload_warns(tmp_path):
    s = fit(make_cfg(*RUN, "method=none", "channel=bit_errors", "train.max_steps=2"), tmp_path)
    assert any("nothing will change" in w for w in s["warnings"])
    assert s["channel_bit_errors"] == 0


def test_a_channel_is_idle_only_where_the_method_sends_nothing_it_acts_on():
    from splitvit.channel import ANALOG, DIGITAL, PROTECTED, idle

    floats = {"z": ANALOG, "grad": ANALOG, "labels": PROTECTED}
    codes = {**floats, "codes": DIGITAL}
    assert "channel=awgn" in idle(ChannelSpec("bit_errors", ber=1e-3), floats, "none")
    assert idle(ChannelSpec("bit_errors", ber=1e-3), codes, "quant") is None
    assert idle(ChannelSpec("awgn"), floats, "none") is None
    assert idle(ChannelSpec("packet_loss", loss=0.1), floats, "none") is None  # loses packets of anything
    assert "channel=bit_errors" in idle(ChannelSpec("rayleigh"), {"codes": DIGITAL, "labels": PROTECTED}, "x")
