"""What a training step goes through besides its arithmetic, as mods, the way Flower's
``ClientApp(mods=[...])`` takes them: ``mod(step, call_next)`` runs the rest of the chain (and the
step) with ``call_next(step)`` and returns what it returned. They are built once from the config and
passed in as a list, to a client (:class:`~.client.SplitClient`) and to the server's half
(:class:`~.server.ServerHalf`); what every *message* goes through (bytes, link time, channel) is on the
exchange path instead (:mod:`splitvit.link.exchange`). See ``docs/architecture.md``, "Mods".

- :class:`ProfileStep`: ``train.profile``, the step's phases, time and FLOPs (:mod:`splitvit.profiling`);
- :class:`~.inspect.Inspector`: ``train.inspect``, what the method does at the cut;
- :class:`~.alast.ALaST`: ``finetune=alast``, which blocks train on how many tokens, step by step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..profiling import Profiler


@dataclass
class Step:
    """One training step as its mods see it. Before the step: its ``index`` and the hooks a mod wants
    called with the gradient at the cut (``dL/dh``, on the client), and the seconds of phases spent before
    the message was known to be a training step (``before``: the server's parsing). After it: what the
    client sent and the attention it selected by (``message``, ``cls_attn``) and the gradient that came
    back (``grad``)."""

    index: int
    cut_grad_hooks: list[Callable[[torch.Tensor], None]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)
    message: dict[str, torch.Tensor] | None = None
    cls_attn: torch.Tensor | None = None
    grad: torch.Tensor | None = None


StepMod = Callable[[Step, Callable[[Step], Any]], Any]


def through(mods: list[StepMod], step: Step, run: Callable[[Step], Any]) -> Any:
    """``run(step)`` through ``mods``, the first outermost."""

    def call(i: int, s: Step) -> Any:
        return run(s) if i == len(mods) else mods[i](s, lambda nxt: call(i + 1, nxt))

    return call(0, step)


def find(mods: list[StepMod], kind: type) -> Any:
    """The mod of type ``kind`` in ``mods``, or None."""
    return next((m for m in mods if isinstance(m, kind)), None)


class ProfileStep:
    """``train.profile``: the step under ``profiler``, which counts FLOPs instead of time on every
    ``flop_every``-th step."""

    def __init__(self, profiler: Profiler, flop_every: int):
        self.profiler, self.flop_every = profiler, flop_every

    def __call__(self, step: Step, call_next):
        with self.profiler.step(count_flops=step.index % self.flop_every == 0):
            for phase, seconds in step.before.items():
                self.profiler.add(phase, seconds)
                if "/" not in phase:  # a nested phase is part of its parent's time already
                    self.profiler.add("total", seconds)
            return call_next(step)
