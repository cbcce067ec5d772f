"""What the method does to a training step, measured at the cut (``train.inspect=true``; off by default,
to keep the step lean). Means over the training steps since the last evaluation, in ``metrics.jsonl``.

- ``attention_entropy_bits``: the entropy of each sample's CLS-attention row at the cut (over its N
  tokens; log2 N when uniform): how peaked the attention that ADC selects and clusters by is.
- ``cluster_label_entropy_bits`` and ``clusters_mixed`` (methods that merge samples, as ADC, whose soft
  labels are the means of their members' one-hots): the entropy of a cluster's label mix (0 when pure),
  and the share of clusters holding more than one class.
- ``grad_norm_sent``: the norm of the gradient that came back, on what was sent (``dL/dz``, compressed);
  ``grad_norm_cut``: the norm of the gradient at the cut's activations after the client propagated it
  back through the method (``dL/dh``, ``[B, N, D]``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..compression.merge import merged_targets


def entropy_bits(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each row of the distributions ``p [..., K]``."""
    p = p.float()
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(-1)


class Inspector:
    """``train.inspect=true`` as a step mod (:mod:`.mods`): each step's figures, means since the last
    :meth:`summary`."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: float) -> None:
        """Add one value of the measure ``name`` to this interval's mean."""
        self.sums[name] += value
        self.counts[name] += 1

    @torch.no_grad()
    def observe(self, cls_attn: torch.Tensor, message: dict[str, torch.Tensor]) -> None:
        """One step's attention at the cut and, for a method that merges samples, its clusters."""
        self.add("attention_entropy_bits", entropy_bits(cls_attn).mean().item())
        self.add("attention_entropy_uniform_bits", math.log2(cls_attn.shape[-1]))
        targets = message.get("targets")
        if targets is None and "members" in message:  # ADC's merged_labels=members: the same soft labels
            members = message["members"].long()
            targets = merged_targets(message["labels"], members, int(message["labels"].max()) + 1, int(members.max()) + 1)
        if targets is not None:
            self.add("cluster_label_entropy_bits", entropy_bits(targets).mean().item())
            self.add("clusters_mixed", (targets.max(-1).values < 1 - 1e-6).float().mean().item())

    def __call__(self, step, call_next):
        step.cut_grad_hooks.append(lambda g: self.add("grad_norm_cut", g.float().norm().item()))
        out = call_next(step)
        self.observe(step.cls_attn, step.message)
        self.add("grad_norm_sent", step.grad.float().norm().item())
        return out

    def summary(self) -> dict:
        """The means since the last call; then it starts over."""
        out = {k: round(self.sums[k] / self.counts[k], 6) for k in sorted(self.sums)}
        self.sums.clear()
        self.counts.clear()
        return out
