"""A Vision Transformer whose parameter names match timm's ``VisionTransformer``.

Keeping timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.attn.qkv``,
``norm``, ``head``) means a timm checkpoint loads as it is. Only the pieces split learning needs are
here: class-token pooling, pre-norm blocks, no dropout. Attention goes through
``torch.nn.functional.scaled_dot_product_attention``; the CLS row of the attention matrix, which ADC
needs after the last client block, is computed on its own from one query (see
:meth:`Attention.forward`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..profiling import timed


@dataclass(frozen=True)
class ViTConfig:
    """A ViT's sizes, with timm's names: image and patch size, width, depth, heads."""
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}; "
                "choose sizes where the patches tile the image"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image, CLS included."""
        return (self.img_size // self.patch_size) ** 2 + 1


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> patch tokens ``[B, (H/p)*(W/p), D]`` by a strided convolution."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected images of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}; "
                "resize the input or build the model with a matching img_size"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, timm's layout (``qkv``, ``proj``); it can also return the CLS row of
    its attention, averaged over heads, from the CLS query alone."""
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cls_attn: bool = False):
        """``x [B, N, D]`` -> ``[B, N, D]``; with ``cls_attn`` also the CLS attention row ``[B, N]``.

        The row is ``mean_heads softmax(q_cls . K^T / sqrt(d_head))``, computed from the CLS query
        alone (``O(N)`` per head instead of the ``O(N^2)`` matrix that SDPA never materialises).
        It selects tokens and clusters samples, so it carries no gradient.
        """
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd] each
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(B, N, D))
        if not cls_attn:
            return out
        with torch.no_grad(), timed("cls_attention"):
            scores = q[:, :, :1] @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, H, 1, N]
            row = scores.float().softmax(dim=-1).mean(dim=1).squeeze(1)
        return out, row


class Mlp(nn.Module):
    """A block's MLP: ``fc1``, GELU, ``fc2`` (timm's names)."""
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, as timm's ``Block`` without layer scale or drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cls_attn: bool = False):
        if cls_attn:
            a, row = self.attn(self.norm1(x), cls_attn=True)
            x = x + a
            return x + self.mlp(self.norm2(x)), row
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def embed(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images ``[B, C, H, W]`` -> tokens ``[B, N, D]`` with CLS first and positions added.

    ``m`` is any module with timm's ``patch_embed``, ``cls_token`` and ``pos_embed``.
    """
    x = m.patch_embed(x)
    x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + m.pos_embed


class VisionTransformer(nn.Module):
    """ViT with class-token pooling. ``forward_features`` -> ``[B, N, D]``, ``forward_head`` -> logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default: truncated normal (std .02) for positions, CLS and linears, zero biases
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch tokens with CLS and positions, ``[B, N, D]``."""
        return embed(self, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the normed tokens after every block."""
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens -> logits, from CLS."""
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new head of ``num_classes`` outputs."""
        self.head = nn.Linear(self.cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.cfg = replace(self.cfg, num_classes=num_classes)


# Presets by name, as timm's factories. The small ones suit 32x32 inputs on a CPU.
PRESETS: dict[str, ViTConfig] = {
    "deit_tiny_patch16_224": ViTConfig(224, 16, embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": ViTConfig(224, 16, embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": ViTConfig(224, 16, embed_dim=768, depth=12, num_heads=12),
    "vit_tiny_patch4_32": ViTConfig(32, 4, embed_dim=192, depth=12, num_heads=3),
    "vit_mini_patch4_32": ViTConfig(32, 4, embed_dim=128, depth=6, num_heads=4),
    # the CPU protocol's model (docs/architecture.md): 17 tokens, so that the whole comparison fits two CPU cores
    "vit_nano_patch8_32": ViTConfig(32, 8, embed_dim=64, depth=8, num_heads=4),
}


def create_model(name: str, **overrides) -> VisionTransformer:
    """Build a preset by name; keyword arguments override any :class:`ViTConfig` field."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return VisionTransformer(replace(PRESETS[name], **overrides))
