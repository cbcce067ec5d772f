"""Checkpoints of both halves, their optimizers, the compressor and the run's progress, written atomically."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, resume_mismatch


def save_checkpoint(path: Path, cfg: DictConfig, client, server, compressor, progress) -> None:
    state = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "client": client.model.state_dict(),
        "client_optimizer": client.optimizer.state_dict(),
        "server": server.model.state_dict(),
        "server_optimizer": server.optimizer.state_dict(),
        "compressor": compressor.state_dict(),
        "progress": asdict(progress),
        "torch_rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint whole


def load_checkpoint_state(path: Path, cfg: DictConfig, client, server, compressor):
    from .loop import Progress

    if not path.is_file():
        raise ConfigError(f"train.resume=true but {path} does not exist; pass the run_dir of the run to resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    diff = resume_mismatch(state["config"], cfg)
    if diff:
        raise ConfigError("cannot resume a different experiment; these keys differ: " + "; ".join(diff))
    client.model.load_state_dict(state["client"])
    client.optimizer.load_state_dict(state["client_optimizer"])
    server.model.load_state_dict(state["server"])
    server.optimizer.load_state_dict(state["server_optimizer"])
    compressor.load_state_dict(state["compressor"])
    torch.set_rng_state(state["torch_rng"])
    progress = Progress(**state["progress"])
    client.train_traffic.up, client.train_traffic.down = progress.bytes_up, progress.bytes_down
    client.eval_traffic.up, client.eval_traffic.down = progress.eval_bytes_up, progress.eval_bytes_down
    return progress
