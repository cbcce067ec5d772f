"""ALaST's per-block schedule as a thin patch over a ViT's blocks (as ToMe patches timm's blocks).

ALaST (Devoto et al., arXiv 2408.08670; Neurocomputing 2025) fine-tunes with fewer tokens in the
blocks that matter less and trains only some blocks at each step. The algorithm (budgets, which
blocks train) lives in :mod:`splitvit.train.alast`; here is only what a block does with the
schedule it is given:

- ``keep[i]``: how many tokens block ``i`` sees (CLS included). With ``prune="before"`` the block's
  input is cut to CLS plus the patch tokens the *previous* block's CLS attention ranked highest
  (block 0 has none before it and sees all); with ``"after"`` its output is cut by its own CLS
  attention. A dropped token stays dropped: the count never grows along the blocks.
- ``frozen[i]``: the block runs under ``torch.no_grad()`` when nothing before it needs a gradient
  (a frozen prefix stores no activations); later frozen blocks pass gradients through but have none
  of their own (their parameters' ``requires_grad`` is off).
- ``delta[i]``: the block's importance this step, ``|CLS_out - CLS_in|^2`` per sample averaged over
  the batch (or, with ``importance="batch"``, the batch's squared Frobenius norm).

The patch acts in training mode only: evaluation runs the stock blocks on every token.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

PRUNE = ("before", "after")
IMPORTANCE = ("sample", "batch")


@dataclass
class Schedule:
    """What each patched block does this step; written by the controller, read by the blocks."""

    tokens: int  # N: the full token count, CLS included
    prune: str = "before"
    importance: str = "sample"
    keep: list[int] = field(default_factory=list)  # tokens each block sees (before) or keeps (after)
    frozen: list[bool] = field(default_factory=list)
    delta: list[float] = field(default_factory=list)  # measured this step
    seen: list[int] = field(default_factory=list)  # tokens each block actually ran on this step
    _rank: torch.Tensor | None = None  # the previous block's CLS attention [B, n]


def prune_tokens(x: torch.Tensor, scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS and the ``keep - 1`` patch tokens of ``x [B, n, D]`` with the highest ``scores [B, n]``, in
    their original order: ``([B, keep, D], scores of the kept [B, keep])``."""
    B, n, D = x.shape
    if keep >= n:
        return x, scores
    top = scores[:, 1:].topk(keep - 1, dim=1).indices.sort(dim=1).values + 1
    idx = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=x.device), top], dim=1)
    return x.gather(1, idx[..., None].expand(-1, -1, D)), scores.gather(1, idx)


def _importance(before: torch.Tensor, after: torch.Tensor, how: str) -> float:
    d = (after.detach().float() - before.detach().float()).pow(2).sum(-1)  # [B]
    return d.sum().item() if how == "batch" else d.mean().item()


def patch(blocks: nn.ModuleList, schedule: Schedule, first: int = 0) -> None:
    """Make ``blocks`` follow ``schedule`` in training mode (``first``: the schedule index of ``blocks[0]``,
    so that a client's and a server's blocks can share one numbering). Idempotent."""
    for j, blk in enumerate(blocks):
        if getattr(blk, "_alast", None) is not None:
            blk._alast = (schedule, first + j)
            continue
        blk._alast = (schedule, first + j)
        stock = blk.forward

        def forward(x: torch.Tensor, cls_attn: bool = False, _blk=blk, _stock=stock):
            s, i = _blk._alast
            if not _blk.training or not s.keep:
                return _stock(x, cls_attn=cls_attn)
            if s.prune == "before" and s._rank is not None and s.keep[i] < x.shape[1]:
                x, _ = prune_tokens(x, s._rank, s.keep[i])
            quiet = s.frozen[i] and not x.requires_grad  # nothing before needs a gradient: store nothing
            with torch.no_grad() if quiet else contextlib.nullcontext():
                out, row = _stock(x, cls_attn=True)
            s.delta[i] = _importance(x[:, 0], out[:, 0], s.importance)
            s.seen[i] = x.shape[1]
            if s.prune == "after" and s.keep[i] < out.shape[1]:
                out, row = prune_tokens(out, row, s.keep[i])
            s._rank = row
            return (out, row) if cls_attn else out

        blk.forward = forward


def keep_counts(budgets: list[float], tokens: int) -> list[int]:
    """Tokens per block: CLS plus ``floor(b (N - 1))`` patches, never more than the block before."""
    out, last = [], tokens
    for b in budgets:
        last = min(last, 1 + math.floor(b * (tokens - 1) + 1e-9))
        out.append(max(last, 1))
    return out


class LoRA(nn.Module):
    """A rank-``r`` adapter beside a frozen ``nn.Linear``: ``y = W x + b + (alpha / r) B A x`` with ``B = 0``
    at the start, so the adapted model is the base model exactly until it trains (Hu et al. 2021)."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / math.sqrt(linear.in_features)  # nn.Linear's own init (Kaiming uniform, a = sqrt(5))
        self.A = nn.Parameter((torch.rand(rank, linear.in_features, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(linear.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t() * self.scale


def add_lora(blocks: nn.ModuleList, rank: int, alpha: float | None = None, seed: int = 0) -> list[nn.Module]:
    """Rank-``rank`` adapters on every block's attention (qkv, proj) and MLP (fc1, fc2) projections, as
    forward hooks that add the low-rank term, so that the base weights keep timm's names. Base weights of
    the blocks are frozen. Returns each block's adapters as one module (for the optimizer and the schedule)."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"finetune.lora_rank must be a positive integer, got {rank!r}")
    out = []
    for j, blk in enumerate(blocks):
        adapters = nn.ModuleDict()
        # seeded per block: a client and a server process build the same adapters for the same blocks
        g = torch.Generator().manual_seed(seed * 1009 + j)
        for name, lin in (("qkv", blk.attn.qkv), ("proj", blk.attn.proj), ("fc1", blk.mlp.fc1), ("fc2", blk.mlp.fc2)):
            lora = LoRA(lin, rank, float(alpha if alpha is not None else rank), g).to(lin.weight.device)
            adapters[name] = lora
            lin.register_forward_hook(lambda mod, inp, y, _l=lora: y + _l(inp[0]))
        for p in blk.parameters():
            p.requires_grad_(False)
        blk.lora = adapters  # registered on the block: saved with it, moved with it
        for p in adapters.parameters():
            p.requires_grad_(True)
        out.append(adapters)
    return out
