"""SplitFed (Thapa et al. 2020), V1: the clients of a round train in parallel, each against its own
copy of the server half; at the round's end the client halves and the server-half copies are
averaged by FedAvg, weighted by the samples each trained on this round. (The server takes the
messages in a seeded order too; with a copy each, the order changes nothing but the log.)"""

from __future__ import annotations

from .base import register_scheme
from .splitfed_v2 import SplitFedV2


@register_scheme
class SplitFedV1(SplitFedV2):
    """SplitFed V1: all clients train in a round, their messages applied in a seeded order, each with its
    own server copy; FedAvg of the client halves and of the server copies at the round's end."""
    name = "splitfed_v1"
    eval_model = "the averaged client half with the averaged server-half copies"

    def server_copies(self, num: int) -> int:
        return num

    def close(self, federation, halves, plan):
        ids = sorted(federation.pending)
        weights = federation.average()
        if not ids:
            return
        for pick in (lambda h: h.model, lambda h: h.codec.modules):
            avg = federation.mean([pick(halves[c]).state_dict() for c in ids], weights)
            for h in halves:
                pick(h).load_state_dict(avg)
