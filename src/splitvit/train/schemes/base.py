"""What a scheme of several clients is: who talks when in a round, and what the server does with the
client halves. Each scheme is one class in its own file, registered by name (``clients.scheme``);
the architecture page (``docs/architecture.md``, "Schemes") draws a round.

A round is a script, :class:`RoundPlan`: who fetches the current half, whose training messages come
in which order, who uploads, who evaluates. It is a pure function of the seed, the round, the
clients' sizes and the steps already taken, so a simulation, which plays the script in order, and a
gRPC server, whose referee holds each message until the script says it is due, apply the same
messages in the same order.

A single client is a federation of one: nothing is handed on (its half is the current one), and a
round runs up to its next evaluation, so the run is plain split learning, step for step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch

SCHEMES: dict[str, type["Scheme"]] = {}


def register_scheme(cls: type["Scheme"]) -> type["Scheme"]:
    """Class decorator: ``clients.scheme=<cls.name>`` builds ``cls``."""
    if not cls.name or cls.name in SCHEMES:
        raise ValueError(f"a scheme needs a unique name; {cls.name!r} is taken or empty")
    SCHEMES[cls.name] = cls
    return cls


def build_scheme(name: str) -> "Scheme":
    """The scheme registered as ``name`` (``clients.scheme``), or ``ValueError`` naming those there are."""
    if name not in SCHEMES:
        raise ValueError(f"clients.scheme={name!r} is not allowed; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]()


def _generator(seed: int, round_: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + round_ * 7919 + salt)


def participants(seed: int, round_: int, num: int, fraction: float) -> list[int]:
    """The clients taking part in round ``round_``: ``max(1, round(fraction * num))`` of them, drawn
    (seeded), in increasing order."""
    k = min(num, max(1, round(fraction * num)))
    if k == num:
        return list(range(num))
    return sorted(torch.randperm(num, generator=_generator(seed, round_, 1)).tolist()[:k])


def local_steps(configured: int | None, samples: int, batch_size: int, alone: bool = False, steps_done: int = 0,
                eval_every: int | None = None) -> int:
    """A client's steps in a round: ``clients.local_steps``, or one pass over its own samples. A client
    alone (a federation of one) runs up to its next evaluation: the end of its pass, or the next
    multiple of ``train.eval_every``."""
    if configured is not None:
        return configured
    per_pass = math.ceil(samples / batch_size)
    if not alone:
        return per_pass
    every = eval_every or per_pass
    return every - steps_done % every


@dataclass
class RoundPlan:
    """A round as a script: ``stages`` run one after another; the events of a stage, ``(client, what)``
    with ``what`` one of ``fetch``, ``train``, ``upload``, ``done``, may come in any order. The round
    closes (the scheme's :meth:`Scheme.close`, the run's caps checked) when stage ``closing`` is
    complete; the ``evaluator`` then holds the round's half, evaluates it when due, and says ``done``."""

    round: int
    participants: list[int]
    steps: dict[int, int]
    stages: list[list[tuple[int, str]]]
    closing: int
    evaluator: int


class Scheme(ABC):
    """A way for several clients to share one server: see the module docstring."""

    name = ""
    eval_model = ""  # what the round's evaluator measures, in summary.json's words

    def server_copies(self, num: int) -> int:
        """How many copies of the server half the server keeps for ``num`` clients."""
        return 1

    def plan(self, seed: int, round_: int, sizes: list[int], fraction: float, batch_size: int,
             configured_steps: int | None, steps_done: int = 0, eval_every: int | None = None) -> RoundPlan:
        """Round ``round_`` of clients of ``sizes`` samples, ``steps_done`` steps into the run."""
        ids = participants(seed, round_, len(sizes), fraction)
        alone = len(sizes) == 1
        steps = {c: local_steps(configured_steps, sizes[c], batch_size, alone, steps_done, eval_every) for c in ids}
        order = self.order(_generator(seed, round_, 2), steps)
        stages, closing, evaluator = self.script(ids, order, steps, hand_off=not alone)
        return RoundPlan(round_, ids, steps, stages + [[(evaluator, "done")]], closing, evaluator)

    @abstractmethod
    def order(self, g: torch.Generator, steps: dict[int, int]) -> list[int]:
        """Which client's training message the server applies at each position of the round, drawn
        from ``g``; ``steps``: client -> its training steps this round."""

    @abstractmethod
    def script(self, ids: list[int], order: list[int], steps: dict[int, int],
               hand_off: bool) -> tuple[list[list[tuple[int, str]]], int, int]:
        """The round's stages (before the evaluator's ``done``), the closing stage and the evaluator.
        ``hand_off``: whether client halves travel at all (not for a federation of one)."""

    @abstractmethod
    def upload(self, federation, client: int, half: dict[str, torch.Tensor], samples: int) -> None:
        """A client half arrived at the server."""

    @abstractmethod
    def close(self, federation, halves: list, plan: RoundPlan) -> None:
        """The server's end of a round; ``halves[c]`` is client ``c``'s copy of the server half."""

    def cuts_at_caps(self, num: int) -> bool:
        """Whether a cap reached mid-round ends the round at that step (else at the round's end), with
        ``num`` clients: a client alone always can, as plain split learning always has."""
        return num == 1

    def upload_says_stop(self) -> bool:
        """Whether an upload's reply may say the run is over (not when uploads race to close the round)."""
        return False

    def cut(self, plan: RoundPlan, stage: int) -> RoundPlan:
        """The round ended by a cap at ``stage``, a training event (where :meth:`cuts_at_caps`): the
        client of that event evaluates; what it would have trained next is struck. (A federation of one
        hands nothing on, so its plans are a client's training events and its ``done``.)"""
        (c, what), = plan.stages[stage]
        if what != "train" or any(e[1] != "train" for st in plan.stages[:stage + 1] for e in st):
            raise ValueError(f"scheme {self.name!r} cuts only a round of training events alone, not at {what!r}")
        stages = [list(st) for st in plan.stages[:stage + 1]]
        return self.trained(RoundPlan(plan.round, plan.participants, plan.steps, stages + [[(c, "done")]],
                                      len(stages) - 1, c))

    @staticmethod
    def trained(plan: RoundPlan) -> RoundPlan:
        """``plan`` with ``steps`` counted from its training events."""
        steps: dict[int, int] = {}
        for stage in plan.stages:
            for c, what in stage:
                if what == "train":
                    steps[c] = steps.get(c, 0) + 1
        return replace(plan, steps=steps)
