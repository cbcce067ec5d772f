"""A model trained in one piece (``split.index=null``): pretraining, or fine-tuning without a split.
Nothing crosses a link; split runs, with one client or several, train in :mod:`.clients`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..compression import NoCompression
from ..data import batches, num_batches
from ..data.augment import build_augment
from ..profiling import Profiler, peak_rss_mb
from .alast import ALaST, build_alast
from .build import build_model, make_optimizer
from .checkpoint import load_client, save_client
from .common import Interrupted, StopBetweenSteps, evaluate, lr_factor, make_summary, workers
from .local import LocalTrainer
from .mods import ProfileStep, find
from .state import CAPS, Progress
from .tracking import make_tracker

log = logging.getLogger(__name__)


def fit_whole(cfg: DictConfig, run_dir: Path, data, device) -> dict:
    """``split.index=null``: the model trains in one piece, nothing is sent (pretraining)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes).to(device)
    alast = build_alast(cfg, model, model.cfg.num_tokens, model.cfg.depth)  # before the optimizer: LoRA adds parameters
    mods = [ProfileStep(Profiler(device), cfg.train.eval_every or num_batches(data.train, cfg.train.batch_size))
            ] if cfg.train.get("profile") else []  # FLOPs (not time) on a step once an evaluation interval
    trainer = LocalTrainer(model, make_optimizer(cfg, model), bf16=cfg.train.precision == "bf16",
                           mods=mods + ([alast] if alast is not None else []))
    method = NoCompression(data.num_classes, model.cfg.num_tokens, model.cfg.embed_dim)  # what the summary reports
    p = Progress()
    ckpt = run_dir / "checkpoints" / "client.pt"
    if cfg.train.resume:
        p = load_client(ckpt, cfg, trainer, method.client())
        log.info("resumed from %s at step %d", ckpt, p.step)
    return _train(cfg, run_dir, data, trainer, method, model.cfg, device, p, ckpt, [trainer.optimizer])


def _train(cfg, run_dir: Path, data, client: LocalTrainer, method, vit, device, p: "Progress",
           ckpt: Path, optimizers: list[torch.optim.Optimizer]) -> dict:
    augment = build_augment(cfg.dataset.get("augment", "none"))
    steps_per_epoch = num_batches(data.train, cfg.train.batch_size)
    budget = None  # nothing is sent: train.budget_epochs never ends such a run

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
    losses = p.losses  # saved with the progress: a run resumed mid-interval averages all of the interval's losses

    tracker = make_tracker(cfg, run_dir)

    def evaluate_and_save() -> None:
        record = evaluate(cfg, client, data, vit, device, p, losses)
        record.update(profile_record(client))
        if find(client.mods, ALaST) is not None:
            record["alast"] = {"whole": find(client.mods, ALaST).summary()}
        losses.clear()
        tracker.evaluation(record)
        p.history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        keep = cfg.train.get("checkpoint", "every_eval")
        if keep == "every_eval" or (keep == "last" and stop_reason() is not None):
            save_client(ckpt, cfg, client, method.client(), p)
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        with logging_redirect_tqdm():  # the line above the progress bar, and in splitvit.log
            log.info(
                f"epoch {record['epoch']:.2f} step {p.step}: train_loss {train_loss} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
                f"sent {(p.bytes_up + p.bytes_down) / 1e6:.2f} MB"
            )

    with StopBetweenSteps() as interrupt:
        try:
            reason = _loop(cfg, data, client, vit, device, p, optimizers, augment, steps_per_epoch, total, losses,
                           stop_reason, evaluate_and_save, interrupt, bar, tracker)
        except Interrupted:
            if cfg.train.get("checkpoint", "every_eval") != "none":
                save_client(ckpt, cfg, client, method.client(), p)
            bar.close()
            saved = cfg.train.get("checkpoint", "every_eval") != "none"
            raise Interrupted(p.step, "saved a checkpoint there" if saved else "saved nothing (train.checkpoint=none)") from None
        finally:
            tracker.close()
    bar.close()

    summary = {**make_summary(cfg, method, vit, p, reason, data), **profile_record(client, run=True)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _loop(cfg, data, client, vit, device, p: Progress, optimizers, augment, steps_per_epoch: int, total: int,
          losses: list[float], stop_reason, evaluate_and_save, interrupt, bar, tracker) -> str | None:
    """Train until a cap or the budget stops the run; evaluate at each epoch's end or every ``train.eval_every`` steps."""
    schedule = cfg.train.get("schedule", "constant")
    warmup = round(cfg.train.get("warmup_epochs", 0) * steps_per_epoch)
    eval_every = cfg.train.get("eval_every")
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
            losses.append(client.train_step(images, labels, p.step))
            p.step += 1
            p.batch_in_epoch += 1
            if p.batch_in_epoch == steps_per_epoch:
                p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            tracker.step(p.step, losses[-1], p.bytes_up + p.bytes_down)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", MB=f"{(p.bytes_up + p.bytes_down) / 1e6:.1f}")
            if interrupt.requested:
                p.wall_s += time.perf_counter() - t0
                raise Interrupted(p.step, "")
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


def profile_record(trainer, run: bool = False) -> dict:
    """The step's phases since the last evaluation (``run``: over the run), and the process's peak memory."""
    prof = find(trainer.mods, ProfileStep)
    if prof is None:
        return {}
    out = prof.profiler.summary(run)
    if not run:
        prof.profiler.reset_times()
    return {"profile": {"whole": out, "peak_rss_mb": peak_rss_mb()}}
