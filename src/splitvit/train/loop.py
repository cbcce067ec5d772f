"""One experiment: build both halves, train under the caps and the byte budget, evaluate, write run files."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..channel import Channel, ChannelSpec, channel_metrics, idle
from ..compression import NoCompression
from ..data import ClassSpecError, batches, default_workers, eval_subset, load_dataset, num_batches
from ..data.augment import build_augment
from ..profiling import Profiler, peak_rss_mb
from ..link import Exchange, InProcessLink, LinkModel, standard_mods
from .alast import build_alast
from .baseline import epoch_bytes, uncompressed_bytes
from .build import build_halves, build_model, build_server, make_optimizer
from .checkpoint import load_client, save_client
from .client import SplitClient
from .config import ConfigError, method_options, resolve_device, validate
from .inspect import Inspector
from .local import LocalTrainer
from .server import server_digest
from .state import CAPS, Progress
from .tracking import make_tracker

CHANNEL_SEED = 0x6368616E  # the channel's generator: seed + this, apart from the run's other randomness

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Ctrl-C stopped the run between two steps; its state was saved. ``step`` is the step reached."""

    def __init__(self, step: int, saved: bool):
        super().__init__(f"interrupted at step {step}")
        self.step, self.saved = step, saved


class _StopBetweenSteps:
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


def num_clients(cfg: DictConfig) -> int:
    return OmegaConf.select(cfg, "clients.num", default=1)


def workers(cfg: DictConfig) -> int:
    n = cfg.dataset.get("workers")
    return default_workers() if n is None else n


def prepare(cfg: DictConfig, run_dir: str | Path):
    """What every run does first: check the config, make the run directory, say what runs, load the
    data. Returns ``(run_dir, device, link model or None, data)``."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    split = "in one piece" if cfg.split.index is None else f"{cfg.method.name}, split after block {cfg.split.index}"
    classes = "" if cfg.dataset.get("classes") is None else f" classes {cfg.dataset.classes}"
    clients = "" if num_clients(cfg) == 1 else f", {cfg.clients.num} clients ({cfg.clients.scheme}, {cfg.clients.partition})"
    log.info(f"splitvit: {'resuming' if cfg.train.resume else 'starting'} {cfg.model.name} ({split}) on "
             f"{cfg.dataset.name}{classes}{clients}, seed {cfg.seed}, device {device}, link {cfg.link.kind}; run dir {run_dir}")
    try:
        shaping = LinkModel.from_config(cfg.link)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return run_dir, device, shaping, load_data(cfg)


def fit(cfg: DictConfig, run_dir: str | Path, prepared=None) -> dict:
    """Run the experiment ``cfg`` (one client) into ``run_dir``; returns the summary also written to ``summary.json``.

    ``link=inprocess`` (default) serves the server half in this process; ``link=grpc`` talks to
    ``link.server`` (``splitvit serve``), or starts a local server process when that is null.
    """
    run_dir, device, shaping, data = prepared or prepare(cfg, run_dir)
    if cfg.split.index is None:
        return _fit_whole(cfg, run_dir, data, device)
    client_model, server_model, compressor, vit = build_halves(cfg, data.num_classes, device)
    channel = ChannelSpec.from_config(cfg.get("channel"))
    warnings = reachability(compressor, cfg.train.batch_size, vit)
    warnings += filter(None, [idle(channel, compressor.roles, cfg.method.name)])
    for w in warnings:
        log.warning(f"warning: {w}")
    alast = build_alast(cfg, client_model, vit.num_tokens, vit.depth, "client")  # before the optimizer: LoRA adds parameters
    client = SplitClient(
        client_model, compressor, make_optimizer(cfg, client_model, compressor.client_modules),
        None, data.num_classes, bf16=cfg.train.precision == "bf16", channel=channel,
    )
    client.alast = alast
    p = Progress()
    ckpt = run_dir / "checkpoints" / "client.pt"
    if cfg.train.resume:
        p = load_client(ckpt, cfg, client, compressor)
        log.info("resumed from %s at step %d", ckpt, p.step)
    if cfg.link.kind == "inprocess":
        server = build_server(cfg, server_model, compressor, vit, run_dir / "checkpoints")
        if cfg.train.resume:
            try:
                server.restore(p.step)
            except ValueError as e:
                raise ConfigError(f"cannot resume: {e}") from None
        link = InProcessLink(server.handle, server.checkpoint)
    else:
        from .remote import connect

        link = connect(cfg, run_dir, p, data.num_classes, server_digest(server_model, compressor))
        del server_model  # it lives on the server; this copy only proved both sides start alike
    noise = None if channel.ideal else Channel(channel, compressor.role, compressor.repair, p, seed=CHANNEL_SEED + cfg.seed)
    client.exchange = Exchange(link, standard_mods(p, shaping, noise))  # the mods count into the run's ledger, p
    instrument(cfg, client, "client", data, device, server if cfg.link.kind == "inprocess" else None)
    optimizers = [client.optimizer] + ([server.optimizer] if cfg.link.kind == "inprocess" else [])
    try:
        summary = _train(cfg, run_dir, data, client, compressor, vit, device, p, ckpt, optimizers)
    finally:
        client.exchange.close()
    if warnings:
        summary["warnings"] = warnings
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_data(cfg: DictConfig):
    d = cfg.dataset
    try:
        return load_dataset(d.name, d.root, d.download, variant=d.get("variant"), normalize=d.get("normalize", "dataset"),
                            classes=d.get("classes"))
    except ClassSpecError as e:
        raise ConfigError(str(e)) from None


def reachability(compressor, batch_size: int, vit) -> list[str]:
    """A warning when rounding (whole samples, tokens, bits) puts the realised ratio far from the target."""
    target = compressor.target_ratio()
    nominal = compressor.nominal_ratio(batch_size, vit.num_tokens, vit.embed_dim)
    if target and abs(nominal - target) > 0.25 * target:
        return [f"compression target {target:g} cannot be reached at train.batch_size={batch_size} with "
                f"{vit.num_tokens} tokens of {vit.embed_dim}: the nearest this method realises is {nominal:.4g} "
                "(a larger batch, or another target, gets closer)"]
    return []


def _fit_whole(cfg: DictConfig, run_dir: Path, data, device) -> dict:
    """``split.index=null``: the model trains in one piece, nothing is sent (pretraining)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes).to(device)
    alast = build_alast(cfg, model, model.cfg.num_tokens, model.cfg.depth)  # before the optimizer: LoRA adds parameters
    trainer = LocalTrainer(model, make_optimizer(cfg, model), bf16=cfg.train.precision == "bf16")
    trainer.alast = alast
    instrument(cfg, trainer, "whole", data, device)
    compressor = NoCompression(data.num_classes, model.cfg.num_tokens, model.cfg.embed_dim)
    p = Progress()
    ckpt = run_dir / "checkpoints" / "client.pt"
    if cfg.train.resume:
        p = load_client(ckpt, cfg, trainer, compressor)
        log.info("resumed from %s at step %d", ckpt, p.step)
    return _train(cfg, run_dir, data, trainer, compressor, model.cfg, device, p, ckpt, [trainer.optimizer])


def _train(cfg, run_dir: Path, data, client: SplitClient | LocalTrainer, compressor, vit, device, p: "Progress",
           ckpt: Path, optimizers: list[torch.optim.Optimizer]) -> dict:
    augment = build_augment(cfg.dataset.get("augment", "none"))
    steps_per_epoch = num_batches(data.train, cfg.train.batch_size)
    split = cfg.split.index is not None
    budget = None
    if cfg.train.budget_epochs is not None and split:
        per_epoch = epoch_bytes(len(data.train), cfg.train.batch_size, vit.num_tokens, vit.embed_dim, data.num_classes)
        budget = cfg.train.budget_epochs * per_epoch  # bytes, both directions

    metrics_path = run_dir / "metrics.jsonl"
    # the metrics file holds exactly the evaluations of the checkpointed history
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in p.history))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    def stop_reason() -> str | None:
        if cfg.train.max_steps is not None and p.step >= cfg.train.max_steps:
            return "max_steps"
        if budget is not None and p.bytes_up + p.bytes_down >= budget:
            return "budget"
        if p.epoch >= cfg.train.epochs:
            return "epochs"
        return None

    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    bar = tqdm(total=total, initial=p.step, disable=None if cfg.train.progress else True, desc="train", unit="step", dynamic_ncols=True)
    reason = stop_reason()  # a resumed run may already be done, or have new caps
    caps = {k: cfg.train.get(k) for k in CAPS}
    if p.done and reason is None and p.caps == caps:
        # finished under these very caps (a budget measured by another version may differ by a few
        # bytes): resuming it measures it again (eval.also), it does not train on
        reason = p.stopped_by or "budget"
        log.info(f"the run finished at step {p.step} under these caps; nothing to train")
    p.done = reason is not None
    p.stopped_by = reason
    p.caps = caps
    losses: list[float] = []

    tracker = make_tracker(cfg, run_dir)

    def evaluate_and_save() -> None:
        record = evaluate(cfg, client, data, vit, device, p, losses)
        losses.clear()
        tracker.evaluation(record)
        p.history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        keep = cfg.train.get("checkpoint", "every_eval")
        if keep == "every_eval" or (keep == "last" and stop_reason() is not None):
            client.exchange.checkpoint(p.step)  # the server saves its half first: it keeps the one before too
            save_client(ckpt, cfg, client, compressor, p)
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        with logging_redirect_tqdm():  # the line above the progress bar, and in splitvit.log
            log.info(
                f"epoch {record['epoch']:.2f} step {p.step}: train_loss {train_loss} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
                f"sent {(p.bytes_up + p.bytes_down) / 1e6:.2f} MB"
            )

    with _StopBetweenSteps() as interrupt:
        try:
            reason = _loop(cfg, data, client, vit, device, p, optimizers, augment, steps_per_epoch, total, losses,
                           stop_reason, evaluate_and_save, interrupt, bar, tracker)
        except Interrupted:
            if cfg.train.get("checkpoint", "every_eval") != "none":
                client.exchange.checkpoint(p.step)
                save_client(ckpt, cfg, client, compressor, p)
            bar.close()
            raise Interrupted(p.step, cfg.train.get("checkpoint", "every_eval") != "none") from None
        finally:
            tracker.close()
    bar.close()

    summary = {**make_summary(cfg, compressor, vit, p, reason, data), **profile_record(client, run=True)}
    if split:  # the final model measured in more ways than eval.mode (eval.also): the run is unchanged
        for mode in cfg.eval.get("also") or []:
            loss, acc = client.evaluate(_test_batches(cfg, data, vit, device), mode)
            summary[f"final_val_acc_{mode}"], summary[f"final_val_loss_{mode}"] = acc, loss
            log.info(f"final model, eval.mode={mode}: val_loss {loss:.4f} val_acc {acc:.4f}")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _loop(cfg, data, client, vit, device, p: Progress, optimizers, augment, steps_per_epoch: int, total: int,
          losses: list[float], stop_reason, evaluate_and_save, interrupt, bar, tracker) -> str | None:
    """Train until a cap or the budget stops the run; evaluate at each epoch's end or every ``train.eval_every`` steps."""
    schedule = cfg.train.get("schedule", "constant")
    warmup = round(cfg.train.get("warmup_epochs", 0) * steps_per_epoch)
    eval_every = cfg.train.get("eval_every")
    split = cfg.split.index is not None
    reason = p.stopped_by
    while not p.done:
        t0 = time.perf_counter()
        epoch_batches = batches(
            data.train, cfg.train.batch_size, vit.img_size, vit.in_chans,
            shuffle_seed=cfg.seed * 100_003 + p.epoch, device=device, start=p.batch_in_epoch,
            augment=augment, workers=workers(cfg),
        )
        for images, labels in epoch_batches:
            factor = lr_factor(schedule, p.step, total, warmup)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = cfg.train.lr * factor
            with profiled(client, p.step):
                losses.append(client.train_step(images, labels, p.step))
            p.step += 1
            p.batch_in_epoch += 1
            if split:  # the baseline: plain split learning's messages for this step, as the protocol builds them
                up, down = uncompressed_bytes(labels.shape[0], vit.num_tokens, vit.embed_dim, data.num_classes, p.step - 1, losses[-1])
                p.baseline_up += up
                p.baseline_down += down
            if p.batch_in_epoch == steps_per_epoch:
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            tracker.step(p.step, losses[-1], p.bytes_up + p.bytes_down)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", MB=f"{(p.bytes_up + p.bytes_down) / 1e6:.1f}")
            if interrupt.requested:
                p.wall_s += time.perf_counter() - t0
                raise Interrupted(p.step, False)
            if stop_reason() in ("max_steps", "budget"):
                break
            if eval_every and p.step % eval_every == 0 and stop_reason() is None:
                p.wall_s += time.perf_counter() - t0
                evaluate_and_save()
                t0 = time.perf_counter()
        reason = stop_reason()
        p.done = reason is not None
        p.stopped_by = reason
        p.wall_s += time.perf_counter() - t0
        if p.done or not eval_every:
            evaluate_and_save()
    return reason


def instrument(cfg, trainer: SplitClient | LocalTrainer, side: str, data, device, server=None) -> None:
    """What the loop records beside the step, in one place: ``train.profile`` (a profiler for ``side``,
    ``client`` or ``whole``, and for the in-process ``server``), ``train.inspect``, and ALaST's stages."""
    trainer.stages = {name: a for name, a in ((side, trainer.alast), ("server", server.half.alast if server else None))
                      if a is not None}
    if cfg.train.get("inspect"):
        trainer.inspector = Inspector()
    if cfg.train.get("profile"):
        trainer.flop_every = cfg.train.eval_every or num_batches(data.train, cfg.train.batch_size)
        trainer.profilers = {side: Profiler(device)}
        if server is not None:  # over gRPC the server profiles itself (remote.Sessions)
            server.profiler, server.flop_every = Profiler(device), trainer.flop_every
            trainer.profilers["server"] = server.profiler


def profiled(trainer, step: int):
    """The step under the trainer's profiler (``train.profile=true``), which counts FLOPs instead of
    time on every ``flop_every``-th step; nothing otherwise."""
    if not trainer.profilers:
        return nullcontext()
    return next(iter(trainer.profilers.values())).step(count_flops=step % trainer.flop_every == 0)


def profile_record(trainer, run: bool = False) -> dict:
    """Each side's phases since the last evaluation (``run``: over the run), and the process's peak memory."""
    if not trainer.profilers:
        return {}
    out = {side: prof.summary(run) for side, prof in trainer.profilers.items()}
    if not run:
        for prof in trainer.profilers.values():
            prof.reset_times()
    return {"profile": {**out, "peak_rss_mb": peak_rss_mb()}}


def _test_batches(cfg, data, vit, device):
    subset = None
    if cfg.eval.get("max_batches") is not None:  # a quick look: a fixed random subset, the same in every run
        subset = eval_subset(data.test, cfg.eval.max_batches * cfg.eval.batch_size)
    return batches(data.test, cfg.eval.batch_size, vit.img_size, vit.in_chans, device=device,
                   workers=workers(cfg), indices=subset)


def evaluate(cfg, client: SplitClient, data, vit, device, p: Progress, losses: list[float], epoch: float | None = None) -> dict:
    """Evaluate ``client``'s model (with the server's half) and return the metrics record. ``epoch``:
    where the run stands in epochs (default: from the progress's epoch and batch)."""
    t0 = time.perf_counter()
    test = _test_batches(cfg, data, vit, device)
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
        "eval_mode": cfg.eval.mode,
        "eval_bytes_up": p.eval_bytes_up,
        "eval_bytes_down": p.eval_bytes_down,
        "wall_s": round(p.wall_s, 3),
        "link_s": round(p.link_s, 3),
        "time_s": round(p.wall_s + p.link_s, 3),  # time to this accuracy: compute plus the modelled link
        "framing_bytes_up": p.framing_up,
        "framing_bytes_down": p.framing_down,
        **(channel_metrics(p.channel) if p.channel else {}),
        **profile_record(client),
        **({"inspect": client.inspector.summary()} if client.inspector is not None else {}),
        **({"alast": {side: a.summary() for side, a in client.stages.items()}} if client.stages else {}),
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


def make_summary(cfg, compressor, vit, p: Progress, reason: str | None, data=None) -> dict:
    sent, baseline = p.bytes_up + p.bytes_down, p.baseline_up + p.baseline_down
    split = cfg.split.index is not None
    return {
        "method": cfg.method.name if split else "whole",
        "method_options": method_options(cfg.method) if split else {},
        "dataset": cfg.dataset.name,
        "dataset_classes": None if data is None else data.class_ids,  # the dataset's ids, in label order; null: all
        "num_classes": None if data is None else data.num_classes,
        "model": cfg.model.name,
        "split_index": cfg.split.index,
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "compression_target": compressor.target_ratio() if split else None,
        "batch_ratio": getattr(compressor, "batch_ratio", None),  # ADC's two parts, for the grid plot
        "token_ratio": getattr(compressor, "token_ratio", None),
        "compression_nominal": compressor.nominal_ratio(cfg.train.batch_size, vit.num_tokens, vit.embed_dim) if split else None,
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
        **(channel_metrics(p.channel) if p.channel else {}),
    }

