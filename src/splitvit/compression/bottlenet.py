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
from .base import Compressor, check_ratio, register_method


@register_method
class BottleNet(Compressor):
    """BottleNet++ as a method: a learned token-wise bottleneck ``D -> D' -> D`` (``compression`` = ``D'/D``),
    its encoder on the client and its decoder on the server (module docstring)."""

    name = "bottlenet"

    def __init__(self, compression: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.roles.update(e=ANALOG)
        self.compression = check_ratio("method.compression", compression)
        self.code_dim = min(max(round(self.compression * self.dim), 1), self.dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = nn.Sequential(nn.Linear(self.dim, self.code_dim), nn.LayerNorm(self.code_dim))
            self.decoder = nn.Linear(self.code_dim, self.dim)
        self.client_modules.append(self.encoder)
        self.server_modules.append(self.decoder)

    def compress(self, h, cls_attn, training):
        self.encoder.train(training)
        e = self.encoder(h)
        return {"e": self.to_wire(e)}, e

    def decompress(self, message):
        e = self.from_wire(message["e"])
        return e, self.decoder(e)

    def activation_schema(self, B, N, D) -> Schema:
        return Schema({"e": TensorSpec(self.wire_dtype, ("B", N, self.code_dim))})

    def target_ratio(self) -> float:
        return self.compression

    def nominal_ratio(self, B, N, D) -> float:
        return self.code_dim / D * self.value_ratio
