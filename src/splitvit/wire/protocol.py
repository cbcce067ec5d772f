"""The messages of a split-learning run, defined once: their kinds and their header.

Every message is one safetensors buffer (:mod:`splitvit.wire.codec`): the tensors, and a header of
strings in its metadata. The header says what the message is and where it belongs:

========  ======================  ===============================================================
kind      direction               header fields besides ``kind`` and ``client``
========  ======================  ===============================================================
train     client -> server        ``step``: the training step it is for (applied in order, once)
grad      server -> client        ``step`` (the same), ``loss`` (the server's, as ``repr(float)``), ``mode``
                                  (below)
eval      client -> server        ``mode``: ``uncompressed``, ``tokens`` or ``compressed``
logits    server -> client        (nothing more)
weights   either way              ``step``: up, the round; down, the version of the half it is
control   either way              ``mode`` (below), ``step``
========  ======================  ===============================================================

With several clients the client halves travel as ``weights`` messages, and ``control`` messages
(no tensors) coordinate the rounds. Their ``mode``:

- ``fetch`` (up, ``step``: the version of the half the client holds): the reply is the current half
  (``weights``) or, when the client's is current, ``control`` ``ack``;
- ``done`` (up, ``step``: the round): the client that evaluates a round has done so;
- ``ack`` (down): received; ``stop`` (down, on any reply at a round's end): the run is over.

A ``grad`` has ``mode`` ``stop`` when its step reached one of the run's caps on the server's count:
the round ends at that step. (Only that reply carries it: a run's other replies cost nothing for it.)

A message that crossed a lossy channel without retransmission also has ``lost``: which of its
elements never arrived (see :mod:`splitvit.channel`).

Under a compression schedule (:mod:`splitvit.compression.schedule`), ``train`` and ``eval`` messages
have ``target``: the compression target they were encoded at (a number in (0, 1], 4 significant
digits), which the server decodes them at; a ``grad`` has the target of the client's next step.
Without a schedule no message has it.

``client`` numbers the client a message is from or for (0 with one client). The client, the server
and the baseline byte count (what uncompressed split learning would send) all build their headers
here, so what is counted is what is sent.
"""

from __future__ import annotations

import math
import re

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .codec import Schema, WireError, decode, encode

KINDS = ("train", "grad", "eval", "logits", "weights", "control")
CONTROL_MODES = ("fetch", "done", "ack", "stop")
GRAD_MODES = ("stop",)
MAX_CLIENT = 1 << 20  # client ids are small numbers; a larger one is a malformed header


@dataclass(frozen=True)
class Header:
    """What a message says it is, in its safetensors metadata: kind, client, step, mode, the loss, the
    compression target and what a lossy link lost."""
    kind: str
    client: int = 0
    step: int | None = None
    mode: str | None = None
    loss: float | None = None
    lost: str | None = None  # set by a lossy channel without ARQ: which elements never arrived (splitvit.channel)
    target: float | None = None  # under a compression schedule: the target the message is at (see above)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise WireError(f"message kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in ("train", "grad", "weights") and self.step is None:
            raise WireError(f"a {self.kind} message needs a step")
        if self.kind == "eval" and not self.mode:
            raise WireError("an eval message needs a mode")
        if self.kind == "control" and self.mode not in CONTROL_MODES:
            raise WireError(f"a control message needs a mode, one of {', '.join(CONTROL_MODES)}; got {self.mode!r}")
        if self.kind == "grad" and self.loss is None:
            raise WireError("a grad message needs the server's loss")
        if self.kind == "grad" and self.mode not in (None, *GRAD_MODES):
            raise WireError(f"a grad message's mode is absent or one of {', '.join(GRAD_MODES)}; got {self.mode!r}")
        if self.lost is not None and self.kind not in ("train", "grad", "eval", "logits"):
            raise WireError(f"a {self.kind} message does not cross a lossy channel: it cannot have lost elements")
        if self.target is not None and (self.kind not in ("train", "grad", "eval") or not 0 < self.target <= 1):
            raise WireError(f"a compression target is a number in (0, 1] on train, grad and eval messages; "
                            f"got {self.target!r} on a {self.kind} message")

    def meta(self) -> dict[str, str]:
        """The header as safetensors metadata (strings only)."""
        out = {"kind": self.kind, "client": str(self.client)}
        if self.step is not None:
            out["step"] = str(self.step)
        if self.mode is not None:
            out["mode"] = self.mode
        if self.loss is not None:
            out["loss"] = repr(float(self.loss))
        if self.lost is not None:
            out["lost"] = self.lost
        if self.target is not None:
            out["target"] = repr(float(self.target))
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> "Header":
        """Parse and check a received header; :class:`WireError` when it is malformed."""
        extra = set(meta) - {"kind", "client", "step", "mode", "loss", "lost", "target"}
        if extra:
            raise WireError(f"message header has unknown fields {sorted(extra)}")
        return cls(
            kind=meta.get("kind", ""),
            client=_integer(meta, "client", 0, MAX_CLIENT, default=0),
            step=_integer(meta, "step", 0, 1 << 62) if "step" in meta else None,
            mode=meta.get("mode"),
            loss=_number(meta, "loss") if "loss" in meta else None,
            lost=meta.get("lost"),
            target=_number(meta, "target") if "target" in meta else None,
        )


def _integer(meta: Mapping[str, str], key: str, low: int, high: int, default: int | None = None) -> int:
    if key not in meta and default is not None:
        return default
    text = meta.get(key, "")
    # ASCII digits only: no sign, no spaces, no 4,000-digit numbers, no '²' or other scripts' digits
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise WireError(f"message header field {key}={text[:40]!r} is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise WireError(f"message header field {key}={value} is outside [{low}, {high}]")
    return value


NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")  # what repr(float) writes for a finite value


def _number(meta: Mapping[str, str], key: str) -> float:
    """A finite number in ASCII: ``nan`` and ``inf`` are refused (they would reach strict-JSON run files),
    and so are other scripts' digits, which Python's ``float`` would take."""
    text = meta[key]
    value = float(text) if len(text) <= 40 and NUMBER.fullmatch(text) else None
    if value is None or not math.isfinite(value):
        raise WireError(f"message header field {key}={text[:40]!r} is not a finite number")
    return value


def pack(header: Header, tensors: Mapping[str, torch.Tensor]) -> bytes:
    """One message: ``tensors`` with ``header``. Its length is what the link carries."""
    return encode(tensors, header.meta())


def unpack(data: bytes, schema: Schema | Callable[[Header], Schema]) -> tuple[dict[str, torch.Tensor], Header]:
    """Bytes -> (tensors, header), checked: the header first, then the tensors against ``schema``
    (which may depend on the header, as a server's does on the kind)."""
    parsed: list[Header] = []

    def schema_for(meta: dict[str, str]) -> Schema:
        parsed.append(Header.from_meta(meta))
        return schema(parsed[0]) if callable(schema) else schema

    tensors, _ = decode(data, schema_for)
    return tensors, parsed[0]


def expect(header: Header, kind: str, step: int | None = None) -> Header:
    """``header`` if it is a ``kind`` message (for ``step``, when given), else :class:`WireError`."""
    if header.kind != kind:
        raise WireError(f"expected a {kind} message, got {header.kind}")
    if step is not None and header.step != step:
        raise WireError(f"reply is for step {header.step}, not {step}")
    return header
