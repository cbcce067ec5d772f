"""The channel as a mod on the exchange path, and what a receiver needs to take a damaged message.

:class:`Channel` sits innermost on a client's exchange path (:mod:`splitvit.link.exchange`): it sees
each serialised request on its way to the link and each reply on its way back, and damages the
tensor data of those the spec hits. The message header and the tensors a method tags as protected
(labels, scales, sizes: see ``Method.roles``) ride a protected control channel, as real systems
protect headers with strong coding, and arrive intact. Both directions are played in the client's
process from one seeded generator, so a run gives the same noise in process and over gRPC, and the
generator's state is saved with the client's checkpoint (``Progress.channel``).

Packets lost without ARQ reach the receiver as zero bytes, and the message's header says which
elements they held (the ``lost`` field: what a receiver's packet layer knows from sequence numbers).
The receiver then repairs the message with the method's ``repair`` (analog values lost: zeros; digital
ones: the method's erasure handling; a flipped index out of range: dropped or clamped). The counts of
that repair are taken here, on a copy, so that a run's metrics hold them whichever process repairs.
"""

from __future__ import annotations

import json
from typing import Callable

import torch

from ..link.exchange import Reply, Request
from ..wire import Frame, Header, Schema, TensorSpec, WireError, open_frame
from .physics import analog, bpsk_error_rate, flip_bits, packet_losses, rayleigh_gains
from .spec import ChannelSpec

ANALOG, DIGITAL, PROTECTED = "analog", "digital", "protected"
ROLES = (ANALOG, DIGITAL, PROTECTED)
STATS = ("messages", "snr_messages", "snr_db_sum", "signal", "noise", "bits", "bit_errors", "packets",
         "packets_lost", "bytes_retransmitted", "erased", "dropped", "clamped")


class Channel:
    """``mod(request, call_next)``: the channel ``spec`` on the messages it hits, both directions.

    ``role(name)`` is the method's tag of a tensor (:data:`ANALOG`, :data:`DIGITAL` or :data:`PROTECTED`),
    ``repair(message, erased)`` its receiver-side repair (used here only to count what it does), and
    ``state`` the client's entry of the run's ``Progress.channel``, which holds the
    counters and the generator's state.
    """

    def __init__(self, spec: ChannelSpec, role: Callable[[str], str], repair: Callable, state: dict, seed: int):
        self.spec, self.role, self.repair, self.state = spec, role, repair, state
        self.generator = torch.Generator().manual_seed(seed)
        if state.get("rng") is not None:  # a resumed run goes on where the channel was
            self.generator.set_state(state["rng"])

    def __call__(self, request: Request, call_next) -> Reply:
        kind = request.header.kind
        up, down = self.spec.hits(kind, "up"), self.spec.hits(kind, "down")
        if not (up or down):
            return call_next(request)
        resent_up = 0
        if up:
            payload, resent_up = self.transmit(request.payload, "up")
            request = Request(request.header, payload)
        reply = call_next(request)
        reply.resent_up += resent_up
        if down:
            reply.sent_down = len(reply.payload)
            reply.payload, resent = self.transmit(reply.payload, "down")
            reply.resent_down += resent
        self.state["rng"] = self.generator.get_state()
        return reply

    def transmit(self, payload: bytes, direction: str) -> tuple[bytes, int]:
        """``payload`` as the receiver gets it, and the bytes resent by ARQ."""
        spec, g = self.spec, self.generator
        frame = open_frame(payload)
        stats = self.state.setdefault(direction, dict.fromkeys(STATS, 0))
        stats["messages"] += 1
        entries = sorted((name for name in frame.entries if self.role(name) != PROTECTED),
                         key=lambda name: frame.entries[name]["data_offsets"][0])
        snr_db = spec.snr_db[0]
        if spec.snr_db[1] > spec.snr_db[0]:
            snr_db += (spec.snr_db[1] - spec.snr_db[0]) * torch.rand((), generator=g).item()
        signal = noise = 0.0
        touched = False
        for name in entries:
            t = frame.view(name)
            if t.numel() == 0:
                continue
            rows = t.reshape(t.shape[0] if t.dim() > 1 else 1, -1)
            role = self.role(name)
            if spec.kind in ("awgn", "rayleigh"):
                gains = rayleigh_gains(rows.shape[0], g) if spec.kind == "rayleigh" else None
                if role == ANALOG:
                    y, s, z = analog(t if t.dim() > 1 else t.view(1, -1), snr_db, spec.power, g, gains, spec.csi == "perfect")
                    signal, noise = signal + s, noise + z
                    t.copy_(_saturate(y, t.dtype).view_as(t))
                else:  # digital symbols as uncoded BPSK at the same SNR
                    touched |= self._flip(rows, bpsk_error_rate(snr_db, gains), stats)
            elif spec.kind == "bit_errors" and role == DIGITAL:
                touched |= self._flip(rows, spec.ber, stats)
        if noise > 0:
            stats["snr_messages"] += 1
            stats["snr_db_sum"] += 10 * torch.log10(torch.tensor(signal / noise, dtype=torch.float64)).item()
            stats["signal"], stats["noise"] = stats["signal"] + signal, stats["noise"] + noise
        resent, lost = 0, {}
        if spec.kind == "packet_loss":
            lost, resent = self._packets(frame, entries, stats)
            touched |= bool(lost)
        if lost:
            frame.meta["lost"] = json.dumps(lost, separators=(",", ":"))
        out = frame.to_bytes()
        if touched:
            self._count_repairs(out, stats)
        return out, resent

    def _flip(self, rows: torch.Tensor, p, stats: dict) -> bool:
        as_bytes = rows.contiguous().view(torch.uint8).view(rows.shape[0], -1)
        flipped, errors = flip_bits(as_bytes, p, self.generator)
        rows.view(torch.uint8).view(rows.shape[0], -1).copy_(flipped)
        stats["bits"] += as_bytes.numel() * 8
        stats["bit_errors"] += errors
        return True

    def _packets(self, frame: Frame, entries: list[str], stats: dict) -> tuple[dict, int]:
        """The unprotected tensors' bytes, in message order, as one stream of packets."""
        total = sum(frame.entries[n]["data_offsets"][1] - frame.entries[n]["data_offsets"][0] for n in entries)
        spans, lost_tx, resent = packet_losses(total, self.spec.packet_bytes, self.spec.loss, self.spec.arq, self.generator)
        stats["packets"] += -(-total // self.spec.packet_bytes) + lost_tx * self.spec.arq
        stats["packets_lost"] += lost_tx
        stats["bytes_retransmitted"] += resent
        lost: dict[str, list[list[int]]] = {}
        start = 0  # where each tensor begins in the stream
        for name in entries:
            a, b = frame.entries[name]["data_offsets"]
            size = frame.element_size(name)
            for s, t in spans:
                lo, hi = max(s, start), min(t, start + b - a)
                if lo < hi:
                    frame.data[a + lo - start: a + hi - start] = bytes(hi - lo)  # what arrived: nothing
                    lost.setdefault(name, []).append([(lo - start) // size, -(-(hi - start) // size)])
            start += b - a
        return lost, resent

    def _count_repairs(self, payload: bytes, stats: dict) -> None:
        frame = open_frame(payload)
        tensors = {name: frame.view(name).clone() for name in frame.entries}
        header = Header.from_meta(frame.meta)
        _, counts = self.repair(tensors, erasures(header, tensors))
        for k, v in counts.items():
            stats[k] += v


def _saturate(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``y`` in ``dtype``, clamped to its finite range (a deep fade divided out can overflow float16)."""
    if dtype == torch.float32:
        return y
    big = torch.finfo(dtype).max
    return y.clamp(-big, big).to(dtype)


def idle(spec: ChannelSpec, roles: dict[str, str], method: str) -> str | None:
    """Why ``spec`` would change nothing that a method whose tensors have these ``roles`` sends, or None."""
    acts_on = {"awgn": ANALOG, "rayleigh": ANALOG, "bit_errors": DIGITAL}.get(spec.kind)
    if acts_on is None or acts_on in roles.values():
        return None
    other = "channel=awgn or rayleigh for noise on floats" if acts_on == DIGITAL else "channel=bit_errors"
    return (f"channel={spec.kind} acts on {acts_on} payloads, and method {method} sends none: nothing will "
            f"change. Use {other}")


MAX_LOST_SPANS = 1 << 18  # lost packets of one message: a 19 MB message in 128-byte packets at 20 % loss has 30,000


def erasures(header: Header, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The elements a message lost without ARQ, as a boolean mask per tensor (flat element spans in the
    header's ``lost`` field); :class:`~splitvit.wire.WireError` when that field is malformed."""
    if header.lost is None:
        return {}
    try:
        spans = json.loads(header.lost)
    except (ValueError, RecursionError):
        raise WireError("the message's lost field is not valid JSON") from None
    if not isinstance(spans, dict):
        raise WireError("the message's lost field must map tensor names to element spans")
    if sum(len(p) for p in spans.values() if isinstance(p, list)) > MAX_LOST_SPANS:
        raise WireError(f"the message's lost field has more than {MAX_LOST_SPANS} spans")
    masks = {}
    for name, pairs in spans.items():
        if name not in tensors:
            raise WireError(f"the message's lost field names {name[:40]!r}, which the message does not hold")
        n = tensors[name].numel()
        if not isinstance(pairs, list):
            raise WireError(f"the lost spans of {name!r} must be a list of [start, end] pairs")
        bad = next((p for p in pairs if not (isinstance(p, list) and len(p) == 2 and type(p[0]) is int and type(p[1]) is int)), None)
        span = torch.tensor(pairs, dtype=torch.int64).view(-1, 2) if bad is None else None
        if span is None or not bool(((0 <= span[:, 0]) & (span[:, 0] < span[:, 1]) & (span[:, 1] <= n)).all()):
            shown = bad if bad is not None else next(p for p in pairs if not 0 <= p[0] < p[1] <= n)
            raise WireError(f"lost span {str(shown)[:40]} of {name!r} is not a [start, end) within its {n} elements")
        # every span at once: +1 where one starts, -1 where it ends; an element is lost where the sum is positive
        edges = torch.zeros(n + 1, dtype=torch.int64)
        edges.index_add_(0, span[:, 0], torch.ones(len(span), dtype=torch.int64))
        edges.index_add_(0, span[:, 1], torch.full((len(span),), -1, dtype=torch.int64))
        masks[name] = (edges.cumsum(0)[:n] > 0).view(tensors[name].shape)
    return masks


def lenient(schema: Schema, role: Callable[[str], str]) -> Schema:
    """``schema`` without value bounds on digital tensors: after bit errors any value may arrive, and
    the method's ``repair`` (not a refusal) deals with it. Shapes and dtypes stay checked."""
    return Schema({name: TensorSpec(s.dtype, s.shape) if role(name) == DIGITAL else s for name, s in schema.tensors.items()},
                  dims=schema.dims)


def channel_metrics(stats: dict) -> dict:
    """The run's channel counters (``Progress.channel``) as flat metrics: per direction the SNR measured on
    what was applied (the mean over messages of ``10 log10(sum signal^2 / sum noise^2)``), the bit error
    rate measured, and totals of bit errors, packets, retransmissions and repairs."""
    out: dict = {}
    totals = dict.fromkeys(("bit_errors", "packets", "packets_lost", "erased", "dropped", "clamped"), 0)
    for d in ("up", "down"):
        s = stats.get(d) or dict.fromkeys(STATS, 0)
        out[f"channel_snr_db_{d}"] = round(s["snr_db_sum"] / s["snr_messages"], 4) if s["snr_messages"] else None
        out[f"channel_ber_{d}"] = s["bit_errors"] / s["bits"] if s["bits"] else None
        out[f"bytes_retransmitted_{d}"] = s["bytes_retransmitted"]
        for k in totals:
            totals[k] += s[k]
    out.update({f"channel_{k}": v for k, v in totals.items()})
    return out


def combined(states: dict[str, dict]) -> dict:
    """The counters of several clients' channels (``Progress.channel``: client -> state) as one."""
    out: dict = {}
    for state in states.values():
        for d in ("up", "down"):
            if d in state:
                total = out.setdefault(d, dict.fromkeys(STATS, 0))
                for k in STATS:
                    total[k] += state[d][k]
    return out
