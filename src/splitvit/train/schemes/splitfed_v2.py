"""SplitFed-V2: the clients of a round train in parallel against the one server half, which takes
their messages in a seeded random order; the client halves are averaged (FedAvg, by the samples each
trained on this round) at the round's end."""

from __future__ import annotations

import torch

from .base import Scheme, register_scheme


@register_scheme
class SplitFedV2(Scheme):
    """SplitFed V2: all clients train in a round, their messages applied in a seeded order to one server
    half; FedAvg of the client halves at the round's end."""
    name = "splitfed_v2"
    eval_model = "the averaged client half with the server half"

    def order(self, g, steps):
        pool = [c for c in sorted(steps) for _ in range(steps[c])]
        return [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]

    def script(self, ids, order, steps, hand_off):
        # all fetch, the messages in the seeded order, all upload; the average goes back to all
        train = [[(c, "train")] for c in order]
        if not hand_off:
            return train, len(train) - 1, ids[0]
        stages = [[(c, "fetch") for c in ids]] + train + [[(c, "upload") for c in ids]] + [[(c, "fetch") for c in ids]]
        return stages, len(stages) - 2, ids[0]

    def upload(self, federation, client, half, samples):
        federation.pending[client] = (half, samples)

    def close(self, federation, halves, plan):
        federation.average()
