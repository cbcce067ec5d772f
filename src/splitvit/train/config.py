"""Checks on a whole config before anything is built, so that a run that cannot work never starts."""

from __future__ import annotations

import difflib
import math
from dataclasses import replace

import torch
from omegaconf import DictConfig, OmegaConf

from ..channel import ChannelSpec
from ..compression import EVAL_MODES, METHODS, WIRE_DTYPES, Method, build_method
from ..compression.codecs import FLOAT_CODECS, apply_codec, check_codec
from ..compression.schedule import KINDS as SCHEDULE_KINDS, CompressionSchedule
from ..config_keys import GROUPS, known_keys, leaves, option_key, under, with_defaults
from ..data import DATASETS, NORMALIZATIONS
from ..data.partition import PARTITIONS
from ..data.augment import AUGMENTATIONS
from ..models import PRESETS
from .schemes import SCHEMES
from .strategy import averaging

ENGINES = ("splitvit", "flower")  # clients.engine: who runs the clients (splitvit.flower for Flower)

DEVICES = ("cpu", "cuda", "auto")
LINKS = ("inprocess", "grpc")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
CHECKPOINTS = ("every_eval", "last", "none")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what it may be."""


# keys whose shipped default is null, and what they take when set (other nulls take anything)
OPTIONAL_TYPES = {
    "train.max_steps": int, "train.budget_epochs": float, "train.eval_every": int, "eval.max_batches": int,
    "dataset.workers": int, "method.batch_ratio": float, "method.token_ratio": float, "method.R": int,
    "method.bits": int, "method.rank": int, "model.img_size": int, "model.patch_size": int, "model.embed_dim": int,
    "model.depth": int, "model.num_heads": int, "link.bandwidth_mbps": float, "link.downlink_mbps": float,
    "clients.rounds": int, "clients.local_steps": int, "finetune.K": int, "finetune.alpha": float,
    "finetune.lora_alpha": float,
}


NUMBER_OR_RANGE = {"channel.snr_db"}  # a number, or [lo, hi]


def _kind(value) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys no shipped config defines (a typo, or one added with ``+``), with the nearest valid
    names, and values of the wrong type, naming the full key."""
    top, groups = known_keys()
    known = dict(top)
    for group in GROUPS:
        if group not in cfg:
            continue
        option = str(OmegaConf.select(cfg, option_key(group), default=""))
        known.update(groups[group].get(option) or {k: v for opts in groups[group].values() for k, v in opts.items()})
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    for key, value in leaves(tree).items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            if key.startswith("method."):
                options = [k.removeprefix("method.") for k in known if k.startswith("method.") and k != "method.name"]
                where = "the method's options: " + ", ".join(options)
            else:
                where = "splitvit train --help lists every key"
            raise ConfigError(f"unknown key {key}{hint} ({where})")
        default = known[key]
        if key in NUMBER_OR_RANGE:
            continue  # checked with the rest of its group's values
        want = OPTIONAL_TYPES.get(key) if default is None else type(default)
        if value is None or want is None or isinstance(value, str) and value.startswith("${"):
            continue  # null is checked by the value checks; an interpolation by what it resolves to
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{key}={value!r} must be {_kind(want()) if want is not None else 'set'}")


def run_method(cfg: DictConfig, num_classes: int, tokens: int, dim: int) -> Method:
    """The run's method (``method=``) for activations ``[B, tokens, dim]``, its payload sent by ``codec=``."""
    codec = method_options(cfg.codec) if cfg.get("codec") else {}
    name = cfg.codec.name if cfg.get("codec") else "none"  # a config saved before codec= existed
    check_codec(name, cfg.wire.dtype)
    method = build_method(cfg.method.name, num_classes, tokens, dim, seed=cfg.seed,
                          wire_dtype=FLOAT_CODECS.get(name, cfg.wire.dtype), grad_center=cfg.split.grad_center,
                          **method_options(cfg.method))
    return apply_codec(method, name, **codec)


def method_options(method: DictConfig) -> dict:
    """A config group's knobs (``method=``'s, ``codec=``'s): the group without ``name``, nulls dropped."""
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
    check_keys(cfg)
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)).items():
        if isinstance(value, float) and not math.isfinite(value) and not key.startswith("hydra."):
            raise ConfigError(f"{key}={value!r} is not a finite number; give a value (or null where the key takes one)")
    _choice("method", cfg.method.name, METHODS)
    _choice("dataset", cfg.dataset.name, DATASETS)
    _choice("model", cfg.model.name, PRESETS)
    _choice("eval.mode", cfg.eval.mode, EVAL_MODES)
    _choice("wire.dtype", cfg.wire.dtype, WIRE_DTYPES)
    _choice("device", cfg.device, DEVICES)
    _choice("link", cfg.link.kind, LINKS)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("dataset.augment", cfg.dataset.augment, AUGMENTATIONS)
    _choice("dataset.normalize", cfg.dataset.normalize, NORMALIZATIONS)
    _at_least("dataset.workers", cfg.dataset.workers, 0, optional=True)
    _choice("train.optimizer", cfg.train.get("optimizer", "adam"), OPTIMIZERS)
    _choice("train.schedule", cfg.train.get("schedule", "constant"), SCHEDULES)
    _choice("train.checkpoint", cfg.train.get("checkpoint", "every_eval"), CHECKPOINTS)
    _at_least("train.warmup_epochs", cfg.train.get("warmup_epochs", 0), 0)
    _at_least("train.eval_every", cfg.train.get("eval_every"), 1, optional=True)
    _at_least("train.weight_decay", cfg.train.weight_decay, 0)
    _at_least("eval.max_batches", cfg.eval.max_batches, 1, optional=True)
    _at_least("train.batch_size", cfg.train.batch_size, 1)
    _at_least("eval.batch_size", cfg.eval.batch_size, 1)
    _at_least("train.epochs", cfg.train.epochs, 1)
    _at_least("train.max_steps", cfg.train.max_steps, 1, optional=True)
    _at_least("train.budget_epochs", cfg.train.budget_epochs, 1e-9, optional=True)
    _at_least("train.lr", cfg.train.lr, 1e-12)
    _at_least("split.index", cfg.split.index, 1, optional=True)
    m = cfg.model
    try:
        vit = replace(PRESETS[m.name], **{k: m[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads") if m[k] is not None})
        method = run_method(cfg, 2, vit.num_tokens, vit.embed_dim)
        method.check_batch(cfg.train.batch_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(_full_key(str(e))) from None
    if cfg.dataset.name not in ("digits",) and not cfg.dataset.get("root"):
        raise ConfigError(f"dataset.root is required for dataset={cfg.dataset.name}: the folder that holds its files "
                          "(see the docs, 'Data': docs/how-to/data.md)")
    kb = cfg.link.get("chunk_kb")
    if kb is not None and (isinstance(kb, bool) or not isinstance(kb, int) or not 4 <= kb <= 65536):
        raise ConfigError(f"link.chunk_kb={kb!r} must be a whole number of KiB in [4, 65536] (or null: 1024)")
    if cfg.split.index is None and cfg.link.kind != "inprocess":
        raise ConfigError("split.index=null trains the model in one piece, which needs no link; drop link=grpc")
    if cfg.train.get("schedule", "constant") != "constant" and cfg.link.kind != "inprocess":
        raise ConfigError("train.schedule=cosine is not supported over gRPC yet (the server's optimizer keeps train.lr); "
                          "use train.schedule=constant, or link=inprocess")
    if cfg.split.index is not None and cfg.split.index > vit.depth:
        raise ConfigError(f"split.index={cfg.split.index} must be in [1, {vit.depth}] for a model of depth {vit.depth}")
    for mode in cfg.eval.get("also") or []:
        _choice("eval.also", mode, EVAL_MODES)
    if "tokens" in [cfg.eval.mode, *(cfg.eval.get("also") or [])]:
        try:
            method.eval_token_ratio()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    _check_clients(cfg)
    _check_schedule(cfg, method)
    _check_channel(cfg, method)
    _check_finetune(cfg, vit)
    if cfg.train.get("inspect") and cfg.split.index is None:
        raise ConfigError("train.inspect=true measures what the method does at the cut: set split.index")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")


def _check_clients(cfg: DictConfig) -> None:
    c = cfg.get("clients")
    if c is None:
        return
    _at_least("clients.num", c.num, 1)
    _choice("clients.scheme", c.scheme, SCHEMES)
    _choice("clients.engine", c.get("engine", "splitvit"), ENGINES)
    if c.get("strategy"):
        try:
            averaging(c.strategy)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if c.get("engine", "splitvit") == "flower":
        if cfg.link.kind != "inprocess":
            raise ConfigError("clients.engine=flower runs every client on Flower's simulation engine, each over splitvit's "
                              "gRPC link to the ServerApp: drop link=grpc (for a deployment, use flwr run; docs: 'Flower')")
        if cfg.split.index is None:
            raise ConfigError("clients.engine=flower runs split learning: set split.index")
        try:
            import flwr  # noqa: F401
        except ImportError:
            raise ConfigError("clients.engine=flower needs Flower: pip install -e '.[flower]' (Python 3.11 or later)") from None
    _choice("clients.partition", c.partition, PARTITIONS)
    _at_least("clients.alpha", c.alpha, 1e-9)
    _at_least("clients.shards_per_client", c.shards_per_client, 1)
    _at_least("clients.min_samples", c.min_samples, 1)
    _at_least("clients.rounds", c.rounds, 1, optional=True)
    _at_least("clients.local_steps", c.local_steps, 1, optional=True)
    _at_least("clients.drop_after_s", c.drop_after_s, 0.1)
    if not 0 < c.fraction <= 1:
        raise ConfigError(f"clients.fraction={c.fraction!r} must be in (0, 1]: the share of clients in each round")
    if not 0 <= c.id < c.num:
        raise ConfigError(f"clients.id={c.id!r} must be in [0, {c.num - 1}] for clients.num={c.num}")
    if c.num > 1 and cfg.split.index is None:
        raise ConfigError("several clients need a split model; set split.index (or clients.num=1)")


def _check_schedule(cfg: DictConfig, method: Method) -> None:
    """``compression_schedule=``: a method whose ``compression`` sets its sizes, and none of the options
    that would fix them otherwise; the method must work at both ends."""
    s = cfg.get("compression_schedule")
    if s is None or s.name == "constant":
        return
    _choice("compression_schedule", s.name, SCHEDULE_KINDS)
    if cfg.split.index is None:
        raise ConfigError(f"compression_schedule={s.name} moves the method's compression, and a model trained in one "
                          "piece sends nothing: set split.index, or compression_schedule=constant")
    if "compression" not in cfg.method:
        raise ConfigError(f"compression_schedule={s.name} moves method.compression, and method={cfg.method.name} has "
                          "no compression key (its sizes come from its own options): use compression_schedule=constant")
    if method.unscheduled:
        raise ConfigError(f"compression_schedule={s.name} cannot move method={cfg.method.name}: {method.unscheduled}. "
                          "Use compression_schedule=constant")
    fixed = [k for k in method.sized_by if cfg.method.get(k) is not None]
    if fixed:
        raise ConfigError(f"compression_schedule={s.name} moves method.compression, but "
                          f"{', '.join(f'method.{k}={cfg.method[k]}' for k in fixed)} fixes the method's size: set "
                          f"{' and '.join(f'method.{k}=null' for k in fixed)}")
    try:
        schedule = CompressionSchedule.from_config(cfg)
        for target in schedule.bounds:
            method.at(target).check_batch(cfg.train.batch_size)
    except ValueError as e:
        raise ConfigError(_full_key(str(e))) from None


def _check_channel(cfg: DictConfig, method) -> None:
    try:
        spec = ChannelSpec.from_config(cfg.get("channel"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if spec.ideal:
        return
    if cfg.split.index is None:
        raise ConfigError(f"channel={spec.kind} needs a split model (split.index): nothing crosses a link otherwise")


VARYING_TOKENS = ("none", "adc")  # methods that take a cut whose token count changes from step to step


def _check_finetune(cfg: DictConfig, vit) -> None:
    f = cfg.get("finetune")
    if f is None or f.name == "full":
        return
    _choice("finetune", f.name, ("full", "alast"))
    from .alast import SELECT, WHERE
    from ..models.alast import IMPORTANCE, PRUNE

    _choice("finetune.where", f.where, WHERE)
    _choice("finetune.select", f.select, SELECT)
    _choice("finetune.prune", f.prune, PRUNE)
    _choice("finetune.importance", f.importance, IMPORTANCE)
    if f.K is not None and not 1 <= f.K <= vit.depth:
        raise ConfigError(f"finetune.K={f.K} must be in [1, {vit.depth}]: the blocks trained per step, of {vit.depth}")
    if not (0 < f.b_min <= f.b0 <= 1):
        raise ConfigError(f"finetune.b_min={f.b_min} and finetune.b0={f.b0} must satisfy 0 < b_min <= b0 <= 1")
    if f.lora and (not isinstance(f.lora_rank, int) or f.lora_rank < 1):
        raise ConfigError(f"finetune.lora_rank={f.lora_rank!r} must be a positive integer")
    prunes_client = cfg.split.index is not None and f.where in ("client", "both") and f.b_min < 1
    if prunes_client and cfg.method.name not in VARYING_TOKENS:
        raise ConfigError(
            f"finetune=alast prunes tokens on the client (finetune.where={f.where}), so the cut's token count varies "
            f"from step to step, and method={cfg.method.name} needs a fixed one. Use method=none or adc, "
            "finetune.where=server, or finetune.b_min=1 (no pruning)")


def _full_key(message: str) -> str:
    """A method's message names its option (``compression must be ...``): name the full key."""
    first = message.split(" ", 1)[0]
    if first.isidentifier() and not first.startswith(("method.", "codec.")) and first not in ("method", "codec"):
        return "method." + message
    return message


def resolve_device(name: str) -> torch.device:
    """``device`` (``cpu``, ``cuda`` or ``auto``) as a ``torch.device``; ``auto`` takes CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# keys whose change would make a resumed run a different experiment
RESUME_KEYS = ("seed", "method", "codec", "compression_schedule", "dataset", "model", "split", "train.batch_size", "train.lr", "train.weight_decay",
               "train.optimizer", "train.schedule", "train.warmup_epochs", "wire", "clients.num", "clients.scheme",
               "clients.partition", "clients.alpha", "clients.shards_per_client", "clients.min_samples",
               "clients.local_steps", "clients.fraction", "channel", "finetune")
# keys client and server must agree on: what each half is, and how the messages between them look
# (model.checkpoint may be a different path on each machine: the initial weights are compared by digest)
SHARED_KEYS = (
    "seed", "method", "codec", "compression_schedule", "model.name", "model.img_size", "model.patch_size", "model.embed_dim", "model.depth",
    "model.num_heads", "model.pretrained", "split", "train.batch_size", "train.lr", "train.weight_decay", "train.optimizer",
    "train.schedule", "train.precision",
    "eval.batch_size", "wire", "clients.num", "clients.scheme", "clients.partition", "clients.alpha",
    "clients.shards_per_client", "clients.min_samples", "clients.rounds", "clients.local_steps", "clients.fraction",
    "channel",  # the server repairs what a damaging channel delivers: it must know the channel
    "finetune",  # ALaST on the server's blocks, and what the client's pruning does to the cut
)


def shared_config(cfg: DictConfig) -> dict:
    """The :data:`SHARED_KEYS` of ``cfg`` as flat dotted leaves: what a client shows the server in the handshake."""
    return under(leaves(OmegaConf.to_container(cfg, resolve=True)), SHARED_KEYS)


def config_diff(ours: dict, theirs: dict, names=("server", "client")) -> list[str]:
    """``key: <names[0]> a, <names[1]> b`` for every key of the flat dicts ``ours``/``theirs`` that differs."""
    keys = list(ours) + [k for k in theirs if k not in ours]
    return [f"{k}: {names[0]} {ours.get(k)!r}, {names[1]} {theirs.get(k)!r}" for k in keys if ours.get(k) != theirs.get(k)]


def resume_mismatch(saved: dict, cfg: DictConfig) -> list[str]:
    """``key: checkpoint a, now b`` for every :data:`RESUME_KEYS` leaf that differs. A checkpoint made
    before a key existed ran with that key's default (see :func:`with_defaults`)."""
    theirs = under(with_defaults(leaves(saved)), RESUME_KEYS)
    now = under(leaves(OmegaConf.to_container(cfg, resolve=True)), RESUME_KEYS)
    return config_diff(theirs, now, ("checkpoint", "now"))


def compose(*overrides: str) -> DictConfig:
    """The config ``splitvit train <overrides>`` would run, for use from Python: ``fit(compose("method=none"),
    run_dir)``. Overrides are Hydra's, as on the command line; the values are checked when the run starts."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("splitvit.conf", version_base=None):
        return hydra_compose("config", overrides=list(overrides))

