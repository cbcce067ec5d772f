"""The one small interface every compression method implements.

A step, as DESIGN.md draws it::

    client: packet = c.client_encode(h, cls_attn, labels)      # packet.message goes on the wire
    server: p = c.server_decode(message)                          # p.z feeds the server model
            ... loss.backward() ...
            grad_message = c.server_encode_grad(p)                # dL/d(received), on the wire
    client: grad = c.client_decode_grad(grad_message, packet)
            packet.sent.backward(grad)

``packet.sent`` is the client-side tensor that keeps the autograd graph back to the client blocks;
``p.received`` is the server-side leaf whose gradient is sent back. A method with learned parts
keeps them in ``client_modules`` / ``server_modules`` so each side's optimizer finds them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..wire import Schema, TensorSpec

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_ratio(name: str, value: float) -> float:
    if value is None or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


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
    name = "base"

    def __init__(self, num_classes: int, wire_dtype: str = "float32", seed: int = 0):
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire.dtype must be one of {', '.join(WIRE_DTYPES)}, got {wire_dtype!r}")
        self.num_classes = num_classes
        self.seed = seed  # seeds whatever randomness a method has
        self.wire_dtype = WIRE_DTYPES[wire_dtype]
        self.client_modules = nn.ModuleList()
        self.server_modules = nn.ModuleList()

    # -- client half ------------------------------------------------------------------------------
    @abstractmethod
    def client_encode(self, h: torch.Tensor, cls_attn: torch.Tensor, labels: torch.Tensor) -> ClientPacket:
        """``h [B, N, D]``, ``cls_attn [B, N]``, ``labels [B]`` -> what to send, and what to back-propagate."""

    def client_decode_grad(self, message: dict[str, torch.Tensor], packet: ClientPacket) -> torch.Tensor:
        return message["grad"].to(packet.sent.dtype)

    def grad_schema(self, packet: ClientPacket) -> Schema:
        """What the client accepts back: exactly the shape of what it sent."""
        return Schema({"grad": TensorSpec(self.wire_dtype, tuple(packet.sent.shape))})

    # -- server half ------------------------------------------------------------------------------
    @abstractmethod
    def server_decode(self, message: dict[str, torch.Tensor]) -> ServerPacket:
        """A validated message -> the server model's input, its soft targets, and the gradient leaf."""

    def server_encode_grad(self, packet: ServerPacket) -> dict[str, torch.Tensor]:
        return {"grad": self.to_wire(packet.received.grad)}

    @abstractmethod
    def up_schema(self, B: int, N: int, D: int) -> Schema:
        """Bounds on a training message from a client whose batches hold at most ``B`` samples."""

    # -- evaluation: the paper's uncompressed mode, or token selection alone -----------------------
    def eval_encode(self, h: torch.Tensor, cls_attn: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
        if mode == "uncompressed":
            return {"z": self.to_wire(h)}
        if mode == "tokens":
            from .adc import select_tokens

            return {"z": self.to_wire(select_tokens(h, cls_attn, self.eval_token_ratio()))}
        raise ValueError(f"eval.mode must be one of {', '.join(EVAL_MODES)}, got {mode!r}")

    def eval_schema(self, B: int, N: int, D: int) -> Schema:
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", "k", D))}, dims={"B": (1, B), "k": (1, N)})

    def eval_token_ratio(self) -> float:
        raise ValueError(f"eval.mode=tokens needs a token ratio; method {self.name!r} has none. Use eval.mode=uncompressed")

    # -- shared -----------------------------------------------------------------------------------
    @abstractmethod
    def target_ratio(self) -> float:
        """The compression asked for in the config."""

    @abstractmethod
    def nominal_ratio(self, B: int, N: int) -> float:
        """Compression the method aims at for a batch ``[B, N, D]``, before any byte is counted."""

    def to_wire(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.wire_dtype)

    @staticmethod
    def from_wire(t: torch.Tensor) -> torch.Tensor:
        return t.float().requires_grad_()

    def state_dict(self) -> dict:
        return {"client_modules": self.client_modules.state_dict(), "server_modules": self.server_modules.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.client_modules.load_state_dict(state["client_modules"])
        self.server_modules.load_state_dict(state["server_modules"])


EVAL_MODES = ("uncompressed", "tokens")
