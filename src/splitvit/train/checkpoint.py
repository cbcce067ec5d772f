"""Checkpoints, written atomically. A split run saves its clients' side (and, in a simulation, the
server's) in ``clients.pt`` (:mod:`.clients`); a server process saves each round's state beside its
run (:class:`~.hub.Hub`), so client and server may live on different machines and each resumes from
its own disk. A model trained in one piece saves ``client.pt`` (:func:`save_client`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .alast import ALaST
from .config import ConfigError, resume_mismatch
from .mods import find
from .state import CAPS, Progress


def atomic_save(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash or a power loss leaves the old file or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint whole
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # and the rename itself survives a power loss
    finally:
        os.close(fd)


def load_checkpoint_file(path: Path, map_location="cpu") -> dict:
    """``torch.load`` of a checkpoint, with an error that names the file and what to do when it is damaged."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a foreign pickle: the file is unusable either way
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]}); it is damaged or truncated. "
            "Delete it to resume from the checkpoint before it (the server keeps two), or start the run again"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not a splitvit checkpoint")
    return state


def save_client(path: Path, cfg: DictConfig, client, codec, progress) -> None:
    atomic_save({
        "config": OmegaConf.to_container(cfg, resolve=True),
        "client": client.model.state_dict(),
        "client_optimizer": client.optimizer.state_dict(),
        "compressor": codec.state_dict(),  # the client's side of the method only
        "progress": asdict(progress),
        "torch_rng": torch.get_rng_state(),
        **({"alast": find(client.mods, ALaST).state_dict()} if find(client.mods, ALaST) is not None else {}),
    }, path)


def load_resumable(path: Path, cfg: DictConfig) -> dict:
    """The checkpoint a run resumes from; refused when missing or another experiment's."""
    if not path.is_file():
        raise ConfigError(f"train.resume=true but {path} does not exist; pass the run_dir of the run to resume")
    state = load_checkpoint_file(path)
    diff = resume_mismatch(state["config"], cfg)
    if diff:
        raise ConfigError("cannot resume a different experiment; these keys differ: " + "; ".join(diff))
    return state


def load_client(path: Path, cfg: DictConfig, client, codec):
    """Restore the client's half and return the run's :class:`Progress`; refuse another experiment's checkpoint."""
    state = load_resumable(path, cfg)
    client.model.load_state_dict(state["client"])
    client.optimizer.load_state_dict(state["client_optimizer"])
    codec.load_state_dict(state["compressor"])
    torch.set_rng_state(state["torch_rng"])
    if find(client.mods, ALaST) is not None:
        find(client.mods, ALaST).load_state_dict(state["alast"])
    progress = Progress.from_state(state["progress"])
    if not progress.caps:  # a checkpoint from before caps were recorded: its config has them
        progress.caps = {k: state["config"].get("train", {}).get(k) for k in CAPS}
    return progress
