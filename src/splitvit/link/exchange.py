"""The one exchange path every message takes: encode, mods, link, decode.

    reply, header = exchange(Header("train", client=i, step=s), tensors, reply_schema, "grad")

The message is serialised once (:func:`~splitvit.wire.pack`), handed through the mods to the link, and
the reply is checked against its schema and its header (:func:`~splitvit.wire.expect`). What every
message goes through, whatever its kind, is a *mod*: a callable ``mod(request, call_next) -> Reply``
that sees the serialised request on its way out and the reply on its way back, as Flower's client
mods do. Counting bytes and the link-time model are mods (:class:`CountBytes`, :class:`LinkTime`);
a channel (:class:`splitvit.channel.Channel`) or a profiler is one more.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from ..profiling import timed
from ..wire import Header, Schema, WireError, expect, pack, unpack
from .inprocess import Link
from .shaping import LinkModel


@dataclass
class Counts:
    """Bytes of one kind of exchange (a request and its reply), counted from the serialised messages."""

    up: int = 0  # bytes, client -> server
    down: int = 0  # bytes, server -> client
    messages: int = 0  # exchanges
    link_s: float = 0.0  # seconds on the modelled link (link.bandwidth_mbps), both directions
    framing_up: int = 0  # bytes the transport (gRPC) added around the messages
    framing_down: int = 0
    resent_up: int = 0  # bytes a lossy channel's ARQ sent again (included in up / down)
    resent_down: int = 0

    def add(self, other: "Counts") -> "Counts":
        """The sum of two counts, field by field."""
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Counts)))


@dataclass
class Request:
    """A message on its way to the server: its header and its serialised bytes."""
    header: Header  # what the message says it is: kind, client, step
    payload: bytes  # the serialised message, as it crosses the link


@dataclass
class Reply:
    """The server's reply as received, with what the link added: framing bytes, retransmissions and the
    modelled link's seconds."""
    payload: bytes
    framing_up: int = 0  # bytes the transport added around the request and the reply
    framing_down: int = 0
    link_s: float = 0.0  # seconds the exchange takes on the modelled link, set by LinkTime
    sent_down: int | None = None  # the reply's length as the server sent it, when a channel changed what arrived
    resent_up: int = 0  # bytes a channel's ARQ sent again, each way
    resent_down: int = 0

    @property
    def wire_down(self) -> int:
        """Bytes on the link from the server: the reply as sent, plus retransmissions."""
        return (len(self.payload) if self.sent_down is None else self.sent_down) + self.resent_down


Mod = Callable[[Request, Callable[[Request], Reply]], Reply]


class Exchange:
    """A client's path to the server over ``link``, through ``mods`` (outermost first)."""

    def __init__(self, link: Link, mods: Sequence[Mod] = ()):
        self.link = link
        self.mods = list(mods)

    def send(self, request: Request) -> Reply:
        """The serialised request through the mods and the link; the serialised reply."""

        def call(i: int, r: Request) -> Reply:
            if i == len(self.mods):
                payload = self.link.request(r.payload)
                up, down = getattr(self.link, "last_framing", (0, 0))
                return Reply(payload, up, down)
            return self.mods[i](r, lambda nxt: call(i + 1, nxt))

        return call(0, request)

    def __call__(self, header: Header, tensors: dict[str, torch.Tensor], reply_schema: Schema | Callable[[Header], Schema],
                 reply_kind: str | tuple[str, ...]) -> tuple[dict[str, torch.Tensor], Header]:
        """Send ``tensors`` under ``header``; the reply's tensors (checked against ``reply_schema``, which
        may depend on the reply's header) and header, which must be of ``reply_kind`` (or one of them)."""
        with timed("serialize"):
            request = Request(header, pack(header, tensors))
        with timed("wait"):  # the link and everything behind it (in process: the server's step)
            reply = self.send(request)
        with timed("deserialize"):
            tensors, got = unpack(reply.payload, reply_schema)
        kinds = (reply_kind,) if isinstance(reply_kind, str) else reply_kind
        expect(got, got.kind if got.kind in kinds else kinds[0], header.step if got.kind == "grad" else None)
        if got.client != header.client:
            raise WireError(f"a reply for client {got.client} reached client {header.client}")
        return tensors, got

    def close(self) -> None:
        """Close the link."""
        self.link.close()


class CountBytes:
    """Adds each exchange's bytes to the run's ledger (``progress.record``: a
    :class:`~splitvit.train.state.Progress`), under the request's client and kind: the one place bytes
    are counted."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, request: Request, call_next) -> Reply:
        reply = call_next(request)
        self.progress.record(request.header.client, request.header.kind, Counts(
            len(request.payload) + reply.resent_up, reply.wire_down, 1, reply.link_s, reply.framing_up, reply.framing_down,
            reply.resent_up, reply.resent_down))
        return reply


class LinkTime:
    """The seconds each exchange of ``kinds`` would take on a modelled link (``link.bandwidth_mbps``):
    set on the reply for :class:`CountBytes` to add to the run's clock. Evaluation is a measurement,
    not part of training, so by default it is not on the modelled link."""

    def __init__(self, model: LinkModel, kinds: tuple[str, ...] = ("train", "weights")):
        self.model, self.kinds = model, kinds

    def __call__(self, request: Request, call_next) -> Reply:
        reply = call_next(request)
        if request.header.kind in self.kinds:
            reply.link_s += self.model.seconds(len(request.payload) + reply.resent_up, reply.wire_down)
        return reply


def standard_mods(progress, shaping: LinkModel | None, channel: Mod | None = None) -> list[Mod]:
    """What every run's exchanges go through: the byte count, outermost, around the link-time model,
    around the channel (innermost: what it resends is counted and timed by the mods outside it)."""
    return [CountBytes(progress)] + ([LinkTime(shaping)] if shaping is not None else []) + ([channel] if channel else [])
