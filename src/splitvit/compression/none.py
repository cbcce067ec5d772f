"""Plain split learning: the activations and the class ids as they are."""

from __future__ import annotations

from ..wire import Schema, TensorSpec
from .base import Compressor, register_method


@register_method
class NoCompression(Compressor):
    """Plain split learning: the activations in ``wire.dtype`` and the class ids, the gradient back raw."""

    name = "none"
    grad_of_tokens = True

    def compress(self, h, cls_attn, training):
        return {"z": self.to_wire(h)}, h

    def decompress(self, message):
        received = self.from_wire(message["z"])
        return received, received

    def activation_schema(self, B, N, D) -> Schema:
        # up to N tokens: a client that prunes tokens (finetune=alast) sends fewer, and not always as many
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", "k", D))}, dims={"k": (1, N)})

    def target_ratio(self) -> float:
        return 1.0

    def nominal_ratio(self, B, N, D) -> float:
        return self.value_ratio
