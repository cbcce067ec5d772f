"""Several clients on one server: the server's side of sharing the client halves, and the referee
that applies the clients' messages in the order the round's plan gives.

Client halves travel as ``weights`` messages, counted like every other. What happens to them, and
who talks when, is the scheme's (:mod:`splitvit.train.schemes`); :class:`Federation` holds the current
client half (the last one handed on, or the last average) and its version. :class:`Coordinator`
plays a round's :class:`~splitvit.train.schemes.RoundPlan` on the server. The caps end a run at the
end of a round, or, for a scheme that cuts rounds, at the step that reaches them (:func:`caps_reached`).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from ..wire import Schema, TensorSpec
from .fedavg import fedavg
from .schemes import RoundPlan, Scheme

SAMPLES = "__samples__"  # the tensor of a weights message that says how many samples the half trained on


def half_state(client) -> dict[str, torch.Tensor]:
    """What a client hands on: its blocks and the method's learned client side (e.g. BottleNet's encoder)."""
    state = {f"model.{k}": v for k, v in client.model.state_dict().items()}
    state.update({f"compressor.{k}": v for k, v in client.codec.modules.state_dict().items()})
    return state


def load_half_state(client, state: dict[str, torch.Tensor]) -> None:
    """Load a client half's state into ``client``: its weights and its method side's learned parts."""
    client.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    client.codec.modules.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("compressor.")})


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


def spent(cfg, steps: int, samples: int, sent: int, rounds: int, n_train: int, budget: float | None) -> float:
    """How far a run is, in [0, 1]: the largest share spent of any of the caps :func:`caps_reached` checks
    (the one that will end the run)."""
    shares = [samples / (cfg.train.epochs * n_train) if n_train else 0.0]
    if cfg.train.max_steps is not None:
        shares.append(steps / cfg.train.max_steps)
    if budget:
        shares.append(sent / budget)
    if cfg.clients.rounds is not None:
        shares.append(rounds / cfg.clients.rounds)
    return min(max(shares), 1.0)


class Federation:
    """The server's side of sharing the client half: the current half and its version. What an
    upload does, and what a round's end does, is the scheme's (:mod:`splitvit.train.schemes`). ``mean``
    averages copies of one model's state: splitvit's FedAvg, or a Flower strategy's (``clients.strategy``,
    :func:`splitvit.train.strategy.averaging`)."""

    def __init__(self, scheme: Scheme, template: dict[str, torch.Tensor], mean=fedavg):
        self.scheme = scheme
        self.current = {k: v.detach().clone() for k, v in template.items()}
        self.version = 0  # how many times the current half changed
        self.schema = weights_schema(template)
        self.pending: dict[int, tuple[dict[str, torch.Tensor], int]] = {}  # client -> (half, samples), this round
        self.stopped = False  # the run is over: replies at a round's end say stop
        self.mean = mean

    def upload(self, client: int, tensors: dict[str, torch.Tensor]) -> None:
        """A client half arrives: the scheme decides what it does (hand it on, or keep it for the average)."""
        samples = int(tensors[SAMPLES])
        self.scheme.upload(self, client, {k: v for k, v in tensors.items() if k != SAMPLES}, samples)

    def replace(self, half: dict[str, torch.Tensor]) -> None:
        """``half`` is the current half now (a hand-on)."""
        self.current, self.version = half, self.version + 1

    def average(self) -> list[float]:
        """FedAvg of this round's uploads into the current half; returns the weights used, by client."""
        if not self.pending:
            return []
        ids = sorted(self.pending)
        weights = [float(self.pending[c][1]) for c in ids]
        if sum(weights) == 0:
            weights = [1.0] * len(ids)
        self.current = self.mean([self.pending[c][0] for c in ids], weights)
        self.version += 1
        self.pending.clear()
        return weights

    def state_dict(self) -> dict:
        """The current client half and the round's uploads."""
        return {"current": self.current, "version": self.version, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.current, self.version, self.stopped = state["current"], state["version"], state.get("stopped", False)
        self.pending.clear()


class Dropped(ValueError):
    """The client was dropped from the round in progress; it may come back for the next one."""


class Unresumable(ValueError):
    """The run cannot go on exactly from what the server and its clients saved: every client is told why."""


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
        self.failure: str | None = None  # why the run cannot go on (a restart the saved states do not agree on)

    def register(self, client: int, samples: int) -> None:
        """Client ``client`` said hello with ``samples`` training samples."""
        with self.cond:
            if self.samples.get(client, samples) != samples:
                raise ValueError(f"client {client} said it holds {samples} samples, before {self.samples[client]}")
            self.samples[client] = samples
            self.heard[client] = time.monotonic()
            if self.plan is None and len(self.samples) == self.num:
                self._start(self.first_round)
            self.cond.notify_all()

    def restart(self, round_: int, back: int | None = None) -> None:
        """Go on from the start of round ``round_`` (a resumed run); client ``back``, if dropped, is not any more."""
        with self.cond:
            self.absent.discard(back)
            self.dropped.discard(back)
            self.stopped = self.finished = False
            self._start(round_)
            self.cond.notify_all()

    def rejoin(self, client: int, caught_up: bool = False) -> int:
        """A client that comes back (resumed): it is dropped from the round in progress, if it was in it,
        and takes part again from the next; returns that round. ``caught_up``: the server has applied every
        training step the client's checkpoint holds and none since; if none of the client's events of the
        round in progress has happened either, it simply reconnected between its rounds (a client process
        per round, as a Flower ClientApp is), and it takes part in this round."""
        with self.cond:
            if self.plan is None:  # the run has not started (or its server has just resumed)
                return self.first_round
            if caught_up and client not in self.dropped:
                planned = sum(e[0] == client for st in self.plan.stages for e in st)
                pending = sum(e[0] == client for e in self.left) + sum(
                    e[0] == client for st in self.stages[self.stage + 1:] for e in st)
                if planned == pending:
                    return self.plan.round
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
        if set(self.plan.participants) - self.absent:  # (a round of absent clients alone waits for them)
            for c in sorted(self.absent):  # not back yet: not waited for again
                self._drop(c, "it has not come back")

    def wait(self, client: int, what: str) -> bool:
        """Block until ``(client, what)`` is due; False when the run is over and it never will be.
        :class:`Dropped` when the client was dropped from the round in progress."""
        with self.cond:
            self.heard[client] = time.monotonic()
            while True:
                if self.failure is not None:
                    raise Unresumable(self.failure)
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

    def fail(self, reason: str) -> None:
        """The run cannot go on: every client waiting for its turn, and every one that comes, is told ``reason``."""
        with self.cond:
            self.failure = reason
            self.cond.notify_all()

    def cut(self, scheme: Scheme) -> None:
        """A cap was reached at the training event now being applied: the round ends there (see
        :meth:`~splitvit.train.schemes.Scheme.cut`), less the events of clients already dropped."""
        with self.cond:
            self.plan = scheme.cut(self.plan, self.stage)
            self.stages = [[e for e in stage if e[0] not in self.dropped] for stage in self.plan.stages]
            self.cond.notify_all()

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
        if self.num == 1:  # a client alone is never dropped: no one else could finish its round; it comes back
            return
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
