"""What a compression method is: its config (a :class:`Method`) and its two sides, each its own object.

A step (docs/architecture.md, "One step, both sides")::

    client: sent = client_codec.encode(h, cls_attn, labels)   # sent.message goes on the wire
    server: got = server_codec.decode(message)                # got.z feeds the server model
            ... loss.backward() ...
            grad_message = got.reply()                        # dL/d(received), on the wire
    client: sent.tensor.backward(sent.decode(grad_message))

:class:`Method` is what both sides agree on from the config alone: the sizes, what a message may
hold (its schemas), what a channel may do to each tensor (its roles) and how a damaged message is
made safe (``repair``). It holds no state that changes while training. ``method.client()`` and
``method.server()`` build the two sides, a :class:`ClientCodec` (encode a batch; decode the gradient
that comes back) and a :class:`ServerCodec` (decode what arrived; encode the gradient), each with its
own learned parts (``modules``, found by that side's optimizer) and its own state (what it draws
from, error memories), saved and restored by that side alone. Every client and the server build
their own.

A step's encode returns what the backward pass needs as closures, as ToMe's merge/unmerge pair
does: :class:`Encoded` carries the tensor whose graph reaches the client blocks and ``decode``
(gradient message -> its gradient); :class:`Decoded` carries the server's activations, the targets
and ``reply`` (after the backward pass: the gradient message).

``grad_center`` (``split.grad_center``): the client subtracts each token's mean over the features
from the gradient it decodes. The true gradient of the tokens the server's blocks read has none
(every path from a pre-norm ViT's residual stream to the loss starts with a LayerNorm, which removes
that mean; measured on the CPU protocol: 1e-8 of its RMS), so in a lossy gradient that part is error
the loss cannot see, which the client's blocks would otherwise follow. On a min-max quantization
grid it is most of the error at 2 bits: docs/explanation/results.md, "Why 2 bits diverge". Only for
methods whose gradient is that of the tokens (``grad_of_tokens``).

A method also says what a channel may do to each tensor it sends (``roles``): ``analog`` payload
(activations, gradients, values: noise), ``digital`` payload (codes, indices, bitmaps: bit errors),
or ``protected`` side data (labels, scales, sizes: they ride with the header). ``repair`` makes a
message that crossed a damaging channel safe to decode: lost analog values become zeros, and a
method with digital payload handles its erasures and out-of-range values (it never crashes on them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..channel import ANALOG, DIGITAL, PROTECTED
from ..wire import Schema, TensorSpec
from .merge import check_ratio, select_tokens

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EVAL_MODES = ("uncompressed", "tokens", "compressed")

METHODS: dict[str, type["Method"]] = {}  # method=<name> -> its class, filled by @register_method

Message = dict[str, torch.Tensor]


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: ``method=<cls.name>`` builds ``cls``. A new method is its module (imported by
    :mod:`splitvit.compression`, or by the user's code before the run) and its ``conf/method/<name>.yaml``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is taken by {METHODS[cls.name].__qualname__}")
    METHODS[cls.name] = cls
    return cls


def on_device(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` if it lives on ``device``, else a generator there with the same seed: a method
    draws its random numbers where its tensors live (a CUDA op cannot draw from a CPU generator)."""
    if generator.device == device:
        return generator
    return torch.Generator(device=device).manual_seed(generator.initial_seed())


def bits_for(compression: float) -> int:
    """Bits per value that send about ``compression`` of float32: ``round(32 * compression)`` in [1, 8]."""
    return min(max(round(32 * check_ratio("method.compression", compression)), 1), 8)


@dataclass
class Encoded:
    """What the client's side of a step made of a batch."""

    message: Message  # detached tensors to serialise
    tensor: torch.Tensor  # the tensor whose gradient comes back, with its graph to the client blocks
    decode: Callable[[Message], torch.Tensor]  # the gradient message -> dL/d(tensor)


@dataclass
class Decoded:
    """What the server's side of a step made of a message."""

    z: torch.Tensor  # activations for the server model, [T, k, D]
    targets: torch.Tensor | None  # soft targets [T, C] of a training message; None for evaluation
    reply: Callable[[], Message]  # after the backward pass: the gradient message


class Method(ABC):
    """A method's config, shared by its two sides: sizes, schemas, roles and repair (module docstring).
    Subclasses set ``Client`` and ``Server`` to their side classes and define ``activation_schema``,
    ``target_ratio`` and ``nominal_ratio``; gradients go back raw in the wire dtype unless they
    override ``grad_schema`` (and their sides say how they encode and decode it)."""

    name = "base"
    # the gradient that comes back is dL/dz of the tokens the server's blocks read ([..., D]: one row a
    # token), rather than of a code (BottleNet++, C3-SL) or of values at positions (Top-K)
    grad_of_tokens = False
    # a compression schedule (:mod:`.schedule`) re-derives the method at each target with :meth:`at`.
    # ``sized_by``: the options that fix its sizes apart from ``compression`` (a schedule needs them
    # null); ``unscheduled``: why it cannot follow a schedule at all (learned parts shaped by the target)
    sized_by: tuple[str, ...] = ()
    unscheduled: str | None = None
    Client: type["ClientCodec"]
    Server: type["ServerCodec"]

    def __init__(self, num_classes: int, tokens: int, dim: int, wire_dtype: str = "float32", seed: int = 0,
                 grad_center: bool = False):
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire.dtype must be one of {', '.join(WIRE_DTYPES)}, got {wire_dtype!r}")
        if not isinstance(grad_center, bool):
            raise ValueError(f"split.grad_center must be true or false, got {grad_center!r}")
        if grad_center and not self.grad_of_tokens:
            raise ValueError(f"split.grad_center=true needs a method whose gradient is that of the tokens; method "
                             f"{self.name!r} sends back the gradient of its code or of chosen values")
        self.grad_center = grad_center
        self.num_classes = num_classes
        self.tokens, self.dim = tokens, dim  # N and D of the activations at the cut
        self.seed = seed  # seeds whatever randomness a method has
        self.wire_dtype = WIRE_DTYPES[wire_dtype]
        # what each tensor a message of this method may hold is, to a channel (methods add theirs)
        self.roles: dict[str, str] = {"z": ANALOG, "grad": ANALOG, "logits": ANALOG, "labels": PROTECTED}
        self.rebuild: Callable[..., "Method"] | None = None  # set by build_method: this method with other options
        self._derived: dict[float, "Method"] = {}

    def at(self, target: float) -> "Method":
        """This method re-derived for the compression ``target`` (a compression schedule): its sizes and
        schemas at that target, the same in every other way. Each side switches to it with ``use``."""
        if target not in self._derived:
            if self.rebuild is None or self.unscheduled:
                raise ValueError(f"method={self.name} cannot follow a compression schedule"
                                 f"{': ' + self.unscheduled if self.unscheduled else ''}")
            if len(self._derived) > 64:  # a schedule moves one way: the targets it left behind are not asked again
                self._derived.clear()
            self._derived[target] = self.rebuild(compression=target)
        return self._derived[target]

    # -- the two sides ------------------------------------------------------------------------------
    def client(self) -> "ClientCodec":
        """A new client side: its own learned parts and state."""
        return self.Client(self)

    def server(self) -> "ServerCodec":
        """A new server side: its own learned parts and state."""
        return self.Server(self)

    # -- what it sends --------------------------------------------------------------------------------
    @abstractmethod
    def activation_schema(self, B: int, N: int, D: int) -> Schema:
        """Bounds on an evaluation message's tensors (``encode`` without labels) for batches of at most
        ``B`` samples (dimension ``B``: the batch)."""

    def up_schema(self, B: int, N: int, D: int) -> Schema:
        """Bounds on a training message from a client whose batches hold at most ``B`` samples: what
        ``activation_schema`` allows, and the class ids."""
        s = self.activation_schema(B, N, D)
        labels = TensorSpec(torch.int64, ("B",), low=0, high=self.num_classes - 1)
        return Schema({**s.tensors, "labels": labels}, dims={**s.dims, "B": (1, B)})

    def grad_schema(self, sent: torch.Tensor) -> Schema:
        """What the client accepts back for ``sent`` (``Encoded.tensor``): by default, exactly its shape."""
        return Schema({"grad": TensorSpec(self.wire_dtype, tuple(sent.shape))})

    def eval_schema(self, B: int, N: int, D: int, mode: str) -> Schema:
        """What an evaluation message in ``mode`` (``uncompressed``, ``tokens``, ``compressed``) may hold."""
        if mode == "compressed":
            s = self.activation_schema(B, N, D)
            return Schema(s.tensors, dims={**s.dims, "B": (1, B)})
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", "k", D))}, dims={"B": (1, B), "k": (1, N)})

    @abstractmethod
    def target_ratio(self) -> float:
        """The compression asked for in the config."""

    @abstractmethod
    def nominal_ratio(self, B: int, N: int, D: int) -> float:
        """The fraction of the float32 activations the method sends for a batch ``[B, N, D]``, before
        any byte is counted: what a paper would quote. The measured ratio adds labels, indices,
        scales and headers."""

    def check_batch(self, batch_size: int) -> None:
        """Raise ``ValueError`` if the method cannot work on batches of ``batch_size`` (checked before training)."""

    def eval_token_ratio(self) -> float:
        """The share of tokens an evaluation in ``tokens`` mode keeps per sample."""
        raise ValueError(f"eval.mode=tokens needs a token ratio; method {self.name!r} has none. Use eval.mode=uncompressed or compressed")

    # -- what a channel may do, and how the receiver copes -------------------------------------------
    def role(self, name: str) -> str:
        """``analog``, ``digital`` or ``protected``: how a channel treats the tensor ``name``."""
        if name not in self.roles:
            raise KeyError(f"method {self.name!r} sends a tensor {name!r} without a role (analog, digital or protected)")
        return self.roles[name]

    def repair(self, message: Message, erased: dict[str, torch.Tensor]) -> tuple[Message, dict[str, int]]:
        """A received message that crossed a damaging channel, safe to decode, and counts of what was done:
        ``erased`` values (lost without retransmission), ``dropped`` and ``clamped`` ones (digital values
        that decode to nothing valid). ``erased`` maps a tensor to a boolean mask of its lost elements."""
        message, counts = dict(message), {"erased": 0, "dropped": 0, "clamped": 0}
        for name, mask in erased.items():
            if self.role(name) == ANALOG:  # what never arrived is taken as zero
                message[name] = message[name].masked_fill(mask.to(message[name].device), 0)
                counts["erased"] += int(mask.sum())
        if any(self.role(name) == DIGITAL for name in message):
            self.repair_digital(message, {k: v for k, v in erased.items() if self.role(k) == DIGITAL}, counts)
        return message, counts

    def repair_digital(self, message: Message, erased: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        """Make ``message``'s digital tensors safe in place (a method that sends any overrides this)."""
        raise NotImplementedError(f"method {self.name!r} sends digital payload but does not say how to repair it")

    # -- shared -----------------------------------------------------------------------------------
    @property
    def value_ratio(self) -> float:
        """Bytes of one wire value over the 4 bytes of float32."""
        return torch.empty((), dtype=self.wire_dtype).element_size() / 4

    def to_wire(self, t: torch.Tensor) -> torch.Tensor:
        """A floating-point tensor in the wire's dtype (``wire.dtype``), detached."""
        return t.detach().to(self.wire_dtype)

    @staticmethod
    def from_wire(t: torch.Tensor) -> torch.Tensor:
        """A tensor from the wire as float32."""
        return t.float().requires_grad_()


class _Side:
    """What both sides have: the method's config, learned parts and state of their own."""

    key = "modules"  # the checkpoint's name of the side's learned parts

    def __init__(self, method: Method):
        self.method = method
        self.modules = nn.ModuleList()  # learned parts, trained by this side's optimizer

    def to(self, device: torch.device) -> "_Side":
        self.modules.to(device)
        return self

    def use(self, method: Method) -> None:
        """Encode and decode with ``method`` from now on: this side's method re-derived at another
        compression target (``method.at``). Its learned parts and state stay; a side that derives
        anything from the method's sizes re-derives it here."""
        self.method = method

    def state_dict(self) -> dict:
        """What this side keeps between steps: its learned parts, and whatever it draws from (sides with
        more extend this)."""
        return {self.key: self.modules.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.modules.load_state_dict(state[self.key])


class Seeded:
    """Mixed into a side that draws random numbers (K-means seeds, sampled positions): a generator of its
    own, seeded from the method's seed (or ``seed``), moved to where its tensors live (:meth:`draw_on`)
    and saved with the side under ``state_key``."""

    state_key = "generator"

    def __init__(self, method: Method, seed: int | None = None):
        super().__init__(method)
        self.generator = torch.Generator().manual_seed(method.seed if seed is None else seed)

    def draw_on(self, device: torch.device) -> torch.Generator:
        """The side's generator, on ``device`` (a copy with the same seed when it lives elsewhere)."""
        self.generator = on_device(self.generator, device)
        return self.generator

    def state_dict(self) -> dict:
        """The side's state: its generator's."""
        return {**super().state_dict(), self.state_key: self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.generator.set_state(state[self.state_key])


class ClientCodec(_Side):
    """The client's side of a method: encodes a batch, and decodes the gradient that comes back.

    A method defines ``encode``. With ``labels`` it is a training step's message (the labels, or
    what stands for them, ride with it); without, compressed evaluation (deterministic: nothing
    learned or drawn changes)."""

    key = "client_modules"

    @abstractmethod
    def encode(self, h: torch.Tensor, cls_attn: torch.Tensor | None, labels: torch.Tensor | None = None) -> Encoded:
        """``h [B, N, D]``, ``cls_attn [B, N]`` and the class ids -> the message and its backward pass."""

    def encoded(self, message: Message, tensor: torch.Tensor, labels: torch.Tensor | None,
                decode: Callable[[Message], torch.Tensor] | None = None) -> Encoded:
        """``message`` with the class ids when training, and ``decode`` (by default: the raw gradient in the
        wire dtype) with ``split.grad_center`` applied."""
        if labels is not None:
            message = {**message, "labels": labels.long()}
        decode = decode or (lambda reply: reply["grad"])
        center = self.method.grad_center

        def gradient(reply: Message) -> torch.Tensor:
            grad = decode(reply).to(tensor.dtype)
            if center:  # what the loss cannot see (the module docstring): drop it
                grad = grad - grad.mean(-1, keepdim=True)
            return grad

        return Encoded(message, tensor, gradient)

    def eval_encode(self, h: torch.Tensor, cls_attn: torch.Tensor, mode: str) -> Message:
        """``uncompressed`` (the paper's), ``tokens`` (per-sample token selection) or ``compressed``."""
        m = self.method
        if mode == "uncompressed":
            return {"z": m.to_wire(h)}
        if mode == "tokens":
            return {"z": m.to_wire(select_tokens(h, cls_attn, m.eval_token_ratio()))}
        if mode == "compressed":
            return self.encode(h, cls_attn).message
        raise ValueError(f"eval.mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")


class ServerCodec(_Side):
    """The server's side of a method: decodes what arrived, and encodes the gradient of it.

    A method defines ``decode``, for training and compressed-evaluation messages alike."""

    key = "server_modules"

    @abstractmethod
    def decode(self, message: Message) -> Decoded:
        """A validated message -> the activations, the targets and the reply to come."""

    def decoded(self, received: torch.Tensor, z: torch.Tensor, message: Message,
                reply: Callable[[torch.Tensor], Message] | None = None) -> Decoded:
        """``z``, computed from the leaf ``received``, with the message's targets (soft ``targets`` if it
        has them, else its ``labels`` one-hot; none for evaluation) and the reply: ``reply`` of the
        leaf's gradient (by default: the gradient raw, in the wire dtype)."""
        m = self.method
        if "targets" in message:
            targets = message["targets"]
        elif "labels" in message:
            targets = F.one_hot(message["labels"], m.num_classes).float()
        else:
            targets = None
        encode = reply or (lambda grad: {"grad": m.to_wire(grad)})
        return Decoded(z, targets, lambda: encode(received.grad))

    def eval_decode(self, message: Message, mode: str) -> torch.Tensor:
        """An evaluation message in ``mode`` -> the server blocks' input."""
        if mode == "compressed":
            return self.decode(message).z.detach()
        return message["z"].float()


class RawServer(ServerCodec):
    """The server's side of every method that sends the tokens themselves as ``z`` (plain split learning,
    ADC): they are the activations, and the gradient goes back raw."""

    def decode(self, message: Message) -> Decoded:
        received = self.method.from_wire(message["z"])
        return self.decoded(received, received, message)
