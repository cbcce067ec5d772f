import pytest
import torch

from splitvit.compression import build_method, merge_and_select
from splitvit.compression.adc import budgets


def batch(B=32, N=17, D=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, N, D, generator=g, dtype=dtype)
    a = torch.rand(B, N, generator=g, dtype=dtype).softmax(-1)
    return h, a


def reference(h, a, assignment, T, k):
    """Loop oracle for ADC's steps 2-3 (docs/architecture.md) given an assignment."""
    z, idx = [], []
    for t in range(T):
        members = assignment == t
        score = a[members].mean(0)
        top = score[1:].topk(k - 1).indices + 1
        keep = torch.cat([torch.tensor([0]), top.sort().values])
        idx.append(keep)
        z.append(h[members].mean(0)[keep])
    return torch.stack(z), torch.stack(idx)


@pytest.mark.parametrize("feature", ["attention", "cls", "mean"])
@pytest.mark.parametrize("B,br,tr", [(32, 0.3, 0.4), (7, 0.5, 1.0), (5, 1.0, 0.2), (16, 0.01, 0.01)])
def test_shapes_means_and_topk(feature, B, br, tr):
    h, a = batch(B=B)
    N = h.shape[1]
    z, assignment, token_index = merge_and_select(h, a, br, tr, feature, torch.Generator().manual_seed(0))
    T, k = min(max(round(br * B), 1), B), min(max(round(tr * N), 1), N)
    assert z.shape == (T, k, 8) and assignment.shape == (B,) and token_index.shape == (T, k)
    assert assignment.dtype == token_index.dtype == torch.long
    assert (token_index[:, 0] == 0).all()
    assert torch.bincount(assignment, minlength=T).min() >= 1 and assignment.max() < T
    z_ref, idx_ref = reference(h, a, assignment, T, k)
    assert torch.equal(token_index, idx_ref)  # scores are always the mean attention
    torch.testing.assert_close(z, z_ref)


def test_budgets_round_and_clamp():
    assert budgets(128, 197, 0.1 ** 0.5, 0.1 ** 0.5) == (40, 62)
    assert budgets(4, 10, 0.01, 0.01) == (1, 1)
    assert budgets(4, 10, 1.0, 1.0) == (4, 10)


def test_gradient_flows_through_merge_and_gather():
    h, a = batch(B=12, N=9, D=4, dtype=torch.double)
    h.requires_grad_()
    g = torch.Generator().manual_seed(0)
    _, assignment, token_index = merge_and_select(h.detach(), a, 0.5, 0.5, generator=g)

    def f(h):
        return merge_and_select(h, a, 0.5, 0.5, generator=torch.Generator().manual_seed(0))[0]

    assert torch.autograd.gradcheck(f, (h,))
    # analytic: dz[t]/dh[b, token_index[t]] = 1/|cluster t|, zero at dropped tokens
    gz = torch.randn(f(h).shape, dtype=torch.double)
    f(h).backward(gz)
    counts = torch.bincount(assignment)
    expected = torch.zeros_like(h)
    for b in range(12):
        t = assignment[b]
        expected[b, token_index[t]] = gz[t] / counts[t]
    torch.testing.assert_close(h.grad, expected)


def test_deterministic_given_the_generator():
    h, a = batch(B=64, N=33)
    r1 = merge_and_select(h, a, 0.3, 0.3, generator=torch.Generator().manual_seed(5))
    r2 = merge_and_select(h, a, 0.3, 0.3, generator=torch.Generator().manual_seed(5))
    for x, y in zip(r1, r2):
        assert torch.equal(x, y)


def test_identical_rows_never_give_nan():
    h = torch.ones(32, 10, 4, requires_grad=True)
    a = torch.full((32, 10), 0.1)
    z, assignment, _ = merge_and_select(h, a, 0.5, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(z).all() and torch.bincount(assignment, minlength=16).min() >= 1
    z.sum().backward()
    assert torch.isfinite(h.grad).all()


def test_bad_input_is_refused_with_a_reason():
    h, a = batch()
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        merge_and_select(h, a[:, :5], 0.5, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        merge_and_select(h, a, 0.0, 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        merge_and_select(h, a, 0.5, 1.5)
    with pytest.raises(ValueError, match="attention, cls, mean"):
        merge_and_select(h, a, 0.5, 0.5, feature="median")
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        merge_and_select(h[0], a, 0.5, 0.5)


def test_adc_soft_labels_and_options():
    c = build_method("adc", 5, 17, 8, compression=0.25)
    assert (c.batch_ratio, c.token_ratio) == (0.5, 0.5)
    h, a = batch(B=20)
    labels = torch.arange(20) % 5
    p = c.client().encode(h, a, labels)
    assert p.message["targets"].shape == (10, 5)
    torch.testing.assert_close(p.message["targets"].sum(1), torch.ones(10))
    only_batch = build_method("adc", 5, 17, 8, batch_ratio=0.25)
    assert only_batch.token_ratio == 1.0 and only_batch.target_ratio() == 0.25
    with pytest.raises(ValueError, match="options: compression"):
        build_method("adc", 5, 17, 8, R=4)
    with pytest.raises(ValueError, match="adc, bottlenet, c3sl"):
        build_method("c3", 5, 17, 8)


def test_the_research_code_s_split_and_rounding_are_options():
    from splitvit.compression import build_method
    from splitvit.compression.merge import balanced_ratios, budgets
    from test_codecs import step

    assert balanced_ratios(0.1) == pytest.approx((0.1 ** 0.5, 0.1 ** 0.5))
    assert balanced_ratios(0.1, "fifth") == pytest.approx((0.1 ** 0.2, 0.1 ** 0.8))
    # 0.631 * 128 = 80.8: round keeps 81 merged samples, int() 80; int() never merges into fewer than 2
    assert budgets(128, 17, 0.631, 0.5) == (81, 8) and budgets(128, 17, 0.631, 0.5, "floor") == (80, 8)
    assert budgets(128, 17, 0.001, 0.1) == (1, 2) and budgets(128, 17, 0.001, 0.1, "floor") == (2, 1)
    with pytest.raises(ValueError, match="rounding must be one of round, floor"):
        budgets(8, 17, 0.5, 0.5, "ceil")
    m = build_method("adc", 10, 17, 16, compression=0.1, split="fifth", rounding="floor")
    assert (m.batch_ratio, m.token_ratio) == pytest.approx((0.1 ** 0.2, 0.1 ** 0.8))
    _, got, up, _ = step(m, B=12)  # through the wire, against its own schemas
    assert got.z.shape[:2] == budgets(12, 17, m.batch_ratio, m.token_ratio, "floor") == (7, 2)
    with pytest.raises(ValueError, match="method.split must be one of sqrt, fifth"):
        build_method("adc", 10, 17, 16, split="half")


def test_merged_labels_as_members_are_the_same_soft_labels_in_fewer_bytes():
    """``merged_labels=members``: each sample's class id and merged sample cross instead of the soft labels;
    the server's average of them is the client's soft labels bit for bit, and the activations are untouched."""
    from splitvit.wire import decode, encode
    from splitvit.wire.codec import read_header

    B, C = 128, 50
    h, a = batch(B=B)
    labels = torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(1))
    sides = {}
    for how in ("soft", "members"):
        m = build_method("adc", C, 17, 8, compression=0.2, merged_labels=how)
        up = encode(m.client().encode(h, a, labels).message)  # the same K-means seeds on both
        sides[how] = (up, m.server().decode(decode(up, m.up_schema(B, 17, 8))[0]))
    (soft_bytes, soft), (member_bytes, got) = sides["soft"], sides["members"]
    assert torch.equal(got.targets, soft.targets) and torch.equal(got.z, soft.z)
    entries = read_header(member_bytes)[0]
    assert {k: (e["dtype"], e["shape"]) for k, e in entries.items() if k != "z"} == {
        "labels": ("U8", [B]), "members": ("U8", [B])}
    T = soft.z.shape[0]
    saved = len(soft_bytes) - len(member_bytes)  # 11,400 bytes of floats -> 256 of integers, less a header entry
    assert T == 57 and 4 * T * C - 2 * B - 100 < saved < 4 * T * C - 2 * B


def test_members_that_leave_a_merged_sample_empty_or_name_one_not_sent_are_refused():
    from splitvit.wire import WireError

    m = build_method("adc", 5, 17, 8, compression=0.25, merged_labels="members")
    h, a = batch(B=20)
    message = m.client().encode(h, a, torch.arange(20) % 5).message
    T = message["z"].shape[0]
    empty = torch.zeros_like(message["members"])  # every sample in merged sample 0: the others average nothing
    beyond = message["members"].clone()
    beyond[0] = T  # a merged sample the message does not hold
    for bad in (empty, beyond):
        with pytest.raises(WireError, match=f"each of the message's {T} merged samples"):
            m.server().decode({**message, "members": bad})
    with pytest.raises(ValueError, match="merged_labels must be one of soft, members"):
        build_method("adc", 5, 17, 8, merged_labels="counts")
