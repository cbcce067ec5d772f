"""One client and its server's session in this process, outside a run: the pieces a benchmark or a
test drives step by step (``client.train_step(images, labels, step)``), with every message
serialised and checked as in a run. The session has no referee: each step is applied as it comes."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..link import CountBytes, Exchange, InProcessLink
from .build import build_halves, make_optimizer
from .client import SplitClient
from .server import ServerHalf, Session
from .state import Progress


def build_pair(cfg: DictConfig, num_classes: int, device: torch.device | str = "cpu",
               progress: Progress | None = None) -> tuple[SplitClient, Session, Progress, object]:
    """Client 0 of ``cfg``, a session on its own server half, the :class:`~splitvit.train.state.Progress`
    that counts the bytes, and the model's geometry (``ViTConfig``)."""
    device = torch.device(device)
    client_model, server_model, method, vit = build_halves(cfg, num_classes, device)
    bf16 = cfg.train.precision == "bf16"
    server = method.server().to(device)  # each side its own, as in a run
    half = ServerHalf(server_model, server, make_optimizer(cfg, server_model, server.modules), bf16)
    session = Session(half, cfg.train.batch_size, vit.num_tokens, vit.embed_dim, max_eval_batch=cfg.eval.batch_size)
    progress = progress or Progress()
    codec = method.client().to(device)
    client = SplitClient(client_model, codec, make_optimizer(cfg, client_model, codec.modules),
                         Exchange(InProcessLink(session.handle), [CountBytes(progress)]), num_classes, bf16=bf16)
    return client, session, progress, vit
