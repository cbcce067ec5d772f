"""The one small interface every compression method implements.

A step (docs/architecture.md, "One step, both sides")::

    client: packet = c.client_encode(h, cls_attn, labels)      # packet.message goes on the wire
    server: p = c.server_decode(message)                          # p.z feeds the server model
            ... loss.backward() ...
            grad_message = c.server_encode_grad(p)                # dL/d(received), on the wire
    client: grad = c.client_decode_grad(grad_message, packet)
            packet.sent.backward(grad)

``grad_center`` (``split.grad_center``): the client subtracts each token's mean over the features
from the gradient it decodes. The true gradient of the tokens the server's blocks read has none
(every path from a pre-norm ViT's residual stream to the loss starts with a LayerNorm, which removes
that mean; measured on the CPU protocol: 1e-8 of its RMS), so in a lossy gradient that part is error
the loss cannot see, which the client's blocks would otherwise follow. On a min-max quantization
grid it is most of the error at 2 bits: README, the CPU protocol, "Why 2 bits diverge". Only for
methods whose gradient is that of the tokens (``grad_of_tokens``).

``packet.sent`` is the client-side tensor that keeps the autograd graph back to the client blocks;
``p.received`` is the server-side leaf whose gradient is sent back. A method with learned parts
keeps them in ``client_modules`` / ``server_modules`` so each side's optimizer finds them, and its
state by side (``client_state`` / ``server_state``): every client and the server hold their own
instance of the method, and each saves and restores only its own side.

A method also says what a channel may do to each tensor it sends (``roles``): ``analog`` payload
(activations, gradients, values: noise), ``digital`` payload (codes, indices, bitmaps: bit errors),
or ``protected`` side data (labels, scales, sizes: they ride with the header). ``repair`` makes a
message that crossed a damaging channel safe to decode: lost analog values become zeros, and a
method with digital payload handles its erasures and out-of-range values (it never crashes on them).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..channel import ANALOG, DIGITAL, PROTECTED
from ..wire import Schema, TensorSpec
from .merge import check_ratio, select_tokens

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

METHODS: dict[str, type["Compressor"]] = {}  # method=<name> -> its class, filled by @register_method


def register_method(cls: type["Compressor"]) -> type["Compressor"]:
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
class ClientPacket:
    message: dict[str, torch.Tensor]  # detached tensors to serialise
    sent: torch.Tensor  # the tensor whose gradient comes back, with its graph


@dataclass
class ServerPacket:
    received: torch.Tensor  # leaf that requires grad: dL/d(received) is what goes back
    z: torch.Tensor  # activations for the server model, [T, k, D]
    targets: torch.Tensor  # soft targets [T, C]


class Compressor(ABC):
    """A method is its client half (``compress``), its server half (``decompress``) and the bounds of
    what it sends (``activation_schema``); gradients go back raw in the wire dtype unless it
    overrides ``encode_grad`` / ``decode_grad`` / ``grad_schema``. Labels go up as class ids.
    """

    name = "base"
    # the gradient that comes back is dL/dz of the tokens the server's blocks read ([..., D]: one row a
    # token), rather than of a code (BottleNet++, C3-SL) or of values at positions (Top-K)
    grad_of_tokens = False

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
        self.client_modules = nn.ModuleList()
        self.server_modules = nn.ModuleList()
        # what each tensor a message of this method may hold is, to a channel (methods add theirs)
        self.roles: dict[str, str] = {"z": ANALOG, "grad": ANALOG, "logits": ANALOG, "labels": PROTECTED}

    # -- what each method defines -----------------------------------------------------------------
    @abstractmethod
    def compress(self, h: torch.Tensor, cls_attn: torch.Tensor, training: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Client: ``h [B, N, D]``, ``cls_attn [B, N]`` -> (tensors to send, the tensor whose gradient comes back).

        ``training=False`` is compressed evaluation: deterministic, nothing learned or drawn.
        """

    @abstractmethod
    def decompress(self, message: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Server: a validated message -> (the leaf whose gradient goes back, activations ``[B', k, D]``)."""

    @abstractmethod
    def activation_schema(self, B: int, N: int, D: int) -> Schema:
        """Bounds on ``compress``'s tensors for batches of at most ``B`` samples (dimension ``B``: the batch)."""

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

    # -- the gradient on its way back: raw by default ---------------------------------------------
    def encode_grad(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"grad": self.to_wire(grad)}

    def decode_grad(self, message: dict[str, torch.Tensor], sent: torch.Tensor) -> torch.Tensor:
        return message["grad"].to(sent.dtype)

    def grad_schema(self, sent: torch.Tensor) -> Schema:
        """What the client accepts back: exactly the shape of what it sent."""
        return Schema({"grad": TensorSpec(self.wire_dtype, tuple(sent.shape))})

    # -- a training step --------------------------------------------------------------------------
    def client_encode(self, h: torch.Tensor, cls_attn: torch.Tensor, labels: torch.Tensor) -> ClientPacket:
        message, sent = self.compress(h, cls_attn, training=True)
        return ClientPacket({**message, "labels": labels.long()}, sent)

    def server_decode(self, message: dict[str, torch.Tensor]) -> ServerPacket:
        received, z = self.decompress(message)
        return ServerPacket(received, z, F.one_hot(message["labels"], self.num_classes).float())

    def up_schema(self, B: int, N: int, D: int) -> Schema:
        """Bounds on a training message from a client whose batches hold at most ``B`` samples."""
        s = self.activation_schema(B, N, D)
        labels = TensorSpec(torch.int64, ("B",), low=0, high=self.num_classes - 1)
        return Schema({**s.tensors, "labels": labels}, dims={**s.dims, "B": (1, B)})

    def server_encode_grad(self, packet: ServerPacket) -> dict[str, torch.Tensor]:
        return self.encode_grad(packet.received.grad)

    def client_decode_grad(self, message: dict[str, torch.Tensor], packet: ClientPacket) -> torch.Tensor:
        grad = self.decode_grad(message, packet.sent)
        if self.grad_center:  # what the loss cannot see (the module docstring): drop it
            grad = grad - grad.mean(-1, keepdim=True)
        return grad

    # -- evaluation -------------------------------------------------------------------------------
    def eval_encode(self, h: torch.Tensor, cls_attn: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
        """``uncompressed`` (the paper's), ``tokens`` (per-sample token selection) or ``compressed``."""
        if mode == "uncompressed":
            return {"z": self.to_wire(h)}
        if mode == "tokens":
            return {"z": self.to_wire(select_tokens(h, cls_attn, self.eval_token_ratio()))}
        if mode == "compressed":
            return self.compress(h, cls_attn, training=False)[0]
        raise ValueError(f"eval.mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")

    def eval_decode(self, message: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
        if mode == "compressed":
            return self.decompress(message)[1].detach()
        return message["z"].float()

    def eval_schema(self, B: int, N: int, D: int, mode: str) -> Schema:
        if mode == "compressed":
            s = self.activation_schema(B, N, D)
            return Schema(s.tensors, dims={**s.dims, "B": (1, B)})
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", "k", D))}, dims={"B": (1, B), "k": (1, N)})

    def eval_token_ratio(self) -> float:
        raise ValueError(f"eval.mode=tokens needs a token ratio; method {self.name!r} has none. Use eval.mode=uncompressed or compressed")

    # -- what a channel may do, and how the receiver copes -------------------------------------------
    def role(self, name: str) -> str:
        """``analog``, ``digital`` or ``protected``: how a channel treats the tensor ``name``."""
        if name not in self.roles:
            raise KeyError(f"method {self.name!r} sends a tensor {name!r} without a role (analog, digital or protected)")
        return self.roles[name]

    def repair(self, message: dict[str, torch.Tensor], erased: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
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

    def repair_digital(self, message: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        """Make ``message``'s digital tensors safe in place (a method that sends any overrides this)."""
        raise NotImplementedError(f"method {self.name!r} sends digital payload but does not say how to repair it")

    # -- shared -----------------------------------------------------------------------------------
    @property
    def value_ratio(self) -> float:
        """Bytes of one wire value over the 4 bytes of float32."""
        return torch.empty((), dtype=self.wire_dtype).element_size() / 4

    def to_wire(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.wire_dtype)

    @staticmethod
    def from_wire(t: torch.Tensor) -> torch.Tensor:
        return t.float().requires_grad_()

    # -- state, by side: a client saves and restores its side only, a server its own ----------------
    def client_state(self) -> dict:
        """What the client side keeps between steps: its learned parts and whatever it draws from."""
        return {"client_modules": self.client_modules.state_dict()}

    def server_state(self) -> dict:
        return {"server_modules": self.server_modules.state_dict()}

    def load_client_state(self, state: dict) -> None:
        self.client_modules.load_state_dict(state["client_modules"])

    def load_server_state(self, state: dict) -> None:
        self.server_modules.load_state_dict(state["server_modules"])

    def state_dict(self) -> dict:
        """Both sides (one process that plays both, as a checkpoint of the whole method)."""
        return {**self.client_state(), **self.server_state()}

    def load_state_dict(self, state: dict) -> None:
        self.load_client_state(state)
        self.load_server_state(state)


EVAL_MODES = ("uncompressed", "tokens", "compressed")
