"""Several clients and one server, simulated in one process (``clients.num > 1``, ``link=inprocess``).

Each client is a :class:`Member`: its share of the training set, its own client half, its own
instance of the method (its client side) and optimizer, and its own exchange path, whose mods count
its bytes under its id. The server is one :class:`~.server.ServerHalf` (``splitvit_v1``: one copy per
client) with one :class:`~.server.Session` per client, and a :class:`~.federation.Federation` that
hands client halves on or averages them. Every message, weights included, is serialised and goes
through a session exactly as it would over gRPC. A round, top to bottom, is :func:`_round`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import batches
from ..data.augment import build_augment
from ..data.partition import histograms, partition
from ..link import Exchange, InProcessLink, standard_mods
from ..wire import Header, Schema
from .build import build_halves, make_optimizer
from .checkpoint import atomic_save, load_checkpoint_file
from .client import SplitClient
from .config import ConfigError, resume_mismatch
from .federation import SAMPLES, Federation, half_state, load_half_state, local_steps, participants, step_order
from .fedavg import fedavg
from .loop import (Interrupted, _StopBetweenSteps, _test_batches, evaluate, lr_factor, make_summary, reachability,
                   uncompressed_bytes, workers)
from .server import ServerHalf, Session
from .state import CAPS, Progress
from .tracking import make_tracker

log = logging.getLogger(__name__)

BUDGET_COUNTS = "training messages (activations up, gradients down) of all clients; weights messages are not included"


@dataclass
class Member:
    """One simulated client and where it stands in its own data."""

    id: int
    indices: torch.Tensor  # its samples of the training set
    client: SplitClient
    epoch: int = 0  # passes over its own samples completed
    batch_in_epoch: int = 0
    steps: int = 0  # its training steps: the step ids of its messages
    version: int = 0  # the federation version of the half it holds
    trained: int = 0  # samples trained on this round (its FedAvg weight)
    _batches: Iterator | None = field(default=None, repr=False)

    def state_dict(self) -> dict:
        return {"model": self.client.model.state_dict(), "optimizer": self.client.optimizer.state_dict(),
                "compressor": self.client.compressor.state_dict(), "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "steps": self.steps, "version": self.version}

    def load_state_dict(self, s: dict) -> None:
        self.client.model.load_state_dict(s["model"])
        self.client.optimizer.load_state_dict(s["optimizer"])
        self.client.compressor.load_state_dict(s["compressor"])
        self.epoch, self.batch_in_epoch, self.steps, self.version = s["epoch"], s["batch_in_epoch"], s["steps"], s["version"]


class Simulation:
    """The clients, the server's half (or halves) and sessions, and the federation of one run."""

    def __init__(self, cfg: DictConfig, data, device, shaping, progress: Progress):
        c = cfg.clients
        self.cfg, self.data, self.device, self.p = cfg, data, device, progress
        self.scheme = c.scheme
        try:
            self.parts = partition(data.train.labels, c.num, c.partition, alpha=c.alpha,
                                   shards_per_client=c.shards_per_client, min_samples=c.min_samples, seed=cfg.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        client_model, server_model, compressor, self.vit = build_halves(cfg, data.num_classes, device)
        self.compressor = compressor
        bf16 = cfg.train.precision == "bf16"
        # every client starts from the same half (the seed's), with its own copy of it and of the method
        self.members = []
        for i in range(c.num):
            model, method = copy.deepcopy(client_model), copy.deepcopy(compressor)
            client = SplitClient(model, method, make_optimizer(cfg, model, method.client_modules), None,
                                 data.num_classes, bf16=bf16, client_id=i)
            self.members.append(Member(i, self.parts[i], client))
        copies = c.num if self.scheme == "splitfed_v1" else 1  # SplitFed-V1: a server half per client
        self.halves = []
        for _ in range(copies):
            model, method = copy.deepcopy(server_model), copy.deepcopy(compressor)
            self.halves.append(ServerHalf(model, method, make_optimizer(cfg, model, method.server_modules), bf16))
        self.federation = Federation(self.scheme, half_state(self.members[0].client))
        self.sessions = [
            Session(self.halves[i % copies], cfg.train.batch_size, self.vit.num_tokens, self.vit.embed_dim,
                    max_eval_batch=cfg.eval.batch_size, client=i, federation=self.federation)
            for i in range(c.num)
        ]
        for m, session in zip(self.members, self.sessions):
            m.client.exchange = Exchange(InProcessLink(session.handle), standard_mods(progress, shaping))
        self.augment = build_augment(cfg.dataset.get("augment", "none"))
        self._half_schema = Schema({k: v for k, v in self.federation.schema.tensors.items() if k != SAMPLES})

    # -- the pieces of a round ----------------------------------------------------------------------
    def next_batch(self, m: Member) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's next batch of its own samples, in a seeded order per client and pass."""
        cfg = self.cfg
        while True:
            if m._batches is None:
                m._batches = batches(
                    self.data.train, cfg.train.batch_size, self.vit.img_size, self.vit.in_chans,
                    shuffle_seed=(cfg.seed * 100_003 + 10_007 * (m.id + 1) + m.epoch), device=self.device,
                    start=m.batch_in_epoch, augment=self.augment, workers=workers(cfg), indices=m.indices,
                )
            batch = next(m._batches, None)
            if batch is not None:
                m.batch_in_epoch += 1
                return batch
            m.epoch, m.batch_in_epoch, m._batches = m.epoch + 1, 0, None

    def upload(self, m: Member, round_: int) -> None:
        """The member's half to the server (a weights message up; the server acks with a control message)."""
        tensors = {**half_state(m.client), SAMPLES: torch.tensor(m.trained, dtype=torch.int64)}
        _, ack = m.client.exchange(Header("weights", client=m.id, step=round_), tensors, Schema({}), "control")
        m.version = ack.step

    def fetch(self, m: Member) -> None:
        """The current half from the server, if the member's is older (a control message up, weights down)."""
        if m.version == self.federation.version:
            return
        state, header = m.client.exchange(Header("control", client=m.id, step=m.version), {}, self._half_schema, "weights")
        load_half_state(m.client, state)
        m.version = header.step

    def average_server_halves(self, weights: dict[int, float]) -> None:
        """SplitFed-V1: the server-half copies of this round's clients, averaged into every copy (on the
        server: nothing crosses the link)."""
        ids = sorted(weights)
        for part in ("model", "compressor"):
            get = (lambda h: h.model.state_dict()) if part == "model" else (lambda h: h.compressor.server_modules.state_dict())
            avg = fedavg([get(self.halves[i]) for i in ids], [weights[i] for i in ids])
            for h in self.halves:
                (h.model if part == "model" else h.compressor.server_modules).load_state_dict(avg)

    def set_lr(self, lr: float) -> None:
        for opt in [m.client.optimizer for m in self.members] + [h.optimizer for h in self.halves]:
            for group in opt.param_groups:
                group["lr"] = lr

    def holder(self) -> Member:
        """A member that holds the current half (after a round, the one the run has learned)."""
        return next(m for m in self.members if m.version == self.federation.version)

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "progress": asdict(self.p),
                "members": [m.state_dict() for m in self.members], "halves": [h.state_dict() for h in self.halves],
                "sessions": [s.last_step for s in self.sessions], "federation": self.federation.state_dict(),
                "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        for m, s in zip(self.members, state["members"]):
            m.load_state_dict(s)
        for h, s in zip(self.halves, state["halves"]):
            h.load_state_dict(s)
        for session, last in zip(self.sessions, state["sessions"]):
            session.last_step = last
        self.federation.load_state_dict(state["federation"])
        torch.set_rng_state(state["torch_rng"])


def fit_clients(cfg: DictConfig, run_dir: Path, device, shaping, data) -> dict:
    """Train ``clients.num`` clients under ``clients.scheme`` round by round until a cap, the byte
    budget or ``clients.rounds`` ends the run; evaluate the current half with the server's after rounds."""
    if cfg.link.kind != "inprocess":
        raise ConfigError("several clients over gRPC run as `splitvit serve` and one `splitvit client clients.id=<i>` "
                          "per client; `splitvit train` simulates them in one process (link=inprocess)")
    p = Progress()
    sim = Simulation(cfg, data, device, shaping, p)
    ckpt = run_dir / "checkpoints" / "clients.pt"
    if cfg.train.resume:
        if not ckpt.is_file():
            raise ConfigError(f"train.resume=true but {ckpt} does not exist; pass the run_dir of the run to resume")
        state = load_checkpoint_file(ckpt)
        diff = resume_mismatch(state["config"], cfg)
        if diff:
            raise ConfigError("cannot resume a different experiment; these keys differ: " + "; ".join(diff))
        p = Progress.from_state(state["progress"])
        sim = Simulation(cfg, data, device, shaping, p)  # its mods count into the restored ledger
        sim.load_state_dict(state)
        log.info("resumed from %s after round %d (step %d)", ckpt, p.round, p.step)
    for w in reachability(sim.compressor, cfg.train.batch_size, sim.vit):
        log.warning(f"warning: {w}")
    _save_partition(run_dir, sim, data)

    B, n_train = cfg.train.batch_size, len(data.train)
    vit = sim.vit
    budget = None
    if cfg.train.budget_epochs is not None:
        sizes = [min(B, n_train - i * B) for i in range(-(-n_train // B))]
        per_epoch = sum(sum(uncompressed_bytes(b, vit.num_tokens, vit.embed_dim, data.num_classes, 0, 2.302585092994046)) for b in sizes)
        budget = cfg.train.budget_epochs * per_epoch  # bytes of training messages, all clients, both directions

    def stop_reason() -> str | None:
        if cfg.train.max_steps is not None and p.step >= cfg.train.max_steps:
            return "max_steps"
        if budget is not None and p.bytes_up + p.bytes_down >= budget:
            return "budget"
        if p.samples >= cfg.train.epochs * n_train:
            return "epochs"
        if cfg.clients.rounds is not None and p.round >= cfg.clients.rounds:
            return "rounds"
        return None

    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in p.history))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    caps = {**{k: cfg.train.get(k) for k in CAPS}, "rounds": cfg.clients.rounds}
    reason = stop_reason()
    if p.done and reason is None and p.caps == caps:
        reason = p.stopped_by
    p.caps = caps
    tracker = make_tracker(cfg, run_dir)
    total_steps = cfg.train.max_steps or cfg.train.epochs * sum(-(-len(x) // B) for x in sim.parts)
    warmup = round(cfg.train.get("warmup_epochs", 0) * sum(-(-len(x) // B) for x in sim.parts))
    losses: list[float] = []
    last_eval = p.step
    keep = cfg.train.get("checkpoint", "every_eval")
    with _StopBetweenSteps() as interrupt:
        try:
            while reason is None:
                t0 = time.perf_counter()
                _round(cfg, sim, p, losses, stop_reason, interrupt, tracker, total_steps, warmup)
                p.wall_s += time.perf_counter() - t0
                reason = stop_reason()
                p.done, p.stopped_by = reason is not None, reason
                every = cfg.train.get("eval_every")
                if reason is not None or not every or p.step // every > last_eval // every:
                    record = evaluate(cfg, sim.holder().client, data, vit, device, p, losses, epoch=p.samples / n_train)
                    record["round"] = p.round
                    losses.clear()
                    last_eval = p.step
                    tracker.evaluation(record)
                    p.history.append(record)
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    if keep == "every_eval" or (keep == "last" and reason is not None):
                        atomic_save(sim.state_dict(), ckpt)
                    log.info(f"round {p.round} step {p.step} epoch {record['epoch']:.2f}: val_loss {record['val_loss']:.4f} "
                             f"val_acc {record['val_acc']:.4f} sent {(p.bytes_up + p.bytes_down) / 1e6:.2f} MB "
                             f"(+{sum(p.counts('weights', c).up + p.counts('weights', c).down for c in p.clients()) / 1e6:.2f} MB weights)")
        except Interrupted:
            raise Interrupted(p.step, False) from None  # the run resumes from the last round it saved
        finally:
            tracker.close()

    summary = make_summary(cfg, sim.compressor, vit, p, reason, data)
    summary.update(clients_summary(cfg, sim, p))
    holder = sim.holder().client
    for mode in cfg.eval.get("also") or []:
        loss, acc = holder.evaluate(_test_batches(cfg, data, vit, device), mode)
        summary[f"final_val_acc_{mode}"], summary[f"final_val_loss_{mode}"] = acc, loss
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _round(cfg, sim: Simulation, p: Progress, losses: list[float], stop_reason, interrupt, tracker, total: int, warmup: int) -> None:
    """One round: who takes part, their steps in the scheme's order, then the hand-off or the average."""
    r, scheme = p.round, sim.scheme
    ids = participants(cfg.seed, r, cfg.clients.num, cfg.clients.fraction)
    steps = {c: local_steps(cfg.clients.local_steps, len(sim.parts[c]), cfg.train.batch_size) for c in ids}
    order = step_order(cfg.seed, r, steps, scheme)
    for c in ids:
        sim.members[c].trained = 0
    if scheme != "sequential":
        for c in ids:
            sim.fetch(sim.members[c])  # the last average, where a client missed it
    turn = None
    for c in order:
        m = sim.members[c]
        if scheme == "sequential" and c != turn:  # the half is handed on through the server
            if turn is not None:
                sim.upload(sim.members[turn], r)
            sim.fetch(m)
            turn = c
        images, labels = sim.next_batch(m)
        sim.set_lr(cfg.train.lr * lr_factor(cfg.train.get("schedule", "constant"), p.step, total, warmup))
        losses.append(m.client.train_step(images, labels, m.steps))
        m.steps += 1
        m.trained += labels.shape[0]
        p.step += 1
        p.samples += labels.shape[0]
        vit = sim.vit
        up, down = uncompressed_bytes(labels.shape[0], vit.num_tokens, vit.embed_dim, sim.data.num_classes, m.steps - 1, losses[-1])
        p.baseline_up += up
        p.baseline_down += down
        tracker.step(p.step, losses[-1], p.bytes_up + p.bytes_down)
        if interrupt.requested:
            raise Interrupted(p.step, False)
        if stop_reason() in ("max_steps", "budget"):
            break
    if scheme == "sequential":
        if turn is not None:
            sim.upload(sim.members[turn], r)  # the server holds the latest half for the next round
    else:
        trained = [c for c in ids if sim.members[c].trained > 0]
        for c in trained:
            sim.upload(sim.members[c], r)
        weights = sim.federation.average()
        if scheme == "splitfed_v1" and trained:
            sim.average_server_halves({c: w for c, w in zip(trained, weights)})
        for c in trained:
            sim.fetch(sim.members[c])  # the average back to the round's clients
    p.round += 1


def _save_partition(run_dir: Path, sim: Simulation, data) -> None:
    """``clients.json``: each client's size and class histogram (how the training set was split)."""
    hist = histograms(data.train.labels, sim.parts, data.num_classes)
    (run_dir / "clients.json").write_text(json.dumps(
        {"partition": sim.cfg.clients.partition, "alpha": sim.cfg.clients.alpha, "seed": sim.cfg.seed,
         "clients": [{"id": i, "samples": len(part), "histogram": h} for i, (part, h) in enumerate(zip(sim.parts, hist))]},
    ) + "\n")


def clients_summary(cfg, sim: Simulation, p: Progress) -> dict:
    """summary.json's figures for several clients: per client, and the weights messages in total."""
    per_client = []
    for m in sim.members:
        t, w, e = p.counts("train", m.id), p.counts("weights", m.id), p.counts("control", m.id)
        per_client.append({
            "id": m.id, "samples": len(m.indices), "steps": m.steps,
            "bytes_up": t.up, "bytes_down": t.down,
            # a half handed on: weights up (and its ack), fetched: control up, weights down
            "weights_bytes_up": w.up + e.up, "weights_bytes_down": w.down + e.down,
            "eval_bytes_up": p.counts("eval", m.id).up, "eval_bytes_down": p.counts("eval", m.id).down,
        })
    weights_up = sum(c["weights_bytes_up"] for c in per_client)
    weights_down = sum(c["weights_bytes_down"] for c in per_client)
    return {
        "clients": cfg.clients.num, "scheme": cfg.clients.scheme, "partition": cfg.clients.partition,
        "alpha": cfg.clients.alpha if cfg.clients.partition == "dirichlet" else None,
        "rounds": p.round, "budget_counts": BUDGET_COUNTS,
        "eval_model": ("the current client half (the last one handed on) with the server half" if cfg.clients.scheme == "sequential"
                       else "the averaged client half with the " + ("averaged server-half copies" if cfg.clients.scheme == "splitfed_v1"
                                                                    else "server half")),
        "weights_bytes_up": weights_up, "weights_bytes_down": weights_down,
        "total_bytes": p.bytes_up + p.bytes_down + weights_up + weights_down,
        "per_client": per_client,
    }
