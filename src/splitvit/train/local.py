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
from .evaluation import score
from .precision import autocast


def _no_messages(payload: bytes) -> bytes:
    raise RuntimeError("a model trained in one piece sends no messages")


class LocalTrainer:
    def __init__(self, model: VisionTransformer, optimizer: torch.optim.Optimizer, bf16: bool = False):
        self.model = model
        self.optimizer = optimizer
        self.bf16 = bf16
        self.exchange = Exchange(InProcessLink(_no_messages))
        self.alast = None  # finetune=alast (splitvit.train.alast)
        self.inspector = None  # train.inspect (split runs only)
        # what the loop records beside the step (splitvit.train.whole.instrument)
        self.profilers: dict = {}  # train.profile=true: a Profiler per side this process runs
        self.flop_every = 0  # the profilers count FLOPs (not time) on every flop_every-th step
        self.stages: dict = {}  # ALaST's controllers by side, for the run files

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
        self.model.train()
        if self.alast is not None:
            self.alast.before_step()
        with timed("forward"), autocast(images.device, self.bf16):
            logits = self.model(images)
            loss = F.cross_entropy(logits.float(), labels)
        update(loss, self.optimizer, self.alast)
        return loss.item()

    @torch.no_grad()
    def evaluate(self, batches, mode: str) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches`` (``mode`` does not apply: nothing is compressed)."""
        self.model.eval()
        return score((self._logits(images), labels) for images, labels in batches)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.bf16):
            return self.model(images)
