"""The receiving end of a channel: what a client (for the replies coming down) or a server (for the
messages coming up) does with a message the channel may have damaged. Built once from the config and
held by each side, so neither side's step knows whether a channel is there."""

from __future__ import annotations

import torch

from ..wire import Header, Schema
from .mod import erasures, lenient
from .spec import ChannelSpec


class Receiver:
    """For messages arriving in ``direction`` (``up`` at a server, ``down`` at a client) over the channel
    ``spec``: the schema they are checked against (digital values unbounded where the channel may flip
    their bits: they are repaired, not refused) and their repair by the method (``repair``, with its
    ``role`` of each tensor). On an ideal channel, or a kind of message it does not hit, both are the
    identity."""

    def __init__(self, spec: ChannelSpec | None, direction: str, role, repair):
        self.spec, self.direction, self.role, self.repair_fn = spec or ChannelSpec(), direction, role, repair

    def hits(self, kind: str) -> bool:
        """Whether the messages of an exchange of ``kind`` (the request's: ``train`` or ``eval``) arriving
        here crossed the channel."""
        return self.spec.hits(kind, self.direction)

    def schema(self, kind: str, schema: Schema) -> Schema:
        """``schema`` as a receiver admits it after this channel: digital values a damaging channel may
        push out of range are let in, to be repaired rather than refused."""
        return lenient(schema, self.role) if self.hits(kind) else schema

    def __call__(self, kind: str, header: Header, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (with ``header``, of an exchange of ``kind``) safe to decode: what was erased without
        retransmission, and digital values that decode to nothing valid, repaired (see
        :mod:`splitvit.channel.mod`)."""
        if not self.hits(kind):
            return tensors
        return self.repair_fn(tensors, erasures(header, tensors))[0]
