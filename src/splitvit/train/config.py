"""Checks on a whole config before anything is built, so that a run that cannot work never starts."""

from __future__ import annotations

from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf

from ..compression import EVAL_MODES, METHODS, WIRE_DTYPES, build_compressor
from ..data import DATASETS
from ..models import PRESETS

DEVICES = ("cpu", "cuda", "auto")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what it may be."""


def method_options(method: DictConfig) -> dict:
    """The method's knobs: its config group without ``name``, nulls dropped."""
    opts = OmegaConf.to_container(method, resolve=True)
    return {k: v for k, v in opts.items() if k != "name" and v is not None}


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _at_least(key: str, value, low, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key}={value!r} must be a number >= {low}{' (or null)' if optional else ''}")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work."""
    _choice("method", cfg.method.name, METHODS)
    _choice("dataset", cfg.dataset.name, DATASETS)
    _choice("model", cfg.model.name, PRESETS)
    _choice("eval.mode", cfg.eval.mode, EVAL_MODES)
    _choice("wire.dtype", cfg.wire.dtype, WIRE_DTYPES)
    _choice("device", cfg.device, DEVICES)
    _at_least("train.batch_size", cfg.train.batch_size, 1)
    _at_least("eval.batch_size", cfg.eval.batch_size, 1)
    _at_least("train.epochs", cfg.train.epochs, 1)
    _at_least("train.max_steps", cfg.train.max_steps, 1, optional=True)
    _at_least("train.budget_epochs", cfg.train.budget_epochs, 1e-9, optional=True)
    _at_least("train.lr", cfg.train.lr, 1e-12)
    _at_least("split.index", cfg.split.index, 1)
    m = cfg.model
    try:
        vit = replace(PRESETS[m.name], **{k: m[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads") if m[k] is not None})
        compressor = build_compressor(
            cfg.method.name, 2, vit.num_tokens, vit.embed_dim, wire_dtype=cfg.wire.dtype, **method_options(cfg.method)
        )
        compressor.check_batch(cfg.train.batch_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if cfg.split.index > vit.depth:
        raise ConfigError(f"split.index={cfg.split.index} must be in [1, {vit.depth}] for a model of depth {vit.depth}")
    if cfg.eval.mode == "tokens":
        try:
            compressor.eval_token_ratio()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# keys whose change would make a resumed run a different experiment
RESUME_KEYS = ("seed", "method", "dataset", "model", "split", "train.batch_size", "train.lr", "train.weight_decay", "wire")


def resume_mismatch(saved: dict, cfg: DictConfig) -> list[str]:
    now = OmegaConf.to_container(cfg, resolve=True)
    out = []
    for key in RESUME_KEYS:
        a, b = saved, now
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            out.append(f"{key}: checkpoint {a!r}, now {b!r}")
    return out
