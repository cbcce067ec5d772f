"""Every method through the wire: shapes, gradients into the client, bytes, and its documented ratios."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from splitvit.compression import METHODS, build_compressor
from splitvit.compression.fedlite import FedLite
from splitvit.wire import WireError, decode, encode

N, D, C = 17, 16, 10
CONF = Path(__file__).resolve().parents[2] / "src" / "splitvit" / "conf" / "method"
# a cut of 17 tokens of 16 features is tiny: where a method's shipped default does not fit it, or a
# test below needs round numbers, this setting replaces it
TINY = {
    "adc": {"compression": 0.25},
    "c3sl": {"R": 4},
    "bottlenet": {"compression": 0.25},
    "quant": {"bits": 4},
    "fedlite": {"q": 4, "L": 16},
    "lowrank": {"compression": 0.3},
    "slacc": {"bits": 4, "groups": 4},
}


def shipped(name: str) -> dict:
    """A method's options as ``conf/method/<name>.yaml`` ships them."""
    return {k: v for k, v in yaml.safe_load((CONF / f"{name}.yaml").read_text()).items() if k != "name"}


OPTIONS = {name: {**shipped(name), **TINY.get(name, {})} for name in sorted(METHODS)}


def test_every_registered_method_has_its_config_and_every_config_a_method():
    assert sorted(METHODS) == sorted(p.stem for p in CONF.glob("*.yaml"))
    for name in METHODS:
        assert yaml.safe_load((CONF / f"{name}.yaml").read_text())["name"] == name
        assert METHODS[name].__doc__, f"method {name} has no docstring"


def make(name, **kw):
    return build_compressor(name, C, N, D, seed=0, **{**OPTIONS[name], **kw})


def step(c, B=12, seed=0):
    """A client encode -> wire -> server decode -> backward -> grad wire -> client backward."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, D, generator=g, requires_grad=True)
    a = torch.rand(B, N, generator=g).softmax(-1)
    y = torch.arange(B) % C
    packet = c.client_encode(h, a, y)
    up = encode(packet.message)
    message, _ = decode(up, c.up_schema(16, N, D))
    sp = c.server_decode(message)
    (sp.z.square().mean() + (sp.targets * sp.z.mean((1, 2))[:, None]).sum()).backward()
    down = encode(c.server_encode_grad(sp))
    grad = c.client_decode_grad(decode(down, c.grad_schema(packet.sent))[0], packet)
    packet.sent.backward(grad)
    return h, sp, up, down


@pytest.mark.parametrize("name", sorted(METHODS))
def test_round_trip_shapes_and_gradient(name):
    c = make(name)
    h, sp, up, down = step(c)
    B = 12 if name != "adc" else round(0.5 * 12)
    assert sp.z.shape[0] == sp.targets.shape[0] == B and sp.z.shape[2] == D
    assert sp.z.shape[1] == (N if name != "adc" else round(0.5 * N))
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    for m in [*c.client_modules.parameters(), *c.server_modules.parameters()]:
        assert m.grad is not None  # learned parts are trained by their own side


@pytest.mark.parametrize("name", sorted(METHODS))
def test_measured_bytes_follow_the_documented_nominal_relation(name):
    c, none = make(name), make("none")
    _, _, up, down = step(c, B=16)
    _, _, up0, down0 = step(none, B=16)
    nominal = c.nominal_ratio(16, N, D)
    measured_up, measured_down = len(up) / len(up0), len(down) / len(down0)
    # documented: the uplink pays for labels/positions/scales/codebooks on top of nominal...
    assert measured_up >= nominal * 0.9
    # ...and the gradient comes back compressed (never more than plain split learning)
    assert measured_down <= 1.0 + 1e-9
    extra = {"topk": 2.5, "randtopk": 2.5, "fedlite": 40, "slacc": 4, "c3sl": 1.5, "lowrank": 1.6, "quant": 1.5}
    assert measured_up <= nominal * extra.get(name, 1.25) + 0.05


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compressed_evaluation_round_trip(name):
    c = make(name)
    h = torch.randn(5, N, D)
    msg = c.eval_encode(h, torch.rand(5, N).softmax(-1), "compressed")
    z = c.eval_decode(decode(encode(msg), c.eval_schema(8, N, D, "compressed"))[0], "compressed")
    assert z.shape[0] == 5 and z.shape[2] == D


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_round_trip_reproduces_the_next_step(name):
    a = make(name)
    step(a, seed=1)
    state = a.state_dict()
    b = make(name)
    b.load_state_dict(state)
    _, sa, ua, _ = step(a, seed=2)
    _, sb, ub, _ = step(b, seed=2)
    assert ua == ub


def test_topk_keeps_the_largest_and_chooses_the_smaller_position_code():
    c = make("topk", compression=0.02)  # K=5 of 272: an index list (10 bytes) beats a bitmap (34)
    assert c.position_format[0] == "index"
    assert make("topk", compression=0.2).position_format[0] == "bitmap"  # K=54: 108 bytes vs 34
    h = torch.randn(3, N, D)
    _, z = c.decompress(decode(encode(c.compress(h, None, True)[0]), c.eval_schema(3, N, D, "compressed"))[0])
    flat = h.flatten(1)
    thr = flat.abs().topk(c.kept, 1).values[:, -1:]
    torch.testing.assert_close(z.flatten(1), torch.where(flat.abs() >= thr, flat, torch.zeros_like(flat)))


def test_topk_gradient_only_at_kept_positions():
    c = make("topk")
    h, _, _, _ = step(c)
    assert ((h.grad != 0).flatten(1).sum(1) <= c.kept).all()


def test_randtopk_is_random_in_training_and_topk_in_evaluation():
    c = make("randtopk", alpha=0.5)
    h = torch.randn(4, N, D)
    m1, m2 = c.compress(h, None, True)[0], c.compress(h, None, True)[0]
    assert not torch.equal(m1["values"], m2["values"])
    t = make("topk")
    assert torch.equal(c.compress(h, None, False)[0]["values"], t.compress(h, None, False)[0]["values"])


def test_forged_positions_are_refused():
    c = make("topk", compression=0.02)
    msg = c.compress(torch.randn(2, N, D), None, True)[0]
    msg["index"] = msg["index"].int().flip(1).to(torch.uint16)
    with pytest.raises(WireError, match="increasing"):
        c.decompress(decode(encode(msg), c.eval_schema(4, N, D, "compressed"))[0])


@pytest.mark.parametrize("bits", [1, 3, 8])
@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("grid", ["minmax", "zero"])
def test_quant_error_is_half_a_step(bits, granularity, grid):
    c = make("quant", bits=bits, granularity=granularity, grid=grid)
    h = torch.randn(3, N, D)
    msg = c.compress(h, None, True)[0]
    assert msg["codes"].shape == (3, math.ceil(N * D * bits / 8))
    _, z = c.decompress(msg)
    step_size = msg["scale"] if granularity == "tensor" else msg["scale"][..., None]
    assert ((z - h).abs() <= step_size / 2 + 1e-5).all()


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_quant_zero_grid_sends_a_near_zero_gradient_as_zero(granularity):
    """A gradient is mostly near zero with a few large entries: on the zero grid its small entries come
    back as 0; on a 2-bit min-max grid, as plus or minus a sixth of the range (1/3 here)."""
    g = torch.randn(3, N, D) * 1e-4
    g[:, :, 0], g[:, :, 1] = 1.0, -1.0  # the outliers that set the range, in every token
    g[0, 0, 2] = 0.0
    for bits in (1, 2, 4):
        c = make("quant", bits=bits, granularity=granularity, grad_grid="zero")
        z = c.decode_grad(c.encode_grad(g), g)
        assert z[0, 0, 2] == 0.0 and (z[..., 2:] == 0).all()
        assert (z - g).norm() < (0.5 if bits > 1 else 1.01) * g.norm()  # 1 bit: {0, 2} or {-2, 0}, so 0 at worst
    minmax = make("quant", bits=2, granularity=granularity)
    z = minmax.decode_grad(minmax.encode_grad(g), g)
    assert torch.allclose(z[..., 2:].abs(), torch.tensor(1 / 3))
    assert c.q.grid == "minmax"  # the activations keep theirs


@pytest.mark.parametrize("name", ["quant", "slacc"])
def test_grad_center_removes_the_error_the_loss_cannot_see(name):
    """The gradient at a pre-norm ViT's cut has no per-token feature-mean; on a 2-bit min-max grid most
    of its quantization error is one. Centering drops that part, and only that part."""
    g = torch.randn(3, N, D) * 1e-3
    g[:, :, 0], g[:, :, 1] = 1.0, -0.6
    g -= g.mean(-1, keepdim=True)  # what a LayerNorm's backward gives
    plain, centered = make(name, bits=2), make(name, bits=2, grad_center=True)
    h = torch.randn(3, N, D, requires_grad=True)
    packet = plain.client_encode(h, torch.rand(3, N).softmax(-1), torch.zeros(3, dtype=torch.long))
    message = plain.encode_grad(g)
    z, zc = plain.client_decode_grad(message, packet), centered.client_decode_grad(message, packet)
    torch.testing.assert_close(zc, z - z.mean(-1, keepdim=True))
    assert zc.mean(-1).abs().max() < 1e-6
    assert (zc - g).norm() < (z - g).norm()
    if name == "quant":  # one grid for the whole tensor: every near-zero entry is off by the same level
        assert z.mean(-1).abs().min() > 0.05 and (zc - g).norm() < 0.5 * (z - g).norm()


def test_grad_center_is_refused_where_the_gradient_is_not_the_tokens():
    with pytest.raises(ValueError, match=r"split.grad_center=true needs a method whose gradient is that of the tokens \(.*quant"):
        build_compressor("topk", C, N, D, grad_center=True)
    with pytest.raises(ValueError, match="split.grad_center must be true or false"):
        make("quant", grad_center="yes")


def test_c3sl_unbinds_approximately_and_handles_ragged_batches():
    c = build_compressor("c3sl", C, 65, 128, R=2)
    h = torch.randn(5, 65, 128)  # 5 = 2 + 2 + 1
    msg, s = c.compress(h, None, True)
    assert s.shape == (3, 65 * 128)
    _, z = c.decompress(msg)
    assert z.shape == h.shape
    cos = torch.nn.functional.cosine_similarity(z.flatten(1), h.flatten(1))
    assert (cos > 0.5).all()  # superposition noise, but each sample is recovered
    with pytest.raises(ValueError, match="larger than train.batch_size"):
        build_compressor("c3sl", C, N, D, R=8).check_batch(4)


def test_bottlenet_decoder_output_is_signed():
    c = make("bottlenet")
    _, z = c.decompress({"e": torch.randn(4, N, c.code_dim)})
    assert (z < 0).any()  # no ReLU clipping the residual stream


def test_fedlite_corrects_the_gradient():
    c = FedLite(num_classes=C, tokens=N, dim=D, q=4, L=8, lam=0.5)
    h = torch.randn(6, N, D, requires_grad=True)
    msg, sent = c.compress(h, None, True)
    hq = c.pq.decode(msg, N)
    g = torch.randn_like(hq)
    sent.backward(g)
    torch.testing.assert_close(h.grad, g + 0.5 * (h.detach() - hq))
    assert torch.equal(sent.detach(), hq)


def test_lowrank_rank_obeys_the_byte_cap():
    c = make("lowrank", compression=0.3, energy=1.0)
    msg = c.compress(torch.randn(4, N, D), None, True)[0]
    assert msg["P"].shape[2] == c.up.r_max == int(0.3 * N * D / (N + D))
    low = torch.randn(4, N, 2) @ torch.randn(4, 2, D)  # rank 2: found and sent exactly
    m = make("lowrank", compression=0.3, energy=0.999, iters=3).compress(low, None, True)[0]
    assert m["P"].shape[2] <= 3
    torch.testing.assert_close(m["P"] @ m["Q"].transpose(1, 2), low, atol=1e-4, rtol=1e-4)


def test_slacc_gives_more_bits_to_high_entropy_channels():
    c = make("slacc", bits=4, groups=3)
    h = torch.randn(8, N, D)
    h[:, :, :5] = torch.randint(0, 2, (8, N, 5)).float()  # two-valued: low entropy
    msg = c.compress(h, None, True)[0]
    assert (msg["group"][:5] == 0).all() and c.q.group_bits == [3, 4, 5]
    _, z = c.decompress(msg)
    assert ((z - h).abs() <= msg["scale"] / 2 + 1e-5).all()


@pytest.mark.parametrize("name,bad,match", [
    ("quant", {"bits": 0}, r"\[1, 8\]"),
    ("quant", {"grad_grid": "exact"}, r"method.grad_grid must be one of minmax, zero"),
    ("c3sl", {"R": 0}, "positive"),
    ("topk", {"compression": 1.5}, r"\(0, 1\]"),
    ("lowrank", {"compression": 0.0}, r"\(0, 1\]"),
    ("fedlite", {"q": 5}, "divisor"),
    ("randtopk", {"alpha": 1.0}, "alpha"),
    ("slacc", {"groups": 0}, "groups"),
])
def test_impossible_options_are_refused(name, bad, match):
    with pytest.raises(ValueError, match=match):
        make(name, **bad)


def test_compression_is_the_common_knob():
    assert make("c3sl", R=None, compression=0.1).R == 10
    assert make("c3sl", R=3, compression=0.1).R == 3  # the method's own knob wins
    assert make("quant", bits=None, compression=0.1).q.bits == 3
    assert make("quant", bits=None, compression=0.5).q.bits == 8  # clamped: 16 bits is wire.dtype's job
    assert make("slacc", bits=None, compression=0.2).q.bits == 6
