"""The paper's training augmentation, batched on the training device (kornia: torch-only, no torchvision).

As in the ADC research code: RandAugment(2, 9), ColorJitter(0.4, 0.4, 0.4), horizontal flip; the
resize to the model input happens before (:func:`~splitvit.data.base.prepare`) and the
normalisation (ImageNet statistics with pretrained DeiT) after. Every sample of a batch draws its
own operations and magnitudes.
"""

from __future__ import annotations

import torch

AUGMENTATIONS = ("none", "paper")


class Augment:
    """``augment(x, key)``: ``x`` float ``[B, 3, H, W]`` in [0, 1] -> the same shape, augmented.

    The draws come from a generator seeded by ``key`` (the loop's seed, epoch and batch), not from
    the global one, so a resumed run and a run over the network see the same augmented images.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, jitter: float = 0.4, flip: float = 0.5):
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.pipeline = torch.nn.Sequential(
            RandAugment(n=num_ops, m=magnitude),
            K.ColorJitter(jitter, jitter, jitter, p=1.0),
            K.RandomHorizontalFlip(p=flip),
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, key: int | None) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"augmentation needs RGB images [B, 3, H, W], got {tuple(x.shape)}; use dataset.augment=none")
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # kornia draws from the global generator: fence it
            if key is not None:
                torch.manual_seed(key)
            return self.pipeline(x).clamp_(0, 1)


def build_augment(name: str) -> Augment | None:
    """The training augmentation of ``dataset.augment`` (``paper``: RandAugment(2, 9), ColorJitter(0.4) and a
    flip, batched on the device; ``none``), or ``None``."""
    if name == "none":
        return None
    if name == "paper":
        return Augment()
    raise ValueError(f"dataset.augment={name!r} is not allowed; choose one of: {', '.join(AUGMENTATIONS)}")
