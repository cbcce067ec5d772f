"""Load timm-layout ViT weights: from a local file or from a ``timm/<name>`` repo on the Hugging Face hub."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .vit import VisionTransformer

log = logging.getLogger(__name__)

# The hub repo each preset's pretrained weights come from (timm's default tag for the name).
HUB_REPOS = {
    "deit_tiny_patch16_224": "timm/deit_tiny_patch16_224.fb_in1k",
    "deit_small_patch16_224": "timm/deit_small_patch16_224.fb_in1k",
    "deit_base_patch16_224": "timm/deit_base_patch16_224.fb_in1k",
}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt`` file; unwraps ``{"model": ...}`` and ``module.``."""
    path = find_checkpoint(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: a checkpoint is data, never code to run
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, zip and unpickling errors all mean one thing here
        raise ValueError(f"{path} cannot be read as a weights file ({type(e).__name__}: {e}); "
                         "it may be truncated or not a checkpoint: fetch or export it again") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


# the checkout this package runs from, when it runs from one (an editable install): committed
# checkpoints such as pretrained/*.safetensors live there, not in the wheel
REPO_ROOT = Path(__file__).resolve().parents[3]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or, for a relative path that is not there, the same path in the splitvit checkout."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (REPO_ROOT / path).is_file():
        return REPO_ROOT / path
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a timm-layout .safetensors or .pth file")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file (a ``splitvit export`` records its provenance there)."""
    from safetensors import safe_open

    with safe_open(str(find_checkpoint(path)), "pt") as f:
        return dict(f.metadata() or {})


def resample_pos_embed(pos_embed: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[1, 1 + g*g, D]`` -> ``[1, num_tokens, D]``: bicubic on the patch grid, CLS kept as is."""
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old, new = math.isqrt(grid.shape[1]), math.isqrt(num_tokens - 1)
    if old * old != grid.shape[1] or new * new != num_tokens - 1:
        raise ValueError("position embeddings must cover a square patch grid")
    D = grid.shape[-1]
    grid = grid.reshape(1, old, old, D).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False, antialias=old > new)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, new * new, D).to(pos_embed.dtype)], dim=1)


def load_weights(model: VisionTransformer, state: dict[str, torch.Tensor], new_head: bool = False) -> None:
    """Load a timm-layout state dict into ``model``.

    Position embeddings are resampled when the patch grid differs; the head is left as initialised
    when the number of classes differs (fine-tuning on a new dataset), or always with ``new_head``
    (fine-tuning on other classes of the same count). Any other mismatch is an error.
    """
    state = dict(state)
    own = model.state_dict()
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        log.info("resampling pos_embed %s -> %s", tuple(state["pos_embed"].shape), tuple(own["pos_embed"].shape))
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], own["pos_embed"].shape[1])
    head_replaced = new_head or any(k in state and state[k].shape != own[k].shape for k in ("head.weight", "head.bias"))
    if head_replaced:
        log.info("keeping a new head (%d classes) instead of the checkpoint's", own["head.weight"].shape[0])
        state.pop("head.weight", None)
        state.pop("head.bias", None)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - ({"head.weight", "head.bias"} if head_replaced else set()))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        raise ValueError(
            "checkpoint does not fit the model: "
            + "; ".join(
                f"{what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                for what, keys in (("unexpected", unexpected), ("missing", missing), ("shape differs", wrong))
                if keys
            )
            + ". Check model= against the checkpoint's architecture"
        )
    model.load_state_dict(state, strict=False)


def load_checkpoint(model: VisionTransformer, path: str | Path, new_head: bool = False) -> None:
    """Load a timm-layout ``.safetensors`` or ``.pth`` into ``model``: position embeddings resampled when the
    grid differs, the head kept new when the class count differs (or ``new_head``)."""
    load_weights(model, read_state_dict(path), new_head=new_head)


def hub_checkpoint(name: str) -> Path:
    """Download (or find in the local cache) the ``model.safetensors`` of a preset's hub repo."""
    if name not in HUB_REPOS:
        raise ValueError(f"no pretrained weights known for {name!r}; known: {', '.join(sorted(HUB_REPOS))}. Use model.checkpoint=PATH instead")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    missing = RuntimeError(
        f"could not fetch {HUB_REPOS[name]} from the Hugging Face hub and it is not in the local cache "
        "(offline, or HF_HUB_OFFLINE=1). Download it once where you are online, or pass model.checkpoint=PATH"
    )
    try:  # the cache first: no network, no retries
        return Path(huggingface_hub.hf_hub_download(HUB_REPOS[name], "model.safetensors", local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if not hub_reachable():  # offline: say so at once rather than after the client's retries
        raise missing
    try:
        return Path(huggingface_hub.hf_hub_download(HUB_REPOS[name], "model.safetensors"))
    except LocalEntryNotFoundError as e:
        raise missing from e


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection (``HF_HUB_OFFLINE=1`` says no without asking)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False
