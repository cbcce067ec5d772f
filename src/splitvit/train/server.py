"""The server half of a split-learning step: blocks l+1..L, the loss, and the gradient back."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..channel import ChannelSpec, Receiver
from ..compression import EVAL_MODES, ServerCodec
from ..compression.schedule import CompressionSchedule
from ..models import ServerModel
from ..profiling import recording, timed
from ..wire import MAX_HEADER_BYTES, Header, Schema, WireError, content_digest, pack, unpack
from .alast import ALaST, update
from .mods import Step, StepMod, find, through
from .federation import Coordinator, Federation
from .precision import autocast


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets ``[T, C]`` (ADC's merged labels are means of one-hots)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def server_digest(model: ServerModel, codec: ServerCodec) -> str:
    """SHA-256 of the server half's initial parameters (its blocks and the method's learned server side):
    client and server must start from the same weights."""
    h = hashlib.sha256()
    for module in (model, codec.modules):
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class ServerHalf:
    """What every client of a server shares: the server blocks, their optimizer and the method's
    server side. It turns a decoded training message into an optimizer step and the gradient back,
    and an evaluation message into logits; it knows nothing of clients, step order or bytes. Each
    training step goes through ``mods`` (:mod:`.mods`: ALaST on the server's blocks).
    """

    def __init__(self, model: ServerModel, codec: ServerCodec, optimizer: torch.optim.Optimizer, bf16: bool = False,
                 mods: list[StepMod] = ()):
        self.model = model
        self.codec = codec  # the method's server side
        self.method = codec.method
        self.optimizer = optimizer
        self.device = next(model.parameters()).device
        self.bf16 = bf16
        self.lock = threading.Lock()  # sessions of several clients share the half: one step at a time
        self.mods = list(mods)

    @property
    def alast(self) -> ALaST | None:
        """``finetune=alast`` on the server's blocks, when it runs there."""
        return find(self.mods, ALaST)

    def train_step(self, message: dict[str, torch.Tensor], header: Header) -> tuple[Header, dict[str, torch.Tensor]]:
        """The step of a decoded training message, through the half's mods: the reply's header and tensors
        (the gradient back)."""
        with self.lock:
            self._at(header.target)
            return through(self.mods, Step(header.step), lambda _: self._train_step(message, header))

    def eval_step(self, message: dict[str, torch.Tensor], header: Header) -> bytes:
        """An evaluation message -> the reply with the logits."""
        with self.lock:
            self._at(header.target)
            return self._eval_step(message, header)

    def _at(self, target: float | None) -> None:
        """The method at the message's compression target (a compression schedule), else as configured."""
        self.codec.use(self.method if target is None else self.method.at(target))

    def _train_step(self, message: dict[str, torch.Tensor], header: Header) -> tuple[Header, dict[str, torch.Tensor]]:
        self.model.train()
        with timed("decode"):
            got = self.codec.decode(message)
        with timed("forward"), autocast(self.device, self.bf16):
            logits = self.model(got.z)
            loss = soft_cross_entropy(logits, got.targets)  # in float32
        update(loss, self.optimizer)
        with timed("encode"):
            reply = got.reply()
        return Header("grad", client=header.client, step=header.step, loss=loss.item()), reply

    @torch.no_grad()
    def _eval_step(self, message: dict[str, torch.Tensor], header: Header) -> bytes:
        self.model.eval()
        with autocast(self.device, self.bf16):
            logits = self.model(self.codec.eval_decode(message, header.mode))
        return pack(Header("logits", client=header.client), {"logits": logits.float()})

    def state_dict(self) -> dict:
        """The half's model, optimizer, method side and ALaST stage."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "compressor": self.codec.state_dict(),  # the method's server side only
                **({"alast": self.alast.state_dict()} if self.alast is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.codec.load_state_dict(state["compressor"])
        if self.alast is not None:
            self.alast.load_state_dict(state["alast"])


class Session:
    """One client's session with a server half: what is per client. It checks each message against
    the session's schemas, applies training steps in order and once (the same step sent again, a
    client retrying after a lost reply, gets the reply it already produced; a step out of order is
    refused), repairs what a damaging channel did to a message, and hands weights and control messages
    to the federation. A message that fails its schema raises :class:`~splitvit.wire.WireError` before
    any use. Several sessions may share one half.

    ``ledger`` (the :class:`~.hub.Hub`) counts each applied training step and says whether it reached a
    cap that ends the round there; the reply then says ``stop`` (see :mod:`splitvit.wire.protocol`).
    """

    def __init__(self, half: ServerHalf, max_batch: int, num_tokens: int, dim: int, max_eval_batch: int | None = None,
                 client: int = 0, federation: Federation | None = None, coordinator: Coordinator | None = None,
                 ledger=None, channel: ChannelSpec | None = None, mods: list[StepMod] = (),
                 schedule: CompressionSchedule | None = None):
        self.half = half
        self.mods = list(mods)  # what each training step goes through here (the profiler), its decoding included
        self.client = client
        self.federation = federation  # where client halves are handed on or averaged
        self.round = 0  # the round the client takes part from (a resumed one: the next)
        self.coordinator = coordinator  # holds each message until the round's plan says it is due
        self.ledger = ledger
        self.sizes = (max_batch, max_eval_batch or max_batch, num_tokens, dim)
        self.channel = channel
        # under a compression schedule each message says its target, which its schemas and repair follow
        self.schedule = None if schedule is None or schedule.constant else schedule
        self._targets: dict[float | None, tuple[dict[str, Schema], Receiver]] = {}
        self.schemas, self.receive = self._at(None)
        if federation is not None:
            self.schemas["weights"] = federation.schema  # a client half up
            self.schemas["control"] = Schema({})  # a client asks for the current half
        self.last_step = -1  # the last training step applied
        self._last_reply: bytes | None = None
        self._last_payload: bytes | None = None  # the message that step came in: a retry must say the same
        self._fed_cache: tuple[bytes, bytes] | None = None  # the last weights/control message and its reply

    # the shared half's parts, for callers that set its learning rate or read its weights
    model = property(lambda self: self.half.model, doc="The shared half's model.")
    optimizer = property(lambda self: self.half.optimizer, doc="The shared half's optimizer.")

    @property
    def max_message_bytes(self) -> int:
        """The largest message any served schema admits: tensor data plus the largest header."""
        return max(s.max_bytes() for s in self.schemas.values()) + 8 + MAX_HEADER_BYTES

    def _at(self, target: float | None) -> tuple[dict[str, Schema], Receiver]:
        """The schemas of the training and evaluation messages, and their repair, at a compression target."""
        if target not in self._targets:
            method = self.half.method if target is None else self.half.method.at(target)
            B, eval_batch, N, D = self.sizes
            schemas = {"train": method.up_schema(B, N, D)}
            for mode in EVAL_MODES:
                schemas[f"eval/{mode}"] = method.eval_schema(eval_batch, N, D, mode)
            # a channel that damages what comes up: digital values may arrive out of range, to be repaired, not refused
            receive = Receiver(self.channel, "up", method.role, method.repair)
            for kind in list(schemas):
                schemas[kind] = receive.schema(kind.split("/")[0], schemas[kind])
            if len(self._targets) > 64:  # a schedule moves one way: the targets it left behind are not asked again
                self._targets = {None: self._targets[None]}
            self._targets[target] = (schemas, receive)
        return self._targets[target]

    def schema_for(self, header: Header) -> Schema:
        """The schema of a message with ``header``: its kind's, at its compression target."""
        kind = header.kind if header.kind != "eval" else f"eval/{header.mode}"
        if kind not in self.schemas:
            raise WireError(f"message kind {kind!r} is not served; expected one of {sorted(self.schemas)}")
        if header.client != self.client:
            raise WireError(f"message from client {header.client} reached the session of client {self.client}")
        if header.kind not in ("train", "eval"):
            return self.schemas[kind]
        if self.schedule is None:
            if header.target is not None:
                raise WireError(f"a {header.kind} message says compression target {header.target}, but this run has no "
                                "compression schedule (compression_schedule=constant)")
            return self.schemas[kind]
        if header.target is None or not self.schedule.admits(header.target):
            lo, hi = self.schedule.bounds
            raise WireError(f"a {header.kind} message under compression_schedule={self.schedule.kind} must say its "
                            f"compression target, in [{lo}, {hi}]; got {header.target!r}")
        return self._at(header.target)[0][kind]

    def lost(self) -> None:
        """A call of this session's client failed: with several clients, it is dropped from the round."""
        if self.coordinator is not None:
            self.coordinator.lost(self.client)

    def rejoin(self, steps: int) -> None:
        """The client came back from its checkpoint after ``steps`` of its steps: its step ids go on from there."""
        self.last_step, self._last_reply, self._last_payload = steps - 1, None, None
        self._fed_cache = None

    def handle(self, payload: bytes) -> bytes:
        """One message from the client (bytes) -> the reply (bytes)."""
        with recording("decode") as parsed:  # the checks of the message, the step's decoding if it is a step
            message, header = unpack(payload, self.schema_for)
        if self.coordinator is not None:
            self.coordinator.touch(self.client)
        if header.kind != "train":
            return self._handle(payload, message, header)
        step = header.step
        if step == self.last_step and self._last_reply is not None:
            # digests only on a retry: nothing is hashed on the hot path of an ordinary step
            if content_digest(payload) != content_digest(self._last_payload):
                raise WireError(f"training step {step} was sent again with different content; a retry must "
                                "resend the same message (a second client with this client's id?)")
            return self._last_reply  # a retry: the step was applied already
        if step != self.last_step + 1:
            raise WireError(f"training step {step} is out of order: the server applied step {self.last_step} last; "
                            "resume the client from its checkpoint (train.resume=true)")
        if not self._due("train"):  # (over gRPC, waits for its turn in the round: not part of the step)
            raise WireError("the run is over: no more training steps are taken")
        # unpacking came before the message was known to be a step: its time is the step's decoding
        reply = through(self.mods, Step(step, before=dict(parsed)), lambda _: self._train(payload, message, header))
        self._complete("train")  # may close the round (and save it): after the step
        return reply

    def _received(self, message: dict[str, torch.Tensor], header: Header) -> dict[str, torch.Tensor]:
        """A message on the half's device, repaired when a damaging channel hits it on the way up."""
        with timed("decode"):
            message = self._at(header.target)[1](header.kind, header, message)
            return {k: v.to(self.half.device, non_blocking=True) for k, v in message.items()}

    def _train(self, payload: bytes, message: dict[str, torch.Tensor], header: Header) -> bytes:
        got, tensors = self.half.train_step(self._received(message, header), header)
        if self.schedule is not None:  # the target of the client's next step, from how far the run is
            got = replace(got, target=self.schedule.at(self.ledger.progress() if self.ledger is not None else 0.0))
        with timed("encode"):
            reply = pack(got, tensors)
            if self.ledger is not None:
                if self.ledger.cuts(self.client, len(payload), len(reply), header.step):  # a cap: the round ends here
                    reply = pack(replace(got, mode="stop"), tensors)
                self.ledger.count(self.client, len(payload), len(reply), header.step)
        self.last_step, self._last_reply, self._last_payload = header.step, reply, payload
        return reply

    def _handle(self, payload: bytes, message: dict[str, torch.Tensor], header: Header) -> bytes:
        """A message other than a training step: weights, control, or an evaluation batch."""
        if header.kind in ("weights", "control"):
            if self._fed_cache is not None and self._fed_cache[0] == payload:
                return self._fed_cache[1]  # a retry after a lost reply: answered again, not applied again
            reply = self._federate(self._received(message, header), header)
            self._fed_cache = (payload, reply)
            return reply
        return self.half.eval_step(self._received(message, header), header)

    def _due(self, what: str) -> bool:
        return self.coordinator is None or self.coordinator.wait(self.client, what)

    def _complete(self, what: str) -> None:
        if self.coordinator is not None:
            self.coordinator.complete(self.client, what)

    def _federate(self, message: dict[str, torch.Tensor], header: Header) -> bytes:
        """A client half up (``weights``), a request for the current one (``control`` ``fetch``), or the
        round's evaluator saying it is done (``control`` ``done``); see :mod:`splitvit.wire.protocol`."""
        f, c = self.federation, self.client
        what = {"weights": "upload"}.get(header.kind) or header.mode
        if what not in ("upload", "fetch", "done"):
            raise WireError(f"a control message with mode {header.mode!r} is not for the server")
        if not self._due(what):  # the run ended without this event
            return pack(Header("control", client=c, step=f.version, mode="stop"), {})
        if what == "upload":
            f.upload(c, message)
        if what == "done" and self.ledger is not None:
            self.ledger.evaluated()
        reply_weights = what == "fetch" and header.step != f.version
        self._complete(what)  # may close the round: the reply then says whether the run is over
        # SplitFed's uploads of a round come in any order and the last one closes the round: their acks
        # would say "stop" or not by a race, so only fetch and done replies (and sequential's hand-ons) say it
        mode = "stop" if f.stopped and (what != "upload" or f.scheme.upload_says_stop()) else "ack"
        if reply_weights:
            return pack(Header("weights", client=c, step=f.version, mode=mode), f.current)
        return pack(Header("control", client=c, step=f.version, mode=mode), {})
