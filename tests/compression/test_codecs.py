"""Value codecs on every method: what they send (measured), what comes back, channels, and the config."""

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.channel import ANALOG, DIGITAL, Channel, ChannelSpec, erasures, lenient
from splitvit.compression import METHODS, build_method
from splitvit.compression.codecs import FLOAT_CODECS, INT_CODECS, Coded, apply_codec
from splitvit.train import ConfigError, fit
from splitvit.train.config import shared_config, validate
from splitvit.train.state import Progress
from splitvit.wire import Header, decode, encode, pack, unpack
from splitvit.wire.codec import read_header
from test_methods import OPTIONS, C, D, N

DIGITAL_ONLY = {"quant", "slacc"}  # their payload is codes already
CODED = sorted(set(METHODS) - DIGITAL_ONLY)


def coded(name, codec="int4", **options):
    return apply_codec(build_method(name, C, N, D, **OPTIONS[name]), codec, **options)


def step(method, B=12, seed=0):
    """encode -> wire (checked against the coded schemas) -> decode -> backward -> gradient back."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, D, generator=g, requires_grad=True)
    client, server = method.client(), method.server()
    sent = client.encode(h, torch.rand(B, N, generator=g).softmax(-1), torch.arange(B) % C)
    up = encode(sent.message)
    got = server.decode(decode(up, method.up_schema(16, N, D))[0])
    (got.z.square().mean() + got.targets.sum() * 0).backward()
    down = encode(got.reply())
    grad = sent.decode(decode(down, method.grad_schema(sent.tensor))[0])
    sent.tensor.backward(grad)
    return h, got, up, down


@pytest.mark.parametrize("name", CODED)
@pytest.mark.parametrize("codec", ["int8", "int4", "int2"])
def test_every_method_with_an_integer_codec_round_trips_and_sends_fewer_bytes(name, codec):
    m = coded(name, codec)
    h, got, up, down = step(m)
    _, _, up0, down0 = step(build_method(name, C, N, D, **OPTIONS[name]))
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    if name != "lowrank":  # its factors' rows here are rank 2: padded to a word of 8 codes, as big as 2 floats at 8 bits
        assert len(up) < len(up0) and len(down) < len(down0)
    names = [*read_header(up)[0], *read_header(down)[0]]
    assert sum(k.endswith(".codes") for k in names) >= 2
    assert m.nominal_ratio(16, N, D) == pytest.approx(m.inner.nominal_ratio(16, N, D) * m.bits / 32)


def data_bytes(message: bytes) -> dict[str, tuple[str, int]]:
    """Each tensor of a serialized message: (its dtype, the bytes of its data), from its header."""
    return {k: (e["dtype"], e["data_offsets"][1] - e["data_offsets"][0]) for k, e in read_header(message)[0].items()}


def with_codec(name, codec):
    wire_dtype = FLOAT_CODECS.get(codec, "float32")  # fp16, bf16: the method's wire dtype
    return apply_codec(build_method(name, C, N, D, wire_dtype=wire_dtype, **OPTIONS[name]), codec)


@pytest.mark.parametrize("name", ["none", "adc", "topk", "c3sl"])
@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "int4", "int2"])
def test_each_codec_sends_the_bits_it_claims(name, codec):
    """Against the same step sent uncompressed, measured from the bytes: every float32 value costs ``bits``
    (an integer codec adds one scale, 8 bytes, per tensor, and pads each row to a whole word of 8 codes);
    side data costs what it cost; what is left is the header's bytes."""
    bits = 16 if codec in FLOAT_CODECS else INT_CODECS[codec]
    plain = build_method(name, C, N, D, **OPTIONS[name])
    _, _, *plain_messages = step(plain)
    _, _, *coded_messages = step(with_codec(name, codec))
    for direction, a, b in zip(("up", "down"), plain_messages, coded_messages):
        was, now = data_bytes(a), data_bytes(b)
        values = {k for k, (dtype, _) in was.items() if dtype == "F32" and plain.role(k) == ANALOG}
        assert values, f"{name} sends no values {direction}"
        assert {k: was[k] for k in was.keys() - values} == {k: now[k] for k in was.keys() - values}  # side data
        claimed = sum(was[k][1] for k in values) * bits // 32
        if codec in FLOAT_CODECS:
            assert sum(now[k][1] for k in values) == claimed
        else:
            assert all(now[f"{k}.range"][1] == 8 for k in values)  # one scale per tensor
            codes = sum(now[f"{k}.codes"][1] for k in values)
            rows = sum(was[k][1] // 4 // read_header(a)[0][k]["shape"][-1] for k in values)
            assert claimed <= codes < claimed + rows * bits  # under 8 codes of padding per row
            assert codes == claimed or name == "topk"  # rows of D = 16 values pack exactly
        header = len(b) - sum(size for _, size in now.values())
        scales = 0 if codec in FLOAT_CODECS else 8 * len(values)
        padding = 0 if codec in FLOAT_CODECS else codes - claimed
        side = sum(was[k][1] for k in was.keys() - values)
        assert len(b) == header + side + claimed + scales + padding


@pytest.mark.parametrize("codec", ["fp16", "bf16"])
def test_a_float_codec_carries_representable_values_exactly(codec):
    """Values that 16 bits represent arrive as they left, both ways."""
    dtype = getattr(torch, FLOAT_CODECS[codec])
    method = with_codec("none", codec)
    h = torch.randn(6, N, D).to(dtype).float().requires_grad_()
    sent = method.client().encode(h, None, torch.arange(6) % C)
    got = method.server().decode(decode(encode(sent.message), method.up_schema(16, N, D))[0])
    assert torch.equal(got.z, h.detach())
    weights = torch.randn(6, N, D).to(dtype).float()  # a linear loss: the gradient is these weights
    (got.z * weights).sum().backward()
    grad = sent.decode(decode(encode(got.reply()), method.grad_schema(sent.tensor))[0])
    assert torch.equal(grad, weights)


@pytest.mark.parametrize("name", ["none", "adc", "topk", "c3sl"])
@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_a_composed_gradient_is_the_codec_applied_to_the_method_s_own(name, codec):
    """The gradient a composed method delivers to the client's activations equals the method alone, with
    its gradient message passed through the codec on the way back. A linear loss makes the server's
    gradient independent of how the activations were coded on the way up."""
    composed, inner = coded(name, codec), build_method(name, C, N, D, **OPTIONS[name])
    g = torch.Generator().manual_seed(3)
    h0, attn = torch.randn(12, N, D, generator=g), torch.rand(12, N, generator=g).softmax(-1)
    labels = torch.arange(12) % C
    grads = []
    for method, through_codec in ((composed, lambda reply: reply), (inner, lambda reply: composed.unpack(
            composed.pack(reply, "down"), "down", inner.grad_schema(sent.tensor)))):
        h = h0.clone().requires_grad_()
        sent = method.client().encode(h, attn, labels)
        got = method.server().decode(decode(encode(sent.message), method.up_schema(16, N, D))[0])
        weights = torch.randn(got.z.shape, generator=torch.Generator().manual_seed(4))
        (got.z * weights).sum().backward()
        reply = decode(encode(through_codec(got.reply())), method.grad_schema(sent.tensor))[0]
        sent.tensor.backward(sent.decode(reply))
        grads.append(h.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", CODED)
def test_compressed_evaluation_through_a_codec(name):
    m = coded(name, "int4")
    h = torch.randn(5, N, D)
    message = m.client().eval_encode(h, torch.rand(5, N).softmax(-1), "compressed")
    assert any(k.endswith(".codes") for k in message)
    z = m.server().eval_decode(decode(encode(message), m.eval_schema(8, N, D, "compressed"))[0], "compressed")
    assert z.shape[0] == 5 and z.shape[2] == D and torch.isfinite(z).all()


@pytest.mark.parametrize("name", sorted(DIGITAL_ONLY))
def test_a_codec_on_a_payload_of_codes_is_refused(name):
    with pytest.raises(ValueError, match="sends no floating-point payload"):
        coded(name)


def test_side_data_is_never_quantized():
    m = coded("adc", "int2")
    sent = m.client().encode(torch.randn(12, N, D), torch.rand(12, N).softmax(-1), torch.arange(12) % C)
    assert sent.message["targets"].dtype == torch.float32  # ADC's soft labels stay exact
    t = coded("topk", "int2")
    message = t.client().encode(torch.randn(4, N, D), None, torch.zeros(4, dtype=torch.long)).message
    assert {"index", "values.codes"} <= set(message) or {"bitmap", "values.codes"} <= set(message)
    assert m.role("z.codes") == DIGITAL and m.role("targets") == "protected"


def test_none_with_int4_is_quant_at_4_bits():
    """The same grid and codes: the same values arrive; only the names differ (and the codec's .n)."""
    h = torch.randn(6, N, D)
    via_codec = coded("none", "int4")
    via_quant = build_method("quant", C, N, D, bits=4)
    z1 = via_codec.server().decode(via_codec.client().encode(h, None).message).z
    z2 = via_quant.server().decode(via_quant.client().encode(h, None).message).z
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("grid", ["minmax", "zero"])
def test_the_codec_error_is_half_a_step(granularity, grid):
    m = coded("none", "int4", granularity=granularity, grid=grid)
    h = torch.randn(5, N, D)
    message = m.client().encode(h, None).message
    z = m.server().decode(message).z
    step_size = message["z.range"][1] if granularity == "tensor" else message["z.range"][..., 1:]
    assert ((z - h).abs() <= step_size / 2 + 1e-5).all()


def test_a_rank_that_varies_is_carried():
    """A low-rank factor's last dimension (the rank) changes from message to message: ``.n`` says it."""
    m = apply_codec(build_method("lowrank", C, N, D, compression=0.9, energy=0.999, iters=3), "int4")  # rank up to 7
    low = torch.randn(4, N, 2) @ torch.randn(4, 2, D)
    message = m.client().encode(low, None, torch.zeros(4, dtype=torch.long)).message
    r = int(message["P.n"])
    assert r < m.r_max
    z = m.server().decode(decode(encode(message), m.up_schema(16, N, D))[0]).z
    assert z.shape == low.shape


@pytest.mark.parametrize("name", ["adc", "topk", "lowrank"])  # topk: its positions are digital of their own
@pytest.mark.parametrize("spec", [ChannelSpec("bit_errors", ber=0.05), ChannelSpec("packet_loss", loss=0.4, arq=False, packet_bytes=64)],
                         ids=["ber", "loss"])
def test_a_channel_sees_the_codes_as_digital_and_the_receiver_copes(spec, name):
    m = coded(name, "int4")
    sent = m.client().encode(torch.randn(16, N, D), torch.rand(16, N).softmax(-1), torch.arange(16) % C)
    progress = Progress()
    mod = Channel(spec, m.role, m.repair, progress.channel, seed=1)
    payload, _ = mod.transmit(pack(Header("train", step=0), sent.message), "up")
    message, header = unpack(payload, lenient(m.up_schema(16, N, D), m.role))
    repaired, counts = m.repair(message, erasures(header, message))
    got = m.server().decode(repaired)
    assert torch.isfinite(got.z).all()
    stats = progress.channel["up"]
    if spec.kind == "bit_errors":
        assert stats["bit_errors"] > 0
    else:  # lost codes are erased; values whose lost positions are unknown (Top-K's bitmap) are dropped
        assert counts["erased"] + counts["dropped"] > 0 and (got.z == 0).any()


def test_the_config_names_the_codec_and_refuses_two_knobs_for_one_thing():
    cfg = make_cfg(*SMALL, "codec=int4", "codec.granularity=token")
    assert shared_config(cfg)["codec.name"] == "int4"  # the handshake compares it
    with pytest.raises(ConfigError, match="set one"):
        validate(make_cfg(*SMALL, "codec=fp16", "wire.dtype=float16"))
    with pytest.raises(ConfigError, match="codec.grid must be one of"):
        validate(make_cfg(*SMALL, "codec=int8", "codec.grid=log"))
    with pytest.raises(ConfigError, match="sends no floating-point payload"):
        validate(make_cfg(*SMALL, "method=quant", "codec=int4"))


RUN = [*SMALL, "train.batch_size=32", "train.max_steps=30", "eval.max_batches=2", "eval.batch_size=64"]


@pytest.mark.parametrize("setting", [
    ["method=topk", "method.compression=0.2", "codec=int4", "codec.granularity=token"],
    # ADC whose merged labels cross as their members', coded, on a schedule: the server rebuilds each
    ["method=adc", "method.merged_labels=members", "codec=int4", "compression_schedule=steps", "compression_schedule.start=0.05",
     "compression_schedule.end=0.5", "train.eval_every=2"]], ids=["topk", "adc_members"])
def test_a_coded_run_over_grpc_equals_the_run_in_process(tmp_path, setting):
    """The server builds the same coded method from the handshake's config: every metric, step for step."""
    import json

    clock = {"wall_s", "time_s", "framing_bytes_up", "framing_bytes_down"}
    args = [*RUN, "train.max_steps=8", *setting]
    rows = []
    for link, where in (("inprocess", tmp_path / "local"), ("grpc", tmp_path / "grpc")):
        fit(make_cfg(*args, f"link={link}"), where)
        lines = (where / "metrics.jsonl").read_text().splitlines()
        rows.append([{k: v for k, v in json.loads(line).items() if k not in clock} for line in lines])
    assert rows[0] == rows[1] and rows[0][-1]["step"] == 8
    assert len({r["compression_target"] for r in rows[0]}) == (4 if "compression_schedule=steps" in setting else 1)


def test_a_run_with_a_codec_sends_its_share_and_still_learns(tmp_path):
    plain = fit(make_cfg(*RUN, "method=adc", "method.compression=0.25"), tmp_path / "plain")
    int8 = fit(make_cfg(*RUN, "method=adc", "method.compression=0.25", "codec=int8"), tmp_path / "int8")
    assert int8["codec"] == "int8" and int8["steps"] == plain["steps"] == 30
    assert 0.24 < int8["bytes_up"] / plain["bytes_up"] < 0.28  # 8 of 32 bits, plus scales and headers
    assert abs(int8["final_val_loss"] - plain["final_val_loss"]) < 0.05  # 8 bits barely change 30 steps
    assert isinstance(coded("adc", "int8"), Coded)


def test_adc_s_merged_labels_as_members_train_the_same_model_for_fewer_bytes(tmp_path):
    args = [*RUN, "train.max_steps=10", "method=adc", "method.compression=0.25", "codec=int4"]
    soft = fit(make_cfg(*args), tmp_path / "soft")
    members = fit(make_cfg(*args, "method.merged_labels=members"), tmp_path / "members")
    assert members["final_val_loss"] == soft["final_val_loss"] and members["final_val_acc"] == soft["final_val_acc"]
    assert members["bytes_down"] == soft["bytes_down"] and members["bytes_up"] < soft["bytes_up"]


def test_a_channel_that_acts_on_digital_payload_is_not_idle_on_codes():
    from splitvit.channel.mod import idle

    assert idle(ChannelSpec("bit_errors", ber=0.01), coded("adc").roles, "adc") is None
    assert idle(ChannelSpec("bit_errors", ber=0.01), build_method("adc", C, N, D).roles, "adc") is not None
