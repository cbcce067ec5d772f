"""The keys the shipped configs define and their defaults, read from the option files alone.

Light on purpose (PyYAML, no torch): ``splitvit report`` reads every run's ``config.yaml`` through
:func:`with_defaults`, and its start-up should not pay for the training stack.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

GROUPS = ("method", "codec", "compression_schedule", "dataset", "model", "link", "logger", "channel", "finetune")  # config groups whose option files hold a key's subtree


def leaves(tree, prefix: str = "") -> dict:
    """A nested config as flat dotted keys (``train.lr``), lists kept as values."""
    out = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def nest(flat: dict) -> dict:
    """The inverse of :func:`leaves`: flat dotted keys back into a nested config."""
    out: dict = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def under(flat: dict, keys) -> dict:
    """The leaves of ``flat`` at or below any of ``keys`` (``method`` takes ``method.name``, ``method.k``...)."""
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(f"{key}.") for key in keys)}


def _conf():
    return resources.files("splitvit") / "conf"


@lru_cache(maxsize=1)
def known_keys() -> tuple[dict, dict[str, dict[str, dict]]]:
    """The keys the shipped configs define, with their default values: ``(top-level keys, {group: {option: keys}})``."""
    top = yaml.safe_load(_conf().joinpath("config.yaml").read_text())
    top = leaves({k: v for k, v in top.items() if k not in ("defaults", "hydra")})
    groups = {}
    for group in GROUPS:
        groups[group] = {f.name[:-5]: leaves(yaml.safe_load(f.read_text()), f"{group}.")
                         for f in _conf().joinpath(group).iterdir() if f.name.endswith(".yaml")}
    return top, groups


@lru_cache(maxsize=1)
def default_options() -> dict[str, str]:
    """The option each config group takes where a config chooses none: ``config.yaml``'s defaults list."""
    listed = yaml.safe_load(_conf().joinpath("config.yaml").read_text())["defaults"]
    return {group: item[group] for item in listed if isinstance(item, dict) for group in item if group in GROUPS}


def option_key(group: str) -> str:
    """The key that names a group's option: ``link.kind``, ``method.name``."""
    return f"{group}.{'kind' if group == 'link' else 'name'}"


def with_defaults(flat: dict) -> dict:
    """A run's config as flat dotted leaves, with every key it lacks set to its default: the top level's,
    and each group's for the option the run chose (the default option for a group the run has no key
    of, as a checkpoint from before channels). That is what the code did before the key existed.
    A group whose option splitvit does not ship (a user's own method) has no defaults to take."""
    top, groups = known_keys()
    out = {**top, **flat}
    for group in GROUPS:
        has_group = any(k.startswith(f"{group}.") for k in flat)
        option = flat.get(option_key(group)) if has_group else default_options()[group]
        for key, value in (groups[group].get(option, {}) if isinstance(option, str) else {}).items():
            out.setdefault(key, value)
    return out


def load_run_config(path) -> dict:
    """A run's saved ``config.yaml`` as a nested dict (interpolations kept), with the keys it predates
    at their defaults: what that run ran with, readable by today's code."""
    from omegaconf import OmegaConf

    return nest(with_defaults(leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=False))))
