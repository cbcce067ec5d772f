"""ALaST: adaptive layer and token selection for fine-tuning (``finetune=alast``).

Devoto, Alvetreti, Pomponi, Di Lorenzo, Minervini, Scardapane, arXiv 2408.08670 (journal version:
"Adaptive Layer and Token Selection for Efficient Fine-Tuning of Vision Transformers", Neurocomputing
2025). No official code was published; this follows the paper's description, and where descriptions
disagree the choice is an option (``finetune.*``):

- importance of block l at step i: ``delta_l(i) = |CLS after l - CLS before l|^2``, per sample and
  averaged over the batch (``importance=sample``) or the batch's squared Frobenius norm (``batch``);
- budgets ``b_l`` in ``[b_min, 1]``, from ``b0``, updated after every training step as
  ``b_l += alpha (delta_l(i) - delta_l(i - 1))`` (``alpha`` defaults to the learning rate; the first
  step only records ``delta``);
- block l sees CLS and the top ``floor(b_l (N - 1))`` patch tokens by the previous block's CLS attention
  (``prune=before``), or keeps them after itself (``after``); dropped tokens stay dropped;
- ``K`` blocks train at each step, the ``K`` highest budgets (``select=top``) or ``K`` drawn without
  replacement with probability proportional to ``b`` (``sample``) or to ``softmax(b)`` (``softmax``);
  the others are frozen for the step.

The co-author's public code differs from the paper's description in four places, each an option here:
it scores importance by the batch's squared norm (``importance=batch``), starts budgets at 0.9
(``b0=0.9``), prunes after a block by that block's own attention (``prune=after``) and draws the K
blocks from ``softmax(budgets)`` (``select=softmax``).

One :class:`ALaST` schedules one stage of blocks: the whole model, a client's blocks or a server's
(each side of a split runs its own, with ``K`` shared out by the blocks it holds). Evaluation runs on
every token with nothing frozen, and budgets do not change.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models.alast import IMPORTANCE, PRUNE, Schedule, add_lora, keep_counts, patch
from ..profiling import timed

SELECT = ("top", "sample", "softmax")
WHERE = ("client", "server", "both")


class ALaST:
    """The controller of one stage: call :meth:`before_step` before a training step's forward and
    :meth:`after_step` after its backward; as a step mod (:mod:`.mods`) it does both around the step."""

    def __init__(self, blocks: nn.ModuleList, tokens: int, K: int, alpha: float, b0: float = 1.0, b_min: float = 0.5,
                 select: str = "top", prune: str = "before", importance: str = "sample", seed: int = 0,
                 lora: list[nn.Module] | None = None):
        L = len(blocks)
        for key, value, allowed in (("select", select, SELECT), ("prune", prune, PRUNE), ("importance", importance, IMPORTANCE)):
            if value not in allowed:
                raise ValueError(f"finetune.{key}={value!r} is not one of {', '.join(allowed)}")
        if not 0 < b_min <= 1 or not b_min <= b0 <= 1:
            raise ValueError(f"finetune.b_min={b_min} and finetune.b0={b0} must satisfy 0 < b_min <= b0 <= 1")
        if not isinstance(K, int) or not 1 <= K <= L:
            raise ValueError(f"finetune.K={K!r} must be an integer in [1, {L}] (blocks trained per step)")
        self.blocks, self.K, self.alpha, self.b_min, self.select = blocks, K, float(alpha), float(b_min), select
        self.lora = lora  # with LoRA, ALaST picks whose adapters train; the base weights stay frozen
        self.budgets = [float(b0)] * L
        self.previous: list[float] | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.schedule = Schedule(tokens, prune, importance)
        self.trained_counts = [0] * L  # steps each block trained, over the run
        patch(blocks, self.schedule)

    def trainable(self, i: int) -> list[nn.Parameter]:
        """The parameters block ``i`` trains when chosen (its adapters with LoRA)."""
        return list((self.lora[i] if self.lora is not None else self.blocks[i]).parameters())

    def before_step(self) -> None:
        """Choose the blocks that train this step and each block's token budget."""
        L = len(self.budgets)
        b = torch.tensor(self.budgets)
        if self.select == "top":
            chosen = set(b.topk(self.K, sorted=False).indices.tolist()) if self.K < L else set(range(L))
        else:  # drawn without replacement: in proportion to b (sample), or to softmax(b) (the co-author's code)
            weights = b if self.select == "sample" else b.softmax(0)
            chosen = set(torch.multinomial(weights, self.K, replacement=False, generator=self.generator).tolist())
        s = self.schedule
        s.keep = keep_counts(self.budgets, s.tokens)
        s.frozen = [i not in chosen for i in range(L)]
        s.delta, s.seen, s._rank = [0.0] * L, [s.tokens] * L, None
        for i in range(L):
            for p in self.trainable(i):
                p.requires_grad_(i in chosen)  # Adam skips a parameter with no gradient: its state is untouched
            self.trained_counts[i] += i in chosen

    def after_step(self) -> None:
        """Move each block's budget by its importance's change (step ``alpha``), within ``[b_min, 1]``."""
        delta = list(self.schedule.delta)
        if self.previous is not None:
            self.budgets = [min(1.0, max(self.b_min, b + self.alpha * (d - p)))
                            for b, d, p in zip(self.budgets, delta, self.previous)]
        self.previous = delta
        self.schedule.keep = []  # between steps (evaluation included) the blocks run stock

    def __call__(self, step, call_next):
        self.before_step()
        out = call_next(step)
        self.after_step()
        return out

    def summary(self) -> dict:
        """Budgets and how often each block trained, for the run files."""
        s = self.schedule
        return {"budgets": [round(b, 4) for b in self.budgets], "tokens": list(s.seen),
                "trained_share": [round(c / max(1, sum(self.trained_counts) / self.K), 4) for c in self.trained_counts]}

    def state_dict(self) -> dict:
        """The budgets and counters, for a checkpoint."""
        return {"budgets": self.budgets, "previous": self.previous, "generator": self.generator.get_state(),
                "trained_counts": self.trained_counts}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.budgets, self.previous = list(state["budgets"]), state["previous"]
        self.generator.set_state(state["generator"])
        self.trained_counts = list(state["trained_counts"])


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """A training step's end, wherever the loss is taken: backward and the optimizer's step, timed as
    phases under ``train.profile`` (ALaST's budget update comes after, from its step mod)."""
    with timed("backward"):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with timed("step"):
        optimizer.step()


def stage_K(K: int, blocks: int, depth: int) -> int:
    """A side's share of ``K``: the blocks it trains per step, in proportion to the blocks it holds."""
    return max(1, min(blocks, round(K * blocks / depth)))


def build_alast(cfg, model: nn.Module, tokens: int, depth: int, side: str = "whole") -> ALaST | None:
    """ALaST for ``model``'s blocks (``side``: ``whole``, ``client`` or ``server``, a stage of a model of
    ``depth`` blocks) from ``cfg.finetune``, or ``None`` when it does not run there. Call it before the
    optimizer is built: LoRA adds parameters. Freezes the embeddings unless ``finetune.train_embed``."""
    f = cfg.get("finetune")
    if f is None or f.name != "alast" or (side != "whole" and f.where not in (side, "both")):
        return None
    blocks = nn.ModuleList(model.blocks.values() if isinstance(model.blocks, nn.ModuleDict) else model.blocks)
    if not f.train_embed:
        for name in ("patch_embed", "cls_token", "pos_embed"):
            for p in ([getattr(model, name)] if isinstance(getattr(model, name, None), nn.Parameter)
                      else getattr(model, name).parameters() if hasattr(model, name) else []):
                p.requires_grad_(False)
    first = 0 if side != "server" else depth - len(blocks)
    K = f.K if f.K is not None else math.ceil(depth / 2)
    lora = add_lora(blocks, f.lora_rank, f.get("lora_alpha"), seed=cfg.seed * 7919 + first) if f.lora else None
    return ALaST(blocks, tokens, stage_K(K, len(blocks), depth), cfg.train.lr if f.alpha is None else f.alpha,
                 b0=f.b0, b_min=f.b_min, select=f.select, prune=f.prune, importance=f.importance,
                 seed=cfg.seed + first, lora=lora)
