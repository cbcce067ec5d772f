"""One split step through the wire: bytes counted are the bytes serialised, gradients reach the client."""

import pytest
import torch

from splitvit.compression import METHODS, build_method
from splitvit.link import CountBytes, Exchange, InProcessLink
from splitvit.models import create_model, split
from splitvit.train import ServerHalf, Session, SplitClient
from splitvit.train.state import Progress
from splitvit.wire import WireError, encode


class RecordingLink(InProcessLink):
    def __init__(self, handler):
        super().__init__(handler)
        self.sizes = []

    def request(self, payload):
        reply = super().request(payload)
        self.sizes.append((len(payload), len(reply)))
        return reply


def build(method, B=16, **opts):
    torch.manual_seed(0)
    model = create_model("vit_mini_patch4_32", num_classes=10, embed_dim=32, depth=3, num_heads=2)
    client_model, server_model = split(model, 2)
    c = build_method(method, 10, 65, 32, **opts)
    server = Session(ServerHalf(server_model, c.server(), torch.optim.Adam(server_model.parameters(), 1e-3)), B, 65, 32)
    link = RecordingLink(server.handle)
    client = SplitClient(client_model, c.client(), torch.optim.Adam(client_model.parameters(), 1e-3), None, 10)
    client.progress = Progress()
    client.exchange = Exchange(link, [CountBytes(client.progress)])
    return model, client, server, link


@pytest.mark.parametrize(
    "method,opts",
    [("adc", {"compression": 0.1}), ("adc", {"batch_ratio": 0.5})] + [(m, {}) for m in sorted(METHODS) if m != "adc"],
)
def test_bytes_counted_are_the_serialised_sizes(method, opts):
    _, client, _, link = build(method, **opts)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    for step in range(3):
        client.train_step(x, y, step)
    assert client.progress.bytes_up == sum(u for u, _ in link.sizes)
    assert client.progress.bytes_down == sum(d for _, d in link.sizes)
    # and a message is its tensors' raw bytes plus a small JSON header, nothing more
    h, a = client.model(x)
    message = client.codec.encode(h, a, y).message
    payload = sum(t.numel() * t.element_size() for t in message.values())
    header_bound = 100 * (len(message) + 1)  # JSON: a name, dtype, shape and offsets per tensor
    assert payload < len(encode(message, {"kind": "train", "step": "2"})) < payload + header_bound


def test_adc_sends_about_xi_of_plain_split_learning():
    _, none_client, _, _ = build("none")
    _, adc_client, _, _ = build("adc", compression=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    none_client.train_step(x, y, 0)
    adc_client.train_step(x, y, 0)
    ratio = adc_client.progress.bytes_up / none_client.progress.bytes_up
    nominal = adc_client.method.nominal_ratio(16, 65, 32)  # T=5 of 16, k=21 of 65
    assert nominal == pytest.approx(5 / 16 * 21 / 65)
    assert nominal < ratio < nominal * 1.1  # the labels and headers cost a little
    down = adc_client.progress.bytes_down / none_client.progress.bytes_down
    assert nominal < down < nominal * 1.1  # the gradient comes back compressed too


@pytest.mark.parametrize("method", ["none", "adc"])
def test_split_step_matches_one_piece_autograd(method):
    """The wire changes nothing: gradients equal back-propagating the whole graph in one process."""
    model, client, server, _ = build(method, compression=0.25) if method == "adc" else build(method)
    ref = create_model("vit_mini_patch4_32", num_classes=10, embed_dim=32, depth=3, num_heads=2)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    gen_state = client.codec.state_dict()
    for p in [*client.model.parameters(), *server.model.parameters()]:
        p.grad = None
    client.optimizer.step = server.optimizer.step = lambda: None  # keep weights to compare grads
    client.train_step(x, y, 0)

    ref_client, ref_server = split(ref, 2)
    c = (build_method(method, 10, 65, 32, compression=0.25) if method == "adc" else build_method(method, 10, 65, 32)).client()
    c.load_state_dict(gen_state)
    h, a = ref_client(x)
    sent = c.encode(h, a, y)
    logits = ref_server(sent.tensor)
    targets = sent.message["targets"] if method == "adc" else torch.nn.functional.one_hot(y, 10).float()
    (-(targets * logits.log_softmax(-1)).sum(-1).mean()).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_server_refuses_a_malformed_message_and_keeps_serving():
    _, client, server, _ = build("adc", compression=0.1)
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    bad = encode({"z": torch.full((5, 21, 32), float("nan")), "targets": torch.full((5, 10), 0.1)}, {"kind": "train", "step": "0"})
    with pytest.raises(WireError, match="NaN"):
        server.handle(bad)
    with pytest.raises(WireError, match="kind"):
        server.handle(encode({"z": torch.zeros(1)}, {"kind": "shutdown"}))
    too_big = encode({"z": torch.zeros(6, 21, 32), "targets": torch.full((6, 10), 0.1)}, {"kind": "train", "step": "0"})
    with pytest.raises(WireError, match="allowed"):
        server.handle(too_big)  # T=6 > round(sqrt(0.1) * 16) = 5
    for k, v in server.model.state_dict().items():
        assert torch.equal(v, before[k])  # nothing was applied
    client.train_step(torch.randn(16, 3, 32, 32), torch.arange(16) % 10, 0)
