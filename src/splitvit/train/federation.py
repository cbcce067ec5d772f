"""Several clients on one server: which client talks when, and how the client halves are shared.

Three schemes (``clients.scheme``), all on the wire as ``weights`` messages, counted like every other:

- ``sequential`` (vanilla split learning, Gupta & Raskar 2018): the clients of a round take turns on
  the one server half, in a seeded order; each trains ``clients.local_steps`` steps, then hands its
  client half on. The hand-off goes through the server: the client uploads its half (``weights`` up)
  and the next client fetches it (``control`` up, ``weights`` down).
- ``splitfed_v1`` (Thapa et al. 2020, SplitFed): the clients of a round train in parallel, each
  against its own copy of the server half; at the round's end the client halves and the server-half
  copies are averaged by FedAvg, weighted by the samples each trained on this round.
- ``splitfed_v2``: the clients of a round train in parallel against the one server half, which takes
  their messages in a seeded random order; the client halves are averaged at the round's end.

Every order here is a pure function of the seed and the round, so a simulation and a gRPC run with
the same seed apply the same messages in the same order (:func:`participants`, :func:`step_order`).
The server's side of the sharing is :class:`Federation`: it keeps the current client half (the last
one handed on, or the last average) and a version number that says which round made it.
"""

from __future__ import annotations

import math

import torch

from ..wire import Schema, TensorSpec
from .fedavg import fedavg

SCHEMES = ("sequential", "splitfed_v1", "splitfed_v2")
SAMPLES = "__samples__"  # the tensor of a weights message that says how many samples the half trained on


def _generator(seed: int, round_: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + round_ * 7919 + salt)


def participants(seed: int, round_: int, num: int, fraction: float) -> list[int]:
    """The clients taking part in round ``round_``: ``max(1, round(fraction * num))`` of them, drawn
    (seeded), in increasing order."""
    k = min(num, max(1, round(fraction * num)))
    if k == num:
        return list(range(num))
    return sorted(torch.randperm(num, generator=_generator(seed, round_, 1)).tolist()[:k])


def step_order(seed: int, round_: int, steps: dict[int, int], scheme: str) -> list[int]:
    """Which client's training message the server applies at each position of the round.

    ``steps``: client -> its training steps this round. ``sequential``: each client's steps in one
    run, the clients in a seeded order; the SplitFed schemes: the messages interleaved in a seeded
    random order (in ``splitfed_v1`` each client has its own server copy, so the order changes
    nothing but the log; it is drawn all the same)."""
    g = _generator(seed, round_, 2)
    ids = sorted(steps)
    if scheme == "sequential":
        return [c for i in torch.randperm(len(ids), generator=g).tolist() for c in [ids[i]] * steps[ids[i]]]
    pool = [c for c in ids for _ in range(steps[c])]
    return [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]


def local_steps(configured: int | None, samples: int, batch_size: int) -> int:
    """A client's steps per round: ``clients.local_steps``, or one pass over its own samples."""
    return configured if configured is not None else math.ceil(samples / batch_size)


def half_state(client) -> dict[str, torch.Tensor]:
    """What a client hands on: its blocks and the method's learned client side (e.g. BottleNet's encoder)."""
    state = {f"model.{k}": v for k, v in client.model.state_dict().items()}
    state.update({f"compressor.{k}": v for k, v in client.compressor.client_modules.state_dict().items()})
    return state


def load_half_state(client, state: dict[str, torch.Tensor]) -> None:
    client.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    client.compressor.client_modules.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("compressor.")})


def weights_schema(template: dict[str, torch.Tensor]) -> Schema:
    """A client half exactly as the server's own copy is: the same names, dtypes and shapes, plus the
    samples it trained on (a weights message up)."""
    specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in template.items()}
    return Schema({**specs, SAMPLES: TensorSpec(torch.int64, (), low=0, high=1 << 40)})


class Federation:
    """The server's side of sharing the client half: the current half and its version.

    ``sequential``: an upload replaces the current half (the hand-off to the next client).
    SplitFed: the uploads of a round are averaged (FedAvg, weighted by their samples) once every
    client of the round has sent its half; ``average`` does it.
    """

    def __init__(self, scheme: str, template: dict[str, torch.Tensor]):
        self.scheme = scheme
        self.current = {k: v.detach().clone() for k, v in template.items()}
        self.version = 0  # how many times the current half changed
        self.schema = weights_schema(template)
        self.pending: dict[int, tuple[dict[str, torch.Tensor], int]] = {}  # client -> (half, samples), this round

    def upload(self, client: int, tensors: dict[str, torch.Tensor]) -> None:
        samples = int(tensors[SAMPLES])
        half = {k: v for k, v in tensors.items() if k != SAMPLES}
        if self.scheme == "sequential":
            self.current, self.version = half, self.version + 1
        else:
            self.pending[client] = (half, samples)

    def average(self) -> list[float]:
        """FedAvg of this round's uploads into the current half; returns the weights used, by client."""
        if not self.pending:
            return []
        ids = sorted(self.pending)
        weights = [float(self.pending[c][1]) for c in ids]
        if sum(weights) == 0:
            weights = [1.0] * len(ids)
        self.current = fedavg([self.pending[c][0] for c in ids], weights)
        self.version += 1
        self.pending.clear()
        return weights

    def state_dict(self) -> dict:
        return {"current": self.current, "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.current, self.version = state["current"], state["version"]
        self.pending.clear()
