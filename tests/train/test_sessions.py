"""The server in two parts: one shared half (model, optimizer, method's server side), a session per client."""

import pytest
import torch

from splitvit.compression import build_method
from splitvit.models import create_model, split
from splitvit.train.server import ServerHalf, Session
from splitvit.wire import Header, WireError, pack, unpack


def setup():
    torch.manual_seed(0)
    model = create_model("vit_nano_patch8_32", num_classes=5, depth=2)
    client, server = split(model, 1)
    none = build_method("none", 5, 17, 64)
    half = ServerHalf(server, none.server(), torch.optim.SGD(server.parameters(), lr=0.1))
    sessions = [Session(half, 4, 17, 64, client=i) for i in (0, 1)]
    return client, none, half, sessions


def train_message(client, none, client_id, step, seed):
    torch.manual_seed(seed)
    h, attn = client(torch.randn(4, 3, 32, 32))
    return pack(Header("train", client=client_id, step=step), none.client().encode(h, attn, torch.arange(4) % 5).message)


def test_sessions_keep_their_own_step_order_and_replay_cache_on_one_shared_half():
    client, none, half, (s0, s1) = setup()
    before = half.model.head.weight.clone()
    r0 = s0.handle(train_message(client, none, 0, 0, seed=1))
    r1 = s1.handle(train_message(client, none, 1, 0, seed=2))  # client 1's step 0 is its own
    assert not torch.equal(half.model.head.weight, before)  # both trained the one shared half
    _, header = unpack(r1, none.grad_schema(torch.zeros(4, 17, 64)))
    assert (header.kind, header.client, header.step) == ("grad", 1, 0)  # the reply goes to its own client
    weights = half.model.head.weight.clone()
    assert s0.handle(train_message(client, none, 0, 0, seed=1)) == r0  # a retry: the cached reply, nothing applied
    assert torch.equal(half.model.head.weight, weights)
    assert s1.last_step == 0 and s0.last_step == 0 and r1 != r0
    with pytest.raises(WireError, match="out of order"):
        s1.handle(train_message(client, none, 1, 2, seed=3))


def test_a_session_refuses_another_clients_messages():
    client, none, half, (s0, s1) = setup()
    with pytest.raises(WireError, match="client 1 reached the session of client 0"):
        s0.handle(train_message(client, none, 1, 0, seed=1))
    assert s0.last_step == -1


def test_a_step_sent_again_with_other_content_is_refused():
    client, none, half, (s0, _) = setup()
    s0.handle(train_message(client, none, 0, 0, seed=1))
    weights = half.model.head.weight.clone()
    with pytest.raises(WireError, match="sent again with different content"):
        s0.handle(train_message(client, none, 0, 0, seed=9))
    assert torch.equal(half.model.head.weight, weights) and s0.last_step == 0
