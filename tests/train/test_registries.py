"""A method or a scheme is one class, registered by name: one defined here, in a test file alone,
trains end to end through the same loop as the shipped ones."""

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.compression import METHODS, ClientCodec, Method, ServerCodec, register_method
from splitvit.train import fit
from splitvit.train.schemes import SCHEMES, register_scheme
from splitvit.train.schemes.sequential import Sequential
from splitvit.wire import Schema, TensorSpec

FAST = [*SMALL, "train.batch_size=16", "eval.max_batches=1", "eval.batch_size=64"]


class HalfClient(ClientCodec):
    """Sends the activations in float16; takes the float16 gradient back."""

    def encode(self, h, cls_attn, labels=None):
        return self.encoded({"z": h.detach().half()}, h, labels)


class HalfServer(ServerCodec):
    """Reads the float16 activations; sends their gradient back in float16."""

    def decode(self, message):
        received = message["z"].float().requires_grad_()
        return self.decoded(received, received, message, lambda grad: {"grad": grad.half()})


class HalfPrecision(Method):
    """The activations in float16 and the gradient back in float16: half of float32's bytes."""

    name = "half_test"
    grad_of_tokens = True
    Client, Server = HalfClient, HalfServer

    def activation_schema(self, B, N, D):
        return Schema({"z": TensorSpec(torch.float16, ("B", N, D))})

    def grad_schema(self, sent):
        return Schema({"grad": TensorSpec(torch.float16, tuple(sent.shape))})

    def target_ratio(self):
        return 0.5

    def nominal_ratio(self, B, N, D):
        return 0.5


class Reversed(Sequential):
    """Sequential split learning, the turns in the reverse of sequential's order."""

    name = "reversed_test"

    def order(self, g, steps):
        return super().order(g, steps)[::-1]


@pytest.fixture
def registered():
    register_method(HalfPrecision)
    register_scheme(Reversed)
    yield
    METHODS.pop(HalfPrecision.name)
    SCHEMES.pop(Reversed.name)


def test_a_method_defined_in_a_test_file_trains_end_to_end(tmp_path, registered):
    s = fit(make_cfg(*FAST, "method=none", "method.name=half_test", "train.max_steps=6"), tmp_path / "half")
    plain = fit(make_cfg(*FAST, "method=none", "train.max_steps=6"), tmp_path / "none")
    assert s["method"] == "half_test" and s["steps"] == 6
    assert 0.5 < s["compression_measured"] < 0.52  # float16 both ways, and a header of the same size
    assert s["bytes_up"] < 0.52 * plain["bytes_up"] and s["bytes_down"] < 0.52 * plain["bytes_down"]
    assert abs(s["final_val_loss"] - plain["final_val_loss"]) < 0.05  # float16 barely changes a few steps


def test_a_scheme_defined_in_a_test_file_trains_end_to_end(tmp_path, registered):
    args = [*FAST, "clients.num=3", "clients.local_steps=2", "clients.rounds=2"]
    s = fit(make_cfg(*args, "clients.scheme=reversed_test"), tmp_path / "rev")
    seq = fit(make_cfg(*args, "clients.scheme=sequential"), tmp_path / "seq")
    assert s["scheme"] == "reversed_test" and s["steps"] == 12 and s["stopped_by"] == "rounds"
    assert [c["steps"] for c in s["per_client"]] == [4, 4, 4]
    assert s["final_val_loss"] != seq["final_val_loss"]  # the turns came in another order


def test_an_unknown_method_or_scheme_names_the_registered_ones(tmp_path):
    from splitvit.train import ConfigError

    with pytest.raises(ConfigError, match="topk"):
        fit(make_cfg(*FAST, "method=none", "method.name=nothing"), tmp_path)
    with pytest.raises(ConfigError, match="splitfed_v2"):
        fit(make_cfg(*FAST, "clients.scheme=nothing"), tmp_path)
