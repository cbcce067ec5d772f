"""What every run does, split or in one piece: check the config and load the data, set the learning
rate, stop between two steps on Ctrl-C, evaluate, and summarise."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from ..data import ClassSpecError, batches, default_workers, eval_subset, load_dataset, num_batches
from ..compression.schedule import CompressionSchedule
from ..link import LinkModel
from ..profiling import machine
from .config import ConfigError, method_options, resolve_device, validate
from .state import Progress

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C stopped the run between two steps. ``step``: the step reached; ``saved``: what was saved,
    in words (the resume hint follows it)."""

    def __init__(self, step: int, saved: str):
        super().__init__(f"interrupted at step {step}")
        self.step, self.saved = step, saved


class StopBetweenSteps:
    """The first Ctrl-C asks the loop to stop after the step under way (a step half-applied on one side
    could not be checkpointed); a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to stop at once, without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    """The learning rate at ``step`` as a fraction of ``train.lr``: ``constant`` (the paper's), or a
    linear warm-up over ``warmup`` steps then a cosine decay to 0 at ``total`` steps."""
    if schedule == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def workers(cfg: DictConfig) -> int:
    """DataLoader processes for a config: ``dataset.workers``, or the usable cores (at most 4) for files."""
    n = cfg.dataset.get("workers")
    return default_workers() if n is None else n


@contextlib.contextmanager
def held(run_dir: str | Path):
    """The run directory, made and held by this process while the block runs: a second live process
    (two ``splitvit client`` runs given the same folder) is refused rather than let the two overwrite
    each other's run files. The hold is an OS lock on ``<run_dir>/.lock``, gone with the process."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no POSIX locks here: nothing to hold
        yield run_dir
        return
    with (run_dir / ".lock").open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ConfigError(f"run_dir {run_dir} is in use by another splitvit process ({f.read().strip() or 'pid unknown'}); "
                              "give this run its own run_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield run_dir
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(cfg: DictConfig, run_dir: str | Path, data=None):
    """What every run does first: check the config, make the run directory, say what runs, load the
    data (unless ``data``, the config's, already loaded, is given). Returns ``(run_dir, device, link model
    or None, data)``."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    split = "in one piece" if cfg.split.index is None else f"{cfg.method.name}, split after block {cfg.split.index}"
    classes = "" if cfg.dataset.get("classes") is None else f" classes {cfg.dataset.classes}"
    clients = "" if cfg.clients.num == 1 else f", {cfg.clients.num} clients ({cfg.clients.scheme}, {cfg.clients.partition})"
    log.info(f"splitvit: {'resuming' if cfg.train.resume else 'starting'} {cfg.model.name} ({split}) on "
             f"{cfg.dataset.name}{classes}{clients}, seed {cfg.seed}, device {device}, link {cfg.link.kind}; run dir {run_dir}")
    try:
        shaping = LinkModel.from_config(cfg.link)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return run_dir, device, shaping, load_data(cfg) if data is None else data


def load_data(cfg: DictConfig):
    """A config's dataset: its splits, class subset, augmentation and normalisation."""
    d = cfg.dataset
    try:
        return load_dataset(d.name, d.root, d.download, variant=d.get("variant"), normalize=d.get("normalize", "dataset"),
                            classes=d.get("classes"))
    except ClassSpecError as e:
        raise ConfigError(str(e)) from None


def reachability(method, batch_size: int, vit) -> list[str]:
    """A warning when rounding (whole samples, tokens, bits) puts the realised ratio far from the target."""
    target = method.target_ratio()  # of the method's own knob: its values at full precision
    nominal = method.nominal_ratio(batch_size, vit.num_tokens, vit.embed_dim) / method.value_ratio
    if target and abs(nominal - target) > 0.25 * target:
        return [f"compression target {target:g} cannot be reached at train.batch_size={batch_size} with "
                f"{vit.num_tokens} tokens of {vit.embed_dim}: the nearest this method realises is {nominal:.4g} "
                "(a larger batch, or another target, gets closer)"]
    return []


def test_batches(cfg, data, vit, device):
    """The evaluation batches of a config's test set (``eval.batch_size``, at most ``eval.max_batches``)."""
    subset = None
    if cfg.eval.get("max_batches") is not None:  # a quick look: a fixed random subset, the same in every run
        subset = eval_subset(data.test, cfg.eval.max_batches * cfg.eval.batch_size)
    return batches(data.test, cfg.eval.batch_size, vit.img_size, vit.in_chans, device=device,
                   workers=workers(cfg), indices=subset)


def evaluate(cfg, client, data, vit, device, p: Progress, losses: list[float], epoch: float | None = None) -> dict:
    """Evaluate ``client``'s model (with the server's half) and return the metrics record. ``epoch``:
    where the run stands in epochs (default: from the progress's epoch and batch)."""
    t0 = time.perf_counter()
    test = test_batches(cfg, data, vit, device)
    val_loss, val_acc = client.evaluate(test, cfg.eval.mode)
    p.wall_s += time.perf_counter() - t0
    p.best_val_acc = max(p.best_val_acc, val_acc)
    if epoch is None:
        epoch = p.epoch + p.batch_in_epoch / num_batches(data.train, cfg.train.batch_size)
    return {
        "step": p.step,
        "epoch": round(epoch, 4),
        "bytes_up": p.bytes_up,
        "bytes_down": p.bytes_down,
        "baseline_bytes": p.baseline_up + p.baseline_down,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "compression_target": getattr(client, "compression_target", None),  # in force (a schedule moves it)
        "eval_mode": cfg.eval.mode,
        "eval_bytes_up": p.eval_bytes_up,
        "eval_bytes_down": p.eval_bytes_down,
        "wall_s": round(p.wall_s, 3),
        "link_s": round(p.link_s, 3),
        "time_s": round(p.wall_s + p.link_s, 3),  # time to this accuracy: compute plus the modelled link
        "framing_bytes_up": p.framing_up,
        "framing_bytes_down": p.framing_down,
    }


def config_hash(cfg: DictConfig | dict) -> str:
    """SHA-256 (first 16 hex digits) of the resolved config without where the run lives or how it is shown."""
    import copy
    import hashlib

    tree = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else copy.deepcopy(cfg)
    for key in ("run_dir", "hydra"):
        tree.pop(key, None)
    tree.get("train", {}).pop("progress", None)
    tree.get("train", {}).pop("resume", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_summary(cfg, method, vit, p: Progress, reason: str | None, data=None) -> dict:
    """A run's ``summary.json``: what it ran, its bytes, steps, accuracies and the figures of its clients."""
    sent, baseline = p.bytes_up + p.bytes_down, p.baseline_up + p.baseline_down
    split = cfg.split.index is not None
    schedule = CompressionSchedule.from_config(cfg)
    if split and not schedule.constant and p.history:  # the target in force at the end, and the method at it
        method = method.at(p.history[-1]["compression_target"])
    return {
        "method": cfg.method.name if split else "whole",
        "method_options": method_options(cfg.method) if split else {},
        "codec": cfg.codec.name if split and cfg.get("codec") else "none",
        "dataset": cfg.dataset.name,
        "dataset_classes": None if data is None else data.class_ids,  # the dataset's ids, in label order; null: all
        "num_classes": None if data is None else data.num_classes,
        "model": cfg.model.name,
        "split_index": cfg.split.index,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "compression_target": method.target_ratio() if split else None,  # under a schedule: the last in force
        "compression_schedule": None if schedule.constant or not split else
        {"name": schedule.kind, "start": schedule.start, "end": schedule.end,
         **({"stages": schedule.stages} if schedule.kind == "steps" else {})},
        "batch_ratio": getattr(method, "batch_ratio", None),  # ADC's two parts, for the grid plot
        "token_ratio": getattr(method, "token_ratio", None),
        "compression_nominal": method.nominal_ratio(cfg.train.batch_size, vit.num_tokens, vit.embed_dim) if split else None,
        "compression_measured": sent / baseline if baseline else None,
        "bytes_up": p.bytes_up,
        "bytes_down": p.bytes_down,
        "baseline_bytes_up": p.baseline_up,
        "baseline_bytes_down": p.baseline_down,
        "eval_bytes_up": p.eval_bytes_up,
        "eval_bytes_down": p.eval_bytes_down,
        "steps": p.step,
        "epochs": round(p.history[-1]["epoch"], 4) if p.history else 0,
        "stopped_by": reason,
        "best_val_acc": p.best_val_acc,
        "final_val_acc": p.history[-1]["val_acc"] if p.history else None,
        "final_val_loss": p.history[-1]["val_loss"] if p.history else None,
        "eval_mode": cfg.eval.mode,
        "link": cfg.link.kind,
        "framing_bytes_up": p.framing_up,
        "framing_bytes_down": p.framing_down,
        "wall_s": round(p.wall_s, 3),
        "link_s": round(p.link_s, 3),
        "time_s": round(p.wall_s + p.link_s, 3),
        "time_to_best_s": next((r["time_s"] for r in p.history if r["val_acc"] == p.best_val_acc), None),
        "channel": (cfg.get("channel") or {}).get("name", "ideal"),
        "machine": machine(),  # the same seed gives the same numbers where this agrees
    }

