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

A round is a script, :class:`RoundPlan`: who fetches the current half, whose training messages
come in which order, who uploads, who evaluates. It is a pure function of the seed, the round and
the clients' sizes (:func:`participants`, :func:`step_order`), so a simulation, which plays the script
in order, and a gRPC server, whose :class:`Coordinator` holds each message until the script says it
is due, apply the same messages in the same order. The server's side of the sharing is
:class:`Federation`: the current client half (the last one handed on, or the last average) and its
version. The caps end a run only at the end of a round (:func:`caps_reached`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import torch

from ..wire import Schema, TensorSpec
from .fedavg import fedavg

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


@dataclass
class RoundPlan:
    """A round as a script: ``stages`` run one after another; the events of a stage, ``(client, what)``
    with ``what`` one of ``fetch``, ``train``, ``upload``, ``done``, may come in any order. The round
    closes (SplitFed: the average; the run's caps checked) when stage ``closing`` is complete; the
    ``evaluator`` then holds the round's half, evaluates it when due, and says ``done``."""

    round: int
    participants: list[int]
    steps: dict[int, int]
    stages: list[list[tuple[int, str]]]
    closing: int
    evaluator: int

    @classmethod
    def make(cls, seed: int, round_: int, sizes: list[int], scheme: str, fraction: float, batch_size: int,
             configured_steps: int | None) -> "RoundPlan":
        ids = participants(seed, round_, len(sizes), fraction)
        steps = {c: local_steps(configured_steps, sizes[c], batch_size) for c in ids}
        order = step_order(seed, round_, steps, scheme)
        if scheme == "sequential":  # a turn: fetch the half, train, hand it on
            stages, turns = [], [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
            for c in turns:
                stages += [[(c, "fetch")]] + [[(c, "train")]] * steps[c] + [[(c, "upload")]]
            evaluator = turns[-1]
        else:  # all fetch, the messages in the seeded order, all upload, the average back to all
            stages = [[(c, "fetch") for c in ids]] + [[(c, "train")] for c in order] + [[(c, "upload") for c in ids]]
            stages.append([(c, "fetch") for c in ids])
            evaluator = ids[0]
        closing = len(stages) - (1 if scheme == "sequential" else 2)
        return cls(round_, ids, steps, stages + [[(evaluator, "done")]], closing, evaluator)


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


def half_schema(template: dict[str, torch.Tensor]) -> Schema:
    """A client half exactly as the server's own copy is: the same names, dtypes and shapes."""
    return Schema({k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in template.items()})


def weights_schema(template: dict[str, torch.Tensor]) -> Schema:
    """A client half on its way up: the half, and the samples it trained on."""
    return Schema({**half_schema(template).tensors, SAMPLES: TensorSpec(torch.int64, (), low=0, high=1 << 40)})


def caps_reached(cfg, steps: int, samples: int, sent: int, rounds: int, n_train: int, budget: float | None) -> str | None:
    """Which cap ends a run of several clients after a round: ``steps``, ``samples`` and ``sent`` (bytes of
    training messages) over all clients; ``rounds`` completed."""
    if cfg.train.max_steps is not None and steps >= cfg.train.max_steps:
        return "max_steps"
    if budget is not None and sent >= budget:
        return "budget"
    if samples >= cfg.train.epochs * n_train:
        return "epochs"
    if cfg.clients.rounds is not None and rounds >= cfg.clients.rounds:
        return "rounds"
    return None


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
        self.stopped = False  # the run is over: replies at a round's end say stop

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
        return {"current": self.current, "version": self.version, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.current, self.version, self.stopped = state["current"], state["version"], state.get("stopped", False)
        self.pending.clear()


def close_round(federation: "Federation", halves: list, scheme: str, plan: RoundPlan) -> None:
    """The server's end of a round. SplitFed: the halves the round's clients uploaded are averaged
    (FedAvg by their samples); SplitFed-V1 also averages the round's server-half copies, on the server
    (``halves[c]`` is client ``c``'s copy), into every copy. Sequential: nothing (each upload was a hand-on)."""
    if scheme == "sequential":
        return
    ids = sorted(federation.pending)
    weights = federation.average()
    if scheme == "splitfed_v1" and ids:
        for part in ("model", "compressor"):
            pick = (lambda h: h.model) if part == "model" else (lambda h: h.compressor.server_modules)  # noqa: E731
            avg = fedavg([pick(halves[c]).state_dict() for c in ids], weights)
            for h in halves:
                pick(h).load_state_dict(avg)


class Dropped(ValueError):
    """The client was dropped from the round in progress; it may come back for the next one."""


class Coordinator:
    """The server's referee of a round over gRPC: a message waits until its event is due in the
    round's :class:`RoundPlan`, so clients that run in parallel are applied in the seed's order, as in
    the simulation. ``close(plan)`` is called when the round's closing stage completes (average the
    halves, check the caps); it returns whether the run is over.

    Client processes send when they are ready; the referee blocks a handler thread per waiting client,
    so the server needs a worker per client and a few more (see ``LinkServer(workers=...)``).

    A client that is gone (its call failed, or it was due and silent for ``drop_after_s``) is dropped
    from the round: its events are struck from the plan, the others finish the round without it (the
    average is of the halves that came), and it may come back for a later round (:meth:`rejoin`).
    """

    def __init__(self, num: int, plan_round, close, drop_after_s: float = 120.0, log=None):
        self.num = num
        self.plan_round = plan_round  # round -> RoundPlan, once every client has said hello
        self.close = close
        self.drop_after_s = drop_after_s
        self.log = log
        self.cond = threading.Condition()
        self.samples: dict[int, int] = {}
        self.plan: RoundPlan | None = None
        self.stages: list[list[tuple[int, str]]] = []  # the plan's stages, less the events of dropped clients
        self.stage = 0
        self.left: list[tuple[int, str]] = []
        self.dropped: set[int] = set()  # from the round in progress
        self.absent: set[int] = set()  # dropped and not back: the rounds go on without them
        self.heard: dict[int, float] = {}  # client -> when it last sent a message
        self.stopped = False  # the last round closed with the run over
        self.finished = False  # and its last event is done
        self.first_round = 0  # a resumed server: the round after the last it saved

    def register(self, client: int, samples: int) -> None:
        with self.cond:
            if self.samples.get(client, samples) != samples:
                raise ValueError(f"client {client} said it holds {samples} samples, before {self.samples[client]}")
            self.samples[client] = samples
            self.heard[client] = time.monotonic()
            if self.plan is None and len(self.samples) == self.num:
                self._start(self.first_round)
            self.cond.notify_all()

    def restart(self, round_: int) -> None:
        """Go on from the start of round ``round_`` (a resumed run)."""
        with self.cond:
            self.stopped = self.finished = False
            self._start(round_)
            self.cond.notify_all()

    def rejoin(self, client: int) -> int:
        """A client that comes back (resumed): it is dropped from the round in progress, if it was in it,
        and takes part again from the next; returns that round."""
        with self.cond:
            if self.plan is None:  # the run has not started (or its server has just resumed)
                return self.first_round
            self._drop(client, "it came back resumed; it takes part from the next round")
            self.dropped.discard(client)  # its messages now are for the next round: they wait for it
            self.absent.discard(client)
            self.cond.notify_all()
            return self.plan.round + 1

    def _start(self, round_: int) -> None:
        self.plan, self.stage = self.plan_round(round_, [self.samples[c] for c in range(self.num)]), 0
        self.stages = [list(stage) for stage in self.plan.stages]
        self.left = list(self.stages[0])
        self.dropped = set()
        for c in sorted(self.absent):  # not back yet: not waited for again
            self._drop(c, "it has not come back")

    def wait(self, client: int, what: str) -> bool:
        """Block until ``(client, what)`` is due; False when the run is over and it never will be.
        :class:`Dropped` when the client was dropped from the round in progress."""
        with self.cond:
            self.heard[client] = time.monotonic()
            while True:
                if client in self.dropped and self.plan is not None:
                    raise Dropped(f"client {client} was dropped from round {self.plan.round + 1}; resume it "
                                  "(train.resume=true) to take part from the next round")
                if self.finished or (client, what) in self.left:
                    return not self.finished or (client, what) in self.left
                self.cond.wait(timeout=min(1.0, self.drop_after_s))
                now = time.monotonic()
                self.heard[client] = now  # its call is open and waiting for its turn: it is not silent
                for c in {c for c, _ in self.left}:  # those the round waits for, silent too long: gone
                    if c != client and now - self.heard.get(c, now) > self.drop_after_s:
                        self._drop(c, f"no message for {self.drop_after_s:.0f} s while the round waited for it")

    def touch(self, client: int) -> None:
        """Any message of the client: it is alive (an evaluator sends eval messages, not events)."""
        self.heard[client] = time.monotonic()

    def lost(self, client: int) -> None:
        """A call of the client failed (it died, or its link broke): drop it from the round."""
        with self.cond:
            if self.plan is not None and not self.finished and any(c == client for st in self.stages[self.stage:] for c, _ in st):
                self._drop(client, "its call failed")
                self.cond.notify_all()

    def _drop(self, client: int, why: str) -> None:
        if client in self.dropped or not any(c == client for st in self.stages[self.stage:] for c, _ in st):
            return
        self.dropped.add(client)
        if self.log is not None:  # said loudly once; each later round without it, quietly
            level = logging.INFO if client in self.absent else logging.WARNING
            self.log.log(level, "client %d dropped from round %d: %s; the others finish it", client, self.plan.round + 1, why)
        self.absent.add(client)
        for st in self.stages[self.stage + 1:]:
            st[:] = [e for e in st if e[0] != client]
        self.left = [e for e in self.left if e[0] != client]
        self._advance()

    def complete(self, client: int, what: str) -> None:
        """``(client, what)`` was applied: move the round on; close it and start the next as they come."""
        with self.cond:
            self.heard[client] = time.monotonic()
            if (client, what) not in self.left:  # dropped while its event was being applied: the round went on
                return
            self.left.remove((client, what))
            self._advance()
            self.cond.notify_all()

    def _advance(self) -> None:
        while not self.left:
            plan = self.plan
            if self.stage == plan.closing:
                self.stopped = self.close(plan)
            self.stage += 1
            if self.stage < len(self.stages):
                self.left = list(self.stages[self.stage])
            elif self.stopped:
                self.finished = True
                break
            else:
                self._start(plan.round + 1)
