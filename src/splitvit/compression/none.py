"""Plain split learning: the activations and the class ids as they are."""

from __future__ import annotations

from ..wire import Schema, TensorSpec
from .base import ClientCodec, Encoded, Method, RawServer, register_method


class PlainClient(ClientCodec):
    """Sends the activations in ``wire.dtype``; the gradient of them comes back raw."""

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        return self.encoded({"z": self.method.to_wire(h)}, h, labels)


@register_method
class NoCompression(Method):
    """Plain split learning: the activations in ``wire.dtype`` and the class ids, the gradient back raw."""

    name = "none"
    grad_of_tokens = True
    Client, Server = PlainClient, RawServer

    def activation_schema(self, B, N, D) -> Schema:
        # up to N tokens: a client that prunes tokens (finetune=alast) sends fewer, and not always as many
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", "k", D))}, dims={"k": (1, N)})

    def target_ratio(self) -> float:
        return 1.0

    def nominal_ratio(self, B, N, D) -> float:
        return self.value_ratio
