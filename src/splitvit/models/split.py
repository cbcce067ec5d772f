"""Cut a :class:`VisionTransformer` into the client part and the server part.

The two parts share the parameter objects of the model they came from, so the state dicts of
``client`` and ``server`` keep timm's names (``blocks.3.attn.qkv.weight`` stays so on the server).
"""

from __future__ import annotations

import torch
from torch import nn

from .vit import VisionTransformer, embed


class ClientModel(nn.Module):
    """Patch embedding and blocks ``1..l``. ``forward(images) -> (h [B, N, D], cls_attn [B, N])``."""

    def __init__(self, model: VisionTransformer, index: int):
        super().__init__()
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.pos_embed = model.pos_embed
        self.blocks = nn.ModuleList(model.blocks[:index])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = embed(self, x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        # the CLS attention row only in the block where ADC needs it
        return self.blocks[-1](x, cls_attn=True)


class ServerModel(nn.Module):
    """Blocks ``l+1..L``, the final norm and the head. ``forward(z [T, k, D]) -> logits [T, C]``.

    Token 0 must be CLS; the others may be any subset of patch tokens in any order (ADC sends a
    subset; positions were added on the client, so the server needs none).
    """

    def __init__(self, model: VisionTransformer, index: int):
        super().__init__()
        # keep the global block numbering so that state-dict names match timm's
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(index, len(model.blocks))})
        self.norm = model.norm
        self.head = model.head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks.values():
            z = blk(z)
        return self.head(self.norm(z)[:, 0])


def split(model: VisionTransformer, index: int) -> tuple[ClientModel, ServerModel]:
    """Client runs blocks ``1..index`` (1-based, as the paper's split index ``l``); server the rest."""
    depth = len(model.blocks)
    if not 1 <= index <= depth:
        raise ValueError(
            f"split index {index} is outside [1, {depth}] for a model of depth {depth}: the client "
            "needs at least one block (its attention drives ADC)"
        )
    return ClientModel(model, index), ServerModel(model, index)
