"""Plain split learning: the activations and the class ids as they are."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..wire import Schema, TensorSpec
from .base import ClientPacket, Compressor, ServerPacket


class NoCompression(Compressor):
    name = "none"

    def client_encode(self, h, cls_attn, labels) -> ClientPacket:
        return ClientPacket({"z": self.to_wire(h), "labels": labels.long()}, h)

    def server_decode(self, message) -> ServerPacket:
        received = self.from_wire(message["z"])
        return ServerPacket(received, received, F.one_hot(message["labels"], self.num_classes).float())

    def up_schema(self, B: int, N: int, D: int) -> Schema:
        return Schema(
            {
                "z": TensorSpec(self.wire_dtype, ("B", N, D)),
                "labels": TensorSpec(torch.int64, ("B",), low=0, high=self.num_classes - 1),
            },
            dims={"B": (1, B)},
        )

    def target_ratio(self) -> float:
        return 1.0

    def nominal_ratio(self, B: int, N: int) -> float:
        return 1.0
