"""The whole model in one piece (``split.index=null``): pretraining, or fine-tuning without a split.

:class:`LocalTrainer` has the interface of :class:`~splitvit.train.client.SplitClient` (``train_step``,
``evaluate``, an exchange path), so the loop, the checkpoints and the run files are the
same for both; nothing crosses a link, so every byte count stays 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..link import Exchange, InProcessLink
from ..models import VisionTransformer
from ..profiling import timed
from .alast import update
from .mods import Step, StepMod, through
from .evaluation import score
from .precision import autocast


def _no_messages(payload: bytes) -> bytes:
    raise RuntimeError("a model trained in one piece sends no messages")


class LocalTrainer:
    """The model in one piece, its optimizer, and its step mods (:mod:`.mods`: the profiler, ALaST)."""

    def __init__(self, model: VisionTransformer, optimizer: torch.optim.Optimizer, bf16: bool = False,
                 mods: list[StepMod] = ()):
        self.model = model
        self.optimizer = optimizer
        self.bf16 = bf16
        self.exchange = Exchange(InProcessLink(_no_messages))
        self.mods = list(mods)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
        """One step of the model in one piece; returns the loss."""
        return through(self.mods, Step(step), lambda _: self._step(images, labels))

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        with timed("forward"), autocast(images.device, self.bf16):
            logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels)
        update(loss, self.optimizer)
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches, mode: str) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches`` (``mode`` does not apply: nothing is compressed)."""
        self.model.eval()
        return score((self._logits(images), labels) for images, labels in batches)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.bf16):
            return self.model(images)
