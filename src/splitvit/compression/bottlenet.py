"""A BottleNet++-style learned bottleneck, token-wise: ``D -> D' -> D``.

The client's encoder (linear, layer norm) maps each token to ``D' = round(compression * D)``
values; the server's decoder (linear) maps them back. Both are trained with the split model, each
by its own side's optimizer. The decoder has no final ReLU: the ViT residual stream is signed, and
a ReLU would clip half of it. Both halves are initialised from the shared seed, so a client and a
server in different processes start from the same autoencoder.

Nominal vs measured: nominal is ``D' / D``; measured adds the labels.
"""

from __future__ import annotations

import torch
from torch import nn

from ..channel import ANALOG
from ..wire import Schema, TensorSpec
from .base import ClientCodec, Decoded, Encoded, Method, ServerCodec, check_ratio, register_method


class BottleNetClient(ClientCodec):
    """The encoder: each token to its ``D'`` code values."""

    def __init__(self, method: "BottleNet"):
        super().__init__(method)
        self.encoder = method.autoencoder()[0]
        self.modules.append(self.encoder)

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        self.encoder.train(labels is not None)
        e = self.encoder(h)
        return self.encoded({"e": self.method.to_wire(e)}, e, labels)


class BottleNetServer(ServerCodec):
    """The decoder: each token's code back to ``D`` values; the gradient of the code goes back."""

    def __init__(self, method: "BottleNet"):
        super().__init__(method)
        self.decoder = method.autoencoder()[1]
        self.modules.append(self.decoder)

    def decode(self, message) -> Decoded:
        e = self.method.from_wire(message["e"])
        return self.decoded(e, self.decoder(e), message)


@register_method
class BottleNet(Method):
    """BottleNet++ as a method: a learned token-wise bottleneck ``D -> D' -> D`` (``compression`` = ``D'/D``),
    its encoder on the client and its decoder on the server (module docstring)."""

    name = "bottlenet"
    unscheduled = "its learned encoder and decoder are method.compression * D wide"
    Client, Server = BottleNetClient, BottleNetServer

    def __init__(self, compression: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.roles.update(e=ANALOG)
        self.compression = check_ratio("method.compression", compression)
        self.code_dim = min(max(round(self.compression * self.dim), 1), self.dim)

    def autoencoder(self) -> tuple[nn.Module, nn.Module]:
        """The encoder and the decoder as the seed initialises them: each side builds both and keeps its own."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            encoder = nn.Sequential(nn.Linear(self.dim, self.code_dim), nn.LayerNorm(self.code_dim))
            decoder = nn.Linear(self.code_dim, self.dim)
        return encoder, decoder

    def activation_schema(self, B, N, D) -> Schema:
        return Schema({"e": TensorSpec(self.wire_dtype, ("B", N, self.code_dim))})

    def target_ratio(self) -> float:
        return self.compression

    def nominal_ratio(self, B, N, D) -> float:
        return self.code_dim / D * self.value_ratio
