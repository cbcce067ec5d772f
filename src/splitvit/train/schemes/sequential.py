"""Vanilla split learning (Gupta & Raskar 2018): the clients of a round take turns on the one server
half, in a seeded order; each trains its local steps, then hands its client half on through the
server (``weights`` up, then the next client's ``control`` fetch and ``weights`` down)."""

from __future__ import annotations

import torch

from .base import RoundPlan, Scheme, register_scheme


@register_scheme
class Sequential(Scheme):
    """Sequential split learning: clients take turns, each fetching the current client half, training
    its steps and handing the half on; one server half."""
    name = "sequential"
    eval_model = "the current client half (the last one handed on) with the server half"

    def order(self, g, steps):
        ids = sorted(steps)
        return [c for i in torch.randperm(len(ids), generator=g).tolist() for c in [ids[i]] * steps[ids[i]]]

    def script(self, ids, order, steps, hand_off):
        stages, turns = [], [c for i, c in enumerate(order) if i == 0 or order[i - 1] != c]
        for c in turns:  # a turn: fetch the half, train, hand it on
            stages += ([[(c, "fetch")]] if hand_off else []) + [[(c, "train")]] * steps[c] + ([[(c, "upload")]] if hand_off else [])
        return stages, len(stages) - 1, turns[-1]

    def upload(self, federation, client, half, samples):
        federation.replace(half)  # the hand-off: the next client fetches this one

    def close(self, federation, halves, plan):
        pass  # each upload was a hand-on already

    def cuts_at_caps(self, num: int) -> bool:
        return True  # one client trains at a time: the turn in progress can be the round's last

    def upload_says_stop(self) -> bool:
        return True

    def cut(self, plan: RoundPlan, stage: int) -> RoundPlan:
        """The turn in progress is the round's last: its client hands its half on and evaluates it."""
        (c, what), = plan.stages[stage]
        if what != "train":
            raise ValueError(f"a cap cuts a round at a training event, not at {what!r}")
        hand_on = any((c, "upload") in st for st in plan.stages[stage + 1:])
        stages = [list(st) for st in plan.stages[:stage + 1]] + ([[(c, "upload")]] if hand_on else [])
        return self.trained(RoundPlan(plan.round, plan.participants, plan.steps, stages + [[(c, "done")]],
                                      len(stages) - 1, c))
