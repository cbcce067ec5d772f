"""Checkpoints, written atomically. A split run saves its clients' side (and, in a simulation, the
server's) in ``clients.pt`` (:mod:`.clients`); a server process saves each round's state beside its
run (:class:`~.hub.Hub`), so client and server may live on different machines and each resumes from
its own disk. A model trained in one piece saves ``client.pt`` (:func:`save_client`)."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .alast import ALaST
from .config import ConfigError, resume_mismatch
from .mods import find
from .state import CAPS, Progress


def checksum_file(path: Path) -> Path:
    """Where a checkpoint's SHA-256 is kept: beside it, ``<name>.sha256``."""
    return path.with_name(path.name + ".sha256")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # a rename survives a power loss
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)  # atomic: a crash leaves the previous file whole


def atomic_save(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash or a power loss leaves the old file or the new one, whole,
    with its SHA-256 beside it (:func:`checksum_file`), which every load checks: bytes that change on disk
    afterwards (bit rot, a partial copy) are caught. The checksum file is replaced first and lists the new
    digest and the one before, so that a crash between the two renames leaves a pair that still agrees."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    sums = checksum_file(path)
    before = sums.read_text().split()[:1] if sums.is_file() and path.is_file() else []
    _write(sums, ("\n".join([hashlib.sha256(data).hexdigest(), *before]) + "\n").encode())
    _write(path, data)
    _fsync_dir(path.parent)


def _advice(path: Path) -> str:
    if path.name.startswith("round-"):  # a server's round: it keeps the one before too
        return "Delete it (and its .sha256): the server resumes from the round it saved before it"
    return ("This run keeps no checkpoint before it: start the run again in a new run_dir, or restore the file "
            "from a copy")


def load_checkpoint_file(path: Path, map_location="cpu") -> dict:
    """A checkpoint, checked against its SHA-256 where it has one, with an error that names the file and
    what to do when it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"checkpoint {path} cannot be read ({e})") from None
    sums = checksum_file(path)
    if sums.is_file() and hashlib.sha256(data).hexdigest() not in sums.read_text().split():
        raise ConfigError(f"checkpoint {path} does not match its checksum ({sums.name}): its bytes changed on disk "
                          f"(bit rot, a truncated or partial copy). {_advice(path)}")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated zip, a foreign pickle: the file is unusable either way
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:120]}); it is damaged or truncated. "
            f"{_advice(path)}"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not a splitvit checkpoint")
    return state


def save_client(path: Path, cfg: DictConfig, client, codec, progress) -> None:
    """Save a client's checkpoint: its half, optimizer, method state, place in its data and RNG state."""
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
