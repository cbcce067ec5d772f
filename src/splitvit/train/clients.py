"""Several clients and one server (``clients.num > 1``): the round loop every client process runs, and
the simulation of all of them in one process.

Each client is a :class:`Member`: its share of the training set, its own client half, its own
instance of the method (its client side) and optimizer, and its own exchange path, whose mods count
its bytes under its id. :class:`Simulation` holds every member and the server's side: one
:class:`~.server.ServerHalf` (``splitfed_v1``: one copy per client), a :class:`~.server.Session` per
client, the :class:`~.federation.Federation` that hands client halves on or averages them, and the
referee that closes rounds. Every message, weights included, is serialised and goes through a
session exactly as it would over gRPC, where one process runs one member
(:class:`~.remote.RemoteClient`). A round, top to bottom, is :func:`_round`.
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
from .checkpoint import atomic_save, load_resumable
from .client import SplitClient
from .baseline import uncompressed_bytes
from .config import ConfigError
from .federation import SAMPLES, RoundPlan, half_schema, half_state, load_half_state
from .hub import Hub
from .loop import Interrupted, _StopBetweenSteps, _test_batches, evaluate, lr_factor, make_summary, reachability, workers
from .state import CAPS, Progress
from .tracking import make_tracker

log = logging.getLogger(__name__)

BUDGET_COUNTS = ("training messages (activations up, gradients down) of all clients; weights and control messages "
                 "are not included")


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
    told_stop: bool = False  # a reply has said the run is over
    _batches: Iterator | None = field(default=None, repr=False)

    def state_dict(self) -> dict:
        return {"model": self.client.model.state_dict(), "optimizer": self.client.optimizer.state_dict(),
                "compressor": self.client.compressor.client_state(), "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "steps": self.steps, "version": self.version,
                "told_stop": self.told_stop}

    def load_state_dict(self, s: dict) -> None:
        self.client.model.load_state_dict(s["model"])
        self.client.optimizer.load_state_dict(s["optimizer"])
        self.client.compressor.load_client_state(s["compressor"])
        self.epoch, self.batch_in_epoch, self.steps, self.version = s["epoch"], s["batch_in_epoch"], s["steps"], s["version"]
        self.told_stop = s.get("told_stop", False)

    # -- what a client sends besides its training steps (see splitvit.wire.protocol) ----------------
    def upload(self, round_: int, scheme: str) -> bool:
        """Its half to the server (``weights`` up). Returns whether the reply says the run is over."""
        tensors = {**half_state(self.client), SAMPLES: torch.tensor(self.trained, dtype=torch.int64)}
        _, ack = self.client.exchange(Header("weights", client=self.id, step=round_), tensors, Schema({}), "control")
        if scheme == "sequential":
            self.version = ack.step  # the server's current half is now this one
        self.told_stop |= ack.mode == "stop"
        return ack.mode == "stop"

    def fetch(self, half_schema: Schema) -> bool:
        """The current half, when the member's is older (``control`` ``fetch`` up; ``weights`` down, or
        ``control`` when it is current). Returns whether the reply says the run is over."""
        state, header = self.client.exchange(Header("control", client=self.id, step=self.version, mode="fetch"), {},
                                             lambda h: half_schema if h.kind == "weights" else Schema({}), ("weights", "control"))
        if header.kind == "weights":
            load_half_state(self.client, state)
        self.version = header.step
        self.told_stop |= header.mode == "stop"
        return header.mode == "stop"

    def done(self, round_: int) -> bool:
        """As the round's evaluator: evaluated, the next round may start."""
        _, reply = self.client.exchange(Header("control", client=self.id, step=round_, mode="done"), {}, Schema({}), "control")
        self.told_stop |= reply.mode == "stop"
        return reply.mode == "stop"


class Clients:
    """The clients a process runs (all of them in a simulation, one in a ``splitvit client``): the
    split of the training set, each local client's half, method and optimizer, and its batches."""

    def __init__(self, cfg: DictConfig, data, device, progress: Progress, local: list[int]):
        c = cfg.clients
        self.cfg, self.data, self.device, self.p = cfg, data, device, progress
        self.scheme = c.scheme
        try:  # every process computes the whole split from the seed: the server plans from its sizes
            self.parts = partition(data.train.labels, c.num, c.partition, alpha=c.alpha,
                                   shards_per_client=c.shards_per_client, min_samples=c.min_samples, seed=cfg.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.sizes = [len(x) for x in self.parts]
        client_model, self.server_model, compressor, self.vit = build_halves(cfg, data.num_classes, device)
        self.compressor = compressor
        self.bf16 = cfg.train.precision == "bf16"
        # every client starts from the same half (the seed's), with its own copy of it and of the method
        self.members: dict[int, Member] = {}
        for i in local:
            model, method = copy.deepcopy(client_model), copy.deepcopy(compressor)
            client = SplitClient(model, method, make_optimizer(cfg, model, method.client_modules), None,
                                 data.num_classes, bf16=self.bf16, client_id=i)
            self.members[i] = Member(i, self.parts[i], client)
        self.template = half_state(SplitClient(client_model, compressor, None, None, data.num_classes))
        self.half_schema = half_schema(self.template)
        self.augment = build_augment(cfg.dataset.get("augment", "none"))

    def plan(self, round_: int) -> RoundPlan:
        c = self.cfg.clients
        return RoundPlan.make(self.cfg.seed, round_, self.sizes, c.scheme, c.fraction, self.cfg.train.batch_size, c.local_steps)

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

    def global_samples(self) -> int:
        """Samples trained on by all clients, from their steps (each client's batches are its own passes)."""
        B, total = self.cfg.train.batch_size, 0
        for c, n in enumerate(self.sizes):
            steps, per_pass = self.p.client_steps.get(str(c), 0), -(-n // B)
            total += steps // per_pass * n + min(steps % per_pass * B, n)
        return total

    def set_lr(self, lr: float) -> None:
        for opt in [m.client.optimizer for m in self.members.values()] + self.server_optimizers():
            for group in opt.param_groups:
                group["lr"] = lr

    def server_optimizers(self) -> list:
        return []

    def state_dict(self) -> dict:
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "progress": asdict(self.p),
                "members": {i: m.state_dict() for i, m in self.members.items()}, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        for i, s in state["members"].items():
            self.members[int(i)].load_state_dict(s)
        torch.set_rng_state(state["torch_rng"])

    def close_link(self) -> None:
        pass

    def stopped_by(self) -> str | None:
        """Why the run ended; over gRPC only the server knows, and its log says."""
        return "server"

    def go_on(self) -> None:
        pass


class Simulation(Clients):
    """Every client and the server's side (a :class:`~.hub.Hub`, as ``splitvit serve`` has) in one
    process; each client's messages reach its session as bytes through its own exchange path. The
    hub's referee never waits here (every event comes when it is due), but it closes each round at the
    very event a server closes it at, and the hub decides when the run ends, as a server does."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data, device, shaping, progress: Progress):
        super().__init__(cfg, data, device, progress, list(range(cfg.clients.num)))
        self.hub = Hub(cfg, data.num_classes, device)  # keeps no state of its own: clients.pt holds it
        for m in self.members.values():
            session = self.hub.session(m.id, self.sizes[m.id])
            m.client.exchange = Exchange(InProcessLink(session.handle), standard_mods(progress, shaping))

    def server_optimizers(self) -> list:
        return self.hub.server_optimizers()

    def stopped_by(self) -> str | None:
        return self.hub.ledger.stopped_by

    def state_dict(self) -> dict:
        return {**super().state_dict(), "hub": self.hub.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.hub.load_state_dict(state["hub"])
        self.hub.coordinator.restart(self.p.round)

    def go_on(self) -> None:
        """Resumed under other caps: the run that had ended goes on."""
        self.hub.federation.stopped = False
        self.hub.ledger.stopped_by = None
        self.hub.coordinator.restart(self.p.round)


def fit_clients(cfg: DictConfig, run_dir: Path, device, shaping, data, make_clients=None) -> dict:
    """Train ``clients.num`` clients under ``clients.scheme`` round by round until a cap, the byte
    budget or ``clients.rounds`` ends the run (checked at the end of each round: a round is never cut);
    the round's evaluator evaluates its half with the server's when due. With ``link=grpc`` this
    process is client ``clients.id`` of a ``splitvit serve`` (``make_clients``: :class:`~.remote.RemoteClient`),
    and the server decides when the run ends."""
    remote = cfg.link.kind != "inprocess"
    p = Progress()
    ckpt = run_dir / "checkpoints" / "clients.pt"
    state = None
    if cfg.train.resume:
        state = load_resumable(ckpt, cfg)
        p = Progress.from_state(state["progress"])
    clients = (make_clients or Simulation)(cfg, run_dir, data, device, shaping, p)
    if state is not None:
        clients.load_state_dict(state)
        log.info("resumed from %s after round %d (step %d)", ckpt, p.round, p.step)
    for w in reachability(clients.compressor, cfg.train.batch_size, clients.vit):
        log.warning(f"warning: {w}")
    _save_partition(run_dir, clients, data)

    B, n_train, vit = cfg.train.batch_size, len(data.train), clients.vit
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in p.history))
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    tracker = make_tracker(cfg, run_dir)
    steps_per_pass = sum(-(-n // B) for n in clients.sizes)  # all clients' steps in one pass over the set
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_pass
    warmup = round(cfg.train.get("warmup_epochs", 0) * steps_per_pass)
    losses: list[float] = []
    keep = cfg.train.get("checkpoint", "every_eval")

    def evaluate_and_save(m: Member, plan: RoundPlan, before: int, final: bool) -> None:
        every = cfg.train.get("eval_every")
        after = p.global_steps
        if not (final or not every or after // every > before // every):
            return
        record = evaluate(cfg, m.client, data, vit, device, p, losses, epoch=clients.global_samples() / n_train)
        record.update(round=plan.round + 1, step=after, client=m.id)
        losses.clear()
        tracker.evaluation(record)
        p.history.append(record)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        weights = p.counts("weights").up + p.counts("weights").down + p.counts("control").up + p.counts("control").down
        log.info(f"round {plan.round + 1} step {after} epoch {record['epoch']:.2f}: val_loss {record['val_loss']:.4f} "
                 f"val_acc {record['val_acc']:.4f} sent {(p.bytes_up + p.bytes_down) / 1e6:.2f} MB "
                 f"(+{weights / 1e6:.2f} MB weights and control)")

    caps = {**{k: cfg.train.get(k) for k in CAPS}, "rounds": cfg.clients.rounds}
    if p.done and p.caps != caps:  # resumed under other caps: it may train on
        p.done, p.stopped_by = False, None
        clients.go_on()
    p.caps = caps
    over = p.done
    with _StopBetweenSteps() as interrupt:
        try:
            while not over:
                t0 = time.perf_counter()
                plan = clients.plan(p.round)
                over = _round(cfg, clients, plan, p, losses, interrupt, tracker, total_steps, warmup,
                              evaluate_and_save)
                if over is None:
                    break
                p.round += 1
                p.wall_s += time.perf_counter() - t0
                if keep == "every_eval" and not over:
                    atomic_save(clients.state_dict(), ckpt)
            p.done = True
            if not remote:  # a client not yet told asks at its next round, and hears the run is over
                for m in clients.members.values():
                    if not m.told_stop:
                        m.fetch(clients.half_schema)
            if keep != "none":
                atomic_save(clients.state_dict(), ckpt)
            also = _measure_final(cfg, clients, p, data, vit, device)  # before the link closes
        except Interrupted:
            raise Interrupted(p.step, False) from None  # the run resumes from the last round it saved
        finally:
            tracker.close()
            clients.close_link()
    reason = p.stopped_by = clients.stopped_by()
    summary = make_summary(cfg, clients.compressor, vit, p, reason, data)
    summary.update(clients_summary(cfg, clients, p))
    summary.update(also)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _measure_final(cfg, clients: Clients, p: Progress, data, vit, device) -> dict:
    """``eval.also``: the final model measured in more ways, by the client that evaluated the last round
    (over gRPC, only that client's process has it)."""
    last = p.history[-1] if p.history else None
    evaluator = clients.members.get(last["client"]) if last and last.get("round") == p.round else None
    out = {}
    for mode in (cfg.eval.get("also") or []) if evaluator is not None else []:
        loss, acc = evaluator.client.evaluate(_test_batches(cfg, data, vit, device), mode)
        out[f"final_val_acc_{mode}"], out[f"final_val_loss_{mode}"] = acc, loss
        log.info(f"final model, eval.mode={mode}: val_loss {loss:.4f} val_acc {acc:.4f}")
    return out


def _round(cfg, clients: Clients, plan: RoundPlan, p: Progress, losses: list[float], interrupt, tracker,
           total: int, warmup: int, evaluate_and_save) -> bool | None:
    """One round, top to bottom, as its plan scripts it: each local client's events in the plan's order.
    Returns whether the run is over after it, or None when it never started (the run was over)."""
    over, before, trained = False, p.global_steps, 0
    for m in clients.members.values():
        m.trained = 0
    for i, stage in enumerate(plan.stages):
        for c, what in stage:
            if what == "train":
                trained += 1
            m = clients.members.get(c)
            if m is None:
                continue
            if what == "fetch":
                if m.fetch(clients.half_schema):
                    if i < plan.closing:  # the run ended in an earlier round: this one never starts
                        return None
                    over = True
            elif what == "upload":
                over |= m.upload(plan.round, clients.scheme)
            elif what == "done":
                evaluate_and_save(m, plan, before, final=over)
                over |= m.done(plan.round)
            else:
                images, labels = clients.next_batch(m)
                clients.set_lr(cfg.train.lr * lr_factor(cfg.train.get("schedule", "constant"), before + trained - 1, total, warmup))
                losses.append(m.client.train_step(images, labels, m.steps))
                m.steps += 1
                m.trained += labels.shape[0]
                p.step += 1
                p.samples += labels.shape[0]
                vit = clients.vit
                up, down = uncompressed_bytes(labels.shape[0], vit.num_tokens, vit.embed_dim, clients.data.num_classes,
                                              m.steps - 1, losses[-1])
                p.baseline_up += up
                p.baseline_down += down
                tracker.step(p.step, losses[-1], p.bytes_up + p.bytes_down)
                if interrupt.requested:
                    raise Interrupted(p.step, False)
        if i == plan.closing:  # every step of the round is taken
            for c, k in plan.steps.items():
                p.client_steps[str(c)] = p.client_steps.get(str(c), 0) + k
            p.global_steps = before + sum(plan.steps.values())
    return over


def _save_partition(run_dir: Path, sim: Clients, data) -> None:
    """``clients.json``: each client's size and class histogram (how the training set was split)."""
    hist = histograms(data.train.labels, sim.parts, data.num_classes)
    (run_dir / "clients.json").write_text(json.dumps(
        {"partition": sim.cfg.clients.partition, "alpha": sim.cfg.clients.alpha, "seed": sim.cfg.seed,
         "clients": [{"id": i, "samples": len(part), "histogram": h} for i, (part, h) in enumerate(zip(sim.parts, hist))]},
    ) + "\n")


def clients_summary(cfg, sim: Clients, p: Progress) -> dict:
    """summary.json's figures for several clients: per client (those this process ran), and the weights
    and control messages in total."""
    per_client = []
    for m in sim.members.values():
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
        "rounds": p.round, "budget_counts": BUDGET_COUNTS, "steps_all_clients": p.global_steps,
        "eval_model": ("the current client half (the last one handed on) with the server half" if cfg.clients.scheme == "sequential"
                       else "the averaged client half with the " + ("averaged server-half copies" if cfg.clients.scheme == "splitfed_v1"
                                                                    else "server half")),
        "weights_bytes_up": weights_up, "weights_bytes_down": weights_down,
        "total_bytes": p.bytes_up + p.bytes_down + weights_up + weights_down,
        "per_client": per_client,
    }
