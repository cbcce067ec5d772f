"""Building a run's pieces from its config: the model and its halves, the method, the optimizers. A client and a server on different machines each call these and get the same
initial weights as one process would.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..models import create_model, hub_checkpoint, load_checkpoint, split
from .config import ConfigError, run_method


def build_model(cfg: DictConfig, num_classes: int):
    """The ViT of a config: its preset and sizes, and its checkpoint or pretrained weights."""
    m = cfg.model
    model = create_model(
        m.name, num_classes=num_classes, img_size=m.img_size, patch_size=m.patch_size,
        embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
    )
    try:
        if m.checkpoint:
            load_checkpoint(model, m.checkpoint, new_head=bool(m.get("new_head", False)))
        elif m.pretrained:
            load_checkpoint(model, hub_checkpoint(m.name))
    except (OSError, RuntimeError, ValueError) as e:  # a missing file, no hub access, another model's weights
        raise ConfigError(f"cannot load the model's weights: {e}") from None
    return model


def build_halves(cfg: DictConfig, num_classes: int, device: torch.device):
    """Both halves and the method, from the seed: a remote client and server each call this and get the
    same initial weights as one process would. Returns (client_model, server_model, method, vit); each
    side builds its own side of the method (``method.client()``, ``method.server()``)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, num_classes).to(device)
    client_model, server_model = split(model, cfg.split.index)
    method = run_method(cfg, num_classes, model.cfg.num_tokens, model.cfg.embed_dim)
    return client_model, server_model, method, model.cfg


def make_optimizer(cfg: DictConfig, *modules: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer`` over ``params``, with ``train.lr`` and ``train.weight_decay``."""
    params = [p for m in modules for p in m.parameters()]
    kind = torch.optim.AdamW if cfg.train.get("optimizer", "adam") == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
