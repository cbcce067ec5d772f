"""ViT models with timm's names, presets by name, pretrained loading, and the client/server split."""

from .pretrained import HUB_REPOS, find_checkpoint, hub_checkpoint, load_checkpoint, load_weights, read_metadata, read_state_dict
from .split import ClientModel, ServerModel, split
from .vit import PRESETS, VisionTransformer, ViTConfig, create_model

__all__ = [
    "HUB_REPOS", "PRESETS", "ClientModel", "ServerModel", "ViTConfig", "VisionTransformer",
    "create_model", "find_checkpoint", "hub_checkpoint", "read_metadata", "load_checkpoint", "load_weights", "read_state_dict", "split",
]
