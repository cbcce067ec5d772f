"""The one training loop of a split run, whatever the number of clients: the round loop every client
process runs, and the simulation of all of them in one process.

A single client is a federation of one (:mod:`splitvit.train.schemes`): nothing is handed on and a
round runs up to its next evaluation, so the same loop is plain split learning, step for step. Each
client is a :class:`Member`: its share of the training set, its own client half, its own instance of
the method (its client side) and optimizer, its own ALaST stage, inspector and profiler, and its own
exchange path, whose mods count its bytes under its id and play its channel. :class:`Simulation` holds
every member and the server's side, a :class:`~.hub.Hub`, as ``splitvit serve`` has. Every message,
weights included, is serialised and goes through a session exactly as it would over gRPC, where one
process runs one member (:class:`~.remote.RemoteClient`). A round, top to bottom, is :func:`_round`;
the architecture page (``docs/architecture.md``) draws it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from ..channel import Channel, ChannelSpec, channel_metrics, combined, idle
from ..compression.schedule import CompressionSchedule
from ..data import batches, num_batches
from ..data.augment import build_augment
from ..data.partition import histograms, partition
from ..link import Exchange, InProcessLink, LinkModel, standard_mods
from ..profiling import Profiler, peak_rss_mb
from ..wire import Header, Schema
from .alast import ALaST, build_alast
from .baseline import uncompressed_bytes
from .build import build_halves, make_optimizer
from .checkpoint import atomic_save, load_resumable
from .client import SplitClient
from .config import ConfigError
from .federation import SAMPLES, half_schema, half_state, load_half_state
from .hub import Hub, client_template
from .inspect import Inspector
from .mods import ProfileStep, find
from .common import (Interrupted, StopBetweenSteps, evaluate, lr_factor, make_summary, reachability, test_batches,
                        workers)
from .schemes import RoundPlan, build_scheme
from .state import CAPS, Progress
from .tracking import make_tracker

log = logging.getLogger(__name__)

BUDGET_COUNTS = ("training messages (activations up, gradients down) of all clients; weights and control messages "
                 "are not included")
CHANNEL_SEED = 0x6368616E  # a channel's generator: seed + this (+ the client's share), apart from the run's other randomness


@dataclass
class Member:
    """One client and where it stands in its own data."""

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

    def mod(self, kind: type):
        """The client's step mod of type ``kind`` (its profiler, inspector, ALaST stage), or None."""
        return find(self.client.mods, kind)

    def state_dict(self) -> dict:
        """The client's half, optimizer, method side, ALaST stage and place in its data."""
        c, alast = self.client, self.mod(ALaST)
        return {"model": c.model.state_dict(), "optimizer": c.optimizer.state_dict(),
                "compressor": c.codec.state_dict(), "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch, "steps": self.steps, "version": self.version,
                "told_stop": self.told_stop, "target": c.target,
                **({"alast": alast.state_dict()} if alast is not None else {})}

    def load_state_dict(self, s: dict) -> None:
        """Restore :meth:`state_dict`."""
        c, alast = self.client, self.mod(ALaST)
        c.model.load_state_dict(s["model"])
        c.optimizer.load_state_dict(s["optimizer"])
        c.codec.load_state_dict(s["compressor"])
        if alast is not None:
            alast.load_state_dict(s["alast"])
        self.epoch, self.batch_in_epoch, self.steps, self.version = s["epoch"], s["batch_in_epoch"], s["steps"], s["version"]
        self.told_stop = s.get("told_stop", False)
        if c.target is not None:  # under a compression schedule: the target of its next step
            c.target = s.get("target", c.target)

    # -- what a client sends besides its training steps (see splitvit.wire.protocol) ----------------
    def upload(self, round_: int, hand_on: bool) -> bool:
        """Its half to the server (``weights`` up); ``hand_on``: the server's current half is now this one.
        Returns whether the reply says the run is over."""
        tensors = {**half_state(self.client), SAMPLES: torch.tensor(self.trained, dtype=torch.int64)}
        _, ack = self.client.exchange(Header("weights", client=self.id, step=round_), tensors, Schema({}), "control")
        if hand_on:
            self.version = ack.step
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
    split of the training set, each local client's half, method, optimizer and instruments, and its
    batches."""

    def __init__(self, cfg: DictConfig, data, device, progress: Progress, local: list[int]):
        c = cfg.clients
        self.cfg, self.data, self.device, self.p = cfg, data, device, progress
        self.scheme = build_scheme(c.scheme)
        try:  # every process computes the whole split from the seed: the server plans from its sizes
            self.parts = partition(data.train.labels, c.num, c.partition, alpha=c.alpha,
                                   shards_per_client=c.shards_per_client, min_samples=c.min_samples, seed=cfg.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.sizes = [len(x) for x in self.parts]
        client_model, self.server_model, self.method, self.vit = build_halves(cfg, data.num_classes, device)
        self.channel = ChannelSpec.from_config(cfg.get("channel"))
        bf16 = cfg.train.precision == "bf16"
        # FLOPs are counted (not time) on every flop_every-th step of a client: once an evaluation interval
        self.flop_every = cfg.train.eval_every or num_batches(data.train, cfg.train.batch_size)
        # every client starts from the same half (the seed's), with its own copy of it and of the method
        self.members: dict[int, Member] = {}
        for i in local:
            model, codec = copy.deepcopy(client_model), self.method.client().to(device)
            alast = build_alast(cfg, model, self.vit.num_tokens, self.vit.depth, "client")  # before the optimizer: LoRA adds parameters
            client = SplitClient(model, codec, make_optimizer(cfg, model, codec.modules), None,
                                 data.num_classes, bf16=bf16, client_id=i, channel=self.channel,
                                 mods=self.step_mods(alast), schedule=CompressionSchedule.from_config(cfg))
            self.members[i] = Member(i, self.parts[i], client)
        self.template = client_template(cfg, client_model, self.method, self.vit, data.num_classes)
        self.half_schema = half_schema(self.template)
        self.augment = build_augment(cfg.dataset.get("augment", "none"))

    def step_mods(self, alast: ALaST | None) -> list:
        """What each training step of a client goes through, outermost first: the profiler (so the others'
        work is in its step), the inspector, ALaST's stage."""
        cfg = self.cfg
        mods = [ProfileStep(Profiler(self.device), self.flop_every)] if cfg.train.get("profile") else []
        mods += [Inspector()] if cfg.train.get("inspect") else []
        return mods + ([alast] if alast is not None else [])

    def mods(self, m: Member, shaping: LinkModel | None) -> list:
        """What every message of member ``m`` goes through: the byte count, the link-time model, its channel."""
        noise = None
        if not self.channel.ideal:  # each client's own generator; client 0's is the one a single client always had
            method = self.method
            noise = Channel(self.channel, method.role, method.repair, self.p.channel.setdefault(str(m.id), {}),
                            seed=CHANNEL_SEED + self.cfg.seed + 1_000_003 * m.id)
        return standard_mods(self.p, shaping, noise)

    def plan(self, round_: int) -> RoundPlan:
        """Round ``round_``'s plan, as the server makes it from the same inputs."""
        c = self.cfg.clients
        return self.scheme.plan(self.cfg.seed, round_, self.sizes, c.fraction, self.cfg.train.batch_size, c.local_steps,
                                self.p.global_steps, self.cfg.train.eval_every)

    def shuffle_seed(self, m: Member) -> int:
        """The seed of member ``m``'s order in its current pass: each client its own; a federation of one
        shuffles the whole set as plain split learning always has."""
        base = self.cfg.seed * 100_003 + m.epoch
        return base if self.cfg.clients.num == 1 else base + 10_007 * (m.id + 1)

    def next_batch(self, m: Member) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's next batch of its own samples, in a seeded order per client and pass."""
        cfg = self.cfg
        while True:
            if m._batches is None:
                m._batches = batches(
                    self.data.train, cfg.train.batch_size, self.vit.img_size, self.vit.in_chans,
                    shuffle_seed=self.shuffle_seed(m), device=self.device, start=m.batch_in_epoch, augment=self.augment,
                    workers=workers(cfg), indices=m.indices,
                )
            batch = next(m._batches, None)
            if batch is None:  # a pass ends where its batches do
                m.epoch, m.batch_in_epoch, m._batches = m.epoch + 1, 0, None
                continue
            m.batch_in_epoch += 1
            if m.batch_in_epoch == -(-len(m.indices) // cfg.train.batch_size):  # its last: the next pass starts
                m.epoch, m.batch_in_epoch, m._batches = m.epoch + 1, 0, None
            return batch

    def epochs(self) -> float:
        """Passes over the training set by all clients: each client's whole passes, and its batches into the
        current one, in proportion to its share of the set."""
        B, total = self.cfg.train.batch_size, 0.0
        for c, n in enumerate(self.sizes):
            steps, per_pass = self.p.client_steps.get(str(c), 0), -(-n // B)
            total += (steps // per_pass + steps % per_pass / per_pass) * n
        return total / len(self.data.train)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every optimizer of the run."""
        for opt in [m.client.optimizer for m in self.members.values()] + self.server_optimizers():
            for group in opt.param_groups:
                group["lr"] = lr

    def server_optimizers(self) -> list:
        """The server's optimizers (none in a client process)."""
        return []

    def server_profiler(self) -> Profiler | None:
        """The server's profiler (``train.profile``), where it lives in this process."""
        return None

    def server_alast(self) -> dict:
        """The server's ALaST summary, where it lives in this process."""
        return {}

    def records(self, run: bool = False) -> dict:
        """What the run measures beside accuracy and bytes, by side (``client`` alone, ``client <i>`` with
        several in this process): its phases (``train.profile``, since the last call; ``run``: over the
        run), the channel's counters, and, since the last evaluation, what the method does at the cut
        (``train.inspect``) and ALaST's state."""
        several = len(self.members) > 1
        name = (lambda m: f"client {m.id}") if several else (lambda m: "client")  # noqa: E731
        out: dict = {}
        profiles = {name(m): m.mod(ProfileStep).profiler for m in self.members.values() if m.mod(ProfileStep) is not None}
        if self.server_profiler() is not None:
            profiles["server"] = self.server_profiler()
        if profiles:
            out["profile"] = {**{side: prof.summary(run) for side, prof in profiles.items()}, "peak_rss_mb": peak_rss_mb()}
            if not run:
                for prof in profiles.values():
                    prof.reset_times()
        if self.p.channel:
            out.update(channel_metrics(combined(self.p.channel)))
            if len(self.p.channel) > 1:
                out["channel_per_client"] = {c: channel_metrics(combined({c: s})) for c, s in sorted(self.p.channel.items())}
        if run:
            return out
        inspected = {name(m): m.mod(Inspector).summary() for m in self.members.values() if m.mod(Inspector) is not None}
        if inspected:
            out["inspect"] = inspected if several else inspected["client"]
        alast = {**{name(m): m.mod(ALaST).summary() for m in self.members.values() if m.mod(ALaST) is not None},
                 **self.server_alast()}
        if alast:
            out["alast"] = alast
        return out

    def state_dict(self) -> dict:
        """What a checkpoint of this process holds."""
        return {"config": OmegaConf.to_container(self.cfg, resolve=True), "progress": asdict(self.p),
                "members": {i: m.state_dict() for i, m in self.members.items()}, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        for i, s in state["members"].items():
            self.members[int(i)].load_state_dict(s)
        torch.set_rng_state(state["torch_rng"])

    def close_link(self) -> None:
        """Close the clients' links."""
        pass

    def stopped_by(self) -> str | None:
        """Why the run ended; over gRPC only the server knows, and its log says."""
        return "server"

    def go_on(self) -> None:
        """Resumed under other caps, the run that had ended goes on (here: nothing to restart)."""
        pass


class Simulation(Clients):
    """Every client and the server's side (a :class:`~.hub.Hub`, as ``splitvit serve`` has) in one
    process; each client's messages reach its session as bytes through its own exchange path. The
    hub's referee never waits here (every event comes when it is due), but it closes each round at the
    very event a server closes it at, and the hub decides when the run ends, as a server does."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data, device, shaping, progress: Progress):
        super().__init__(cfg, data, device, progress, list(range(cfg.clients.num)))
        # keeps no state of its own (clients.pt holds it); FLOPs on the steps the clients count theirs
        self.hub = Hub(cfg, data.num_classes, device, flop_every=self.flop_every)
        for m in self.members.values():
            session = self.hub.session(m.id, self.sizes[m.id])
            m.client.exchange = Exchange(InProcessLink(session.handle), self.mods(m, shaping))

    def server_optimizers(self) -> list:
        return self.hub.server_optimizers()

    def server_profiler(self) -> Profiler | None:
        return self.hub.profiler

    def server_alast(self) -> dict:
        return self.hub.alast_summary()

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
    budget or ``clients.rounds`` ends the run; the round's evaluator evaluates its half with the
    server's when due. With ``link=grpc`` this process is client ``clients.id`` of a ``splitvit serve``
    (``make_clients``: :class:`~.remote.RemoteClient`), and the server decides when the run ends."""
    loop = Loop(cfg, run_dir, device, shaping, data, make_clients)
    with StopBetweenSteps() as interrupt:
        with loop.saving_on_interrupt():
            while not loop.over:
                if loop.play(interrupt) is None:
                    break
            return loop.finish()


class Loop:
    """One process's side of a run, round by round: its clients (all of them in a simulation, one over gRPC),
    their progress, the run files (``metrics.jsonl``, ``config.yaml``, ``clients.json``, the checkpoint
    ``checkpoints/clients.pt``) and the evaluation of a round by its evaluator. :func:`fit_clients` plays
    every round and then :meth:`finish`; a Flower ClientApp (:mod:`splitvit.flower`) plays one round per
    message, in a fresh process each time, from the checkpoint the last one saved."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device, shaping, data, make_clients=None):
        self.cfg, self.run_dir, self.data, self.device = cfg, run_dir, data, device
        self.remote = cfg.link.kind != "inprocess"
        p = self.p = Progress()
        self.ckpt = run_dir / "checkpoints" / "clients.pt"
        state = None
        if cfg.train.resume:
            state = load_resumable(self.ckpt, cfg)
            p = self.p = Progress.from_state(state["progress"])
        clients = self.clients = (make_clients or Simulation)(cfg, run_dir, data, device, shaping, p)
        if state is not None:
            clients.load_state_dict(state)
            log.info("resumed from %s after round %d (step %d)", self.ckpt, p.round, p.step)
        warnings = self.warnings = reachability(clients.method, cfg.train.batch_size, clients.vit)
        warnings += filter(None, [idle(clients.channel, clients.method.roles, cfg.method.name)])
        for w in warnings:
            log.warning(f"warning: {w}")
        _save_partition(run_dir, clients, data)
        B = cfg.train.batch_size
        self.metrics_path = run_dir / "metrics.jsonl"
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in p.history))
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        self.tracker = make_tracker(cfg, run_dir)
        steps_per_pass = sum(-(-n // B) for n in clients.sizes)  # all clients' steps in one pass over the set
        self.total_steps = cfg.train.epochs * steps_per_pass
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.warmup = round(cfg.train.get("warmup_epochs", 0) * steps_per_pass)
        self.losses = p.losses  # saved with the progress: a run resumed mid-interval averages all of the interval's losses
        self.keep = cfg.train.get("checkpoint", "every_eval")
        self.clock = time.perf_counter()  # since the wall time was last added to p.wall_s
        caps = {**{k: cfg.train.get(k) for k in CAPS}, "rounds": cfg.clients.rounds}
        if p.done and p.caps != caps:  # resumed under other caps: it may train on
            p.done, p.stopped_by = False, None
            clients.go_on()
        p.caps = caps
        self.over = p.done
        self.closed = False

    def tick(self) -> None:
        """Add the wall time since the last tick to the progress."""
        now = time.perf_counter()
        self.p.wall_s += now - self.clock
        self.clock = now

    def evaluate_and_save(self, m: Member, plan: RoundPlan, before: int, final: bool) -> None:
        """As the round's evaluator: evaluate when an evaluation is due (or ``final``), and append the row."""
        cfg, p, clients = self.cfg, self.p, self.clients
        every = cfg.train.get("eval_every")
        after = p.global_steps
        if not (final or not every or after // every > before // every):
            return
        self.tick()  # the training time up to here; evaluate() adds its own
        record = evaluate(cfg, m.client, self.data, clients.vit, self.device, p, self.losses, epoch=clients.epochs())
        record.update(step=after, **({"round": plan.round + 1, "client": m.id} if cfg.clients.num > 1 else {}),
                      **clients.records())
        self.losses.clear()
        self.tracker.evaluation(record)
        p.history.append(record)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.clock = time.perf_counter()
        weights = p.counts("weights").up + p.counts("weights").down + p.counts("control").up + p.counts("control").down
        train_loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        log.info(f"round {plan.round + 1} step {after} epoch {record['epoch']:.2f}: train_loss {train_loss} "
                 f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} sent {(p.bytes_up + p.bytes_down) / 1e6:.2f} MB"
                 + (f" (+{weights / 1e6:.2f} MB weights and control)" if cfg.clients.num > 1 else ""))

    def play(self, interrupt) -> bool | None:
        """The next round, as its plan scripts it, then the checkpoint. Returns whether the run is over after
        it, or None when it never started (the run was over)."""
        cfg, p, clients = self.cfg, self.p, self.clients
        plan = clients.plan(p.round)
        over = _round(cfg, clients, plan, p, self.losses, interrupt, self.tracker, self.total_steps, self.warmup,
                      self.evaluate_and_save)
        if over is None:
            last = p.history[-1].get("round") if p.history else None
            if cfg.clients.num > 1 and (last is None or last < plan.round):
                # this client came back after the run ended: what it last evaluated is not the end
                w = (f"the run ended while this client was away: it took part up to round {p.round}, and its "
                     f"last evaluation, of round {last}, is not the run's final model (the run reached round "
                     f"{plan.round} at least). The run's result is in the run files of the client that "
                     "evaluated its last round; or join this client's half with the server's last round file "
                     "(splitvit export RUN_DIR server=round-<steps>.pt) and measure it (splitvit eval)")
                log.warning(f"warning: {w}")
                self.warnings.append(w)
            self.over = True
            return None
        p.round += 1
        self.tick()
        if self.keep == "every_eval" and not over:
            atomic_save(clients.state_dict(), self.ckpt)
        self.over = over
        return over

    @contextlib.contextmanager
    def saving_on_interrupt(self):
        """Around the rounds: an interrupt saves what is whole and says from where the run resumes; the tracker
        and the links are closed whatever happens."""
        try:
            yield
        except Interrupted as e:
            if e.saved and self.keep != "none":  # the round was closed at the step reached: its state is whole
                atomic_save(self.clients.state_dict(), self.ckpt)
                raise Interrupted(self.p.step, "saved a checkpoint there") from None
            raise Interrupted(self.p.step, "it resumes from the last round it saved" if self.keep != "none"
                              else "saved nothing (train.checkpoint=none)") from None
        finally:
            self.close()

    def close(self) -> None:
        """Close the tracker and the clients' links (once)."""
        if not self.closed:
            self.closed = True
            self.tracker.close()
            self.clients.close_link()

    def finish(self, tell: bool | None = None) -> dict:
        """The run is over: tell the clients not yet told (``tell``; by default in a simulation, where no later
        round will), save, measure the final model (``eval.also``) and write ``summary.json``; returns it."""
        cfg, p, clients = self.cfg, self.p, self.clients
        p.done = True
        if tell is None:
            tell = not self.remote  # over a link, a client process not yet told hears it at its next round
        if tell:  # a client not yet told asks, and hears the run is over
            for m in clients.members.values():
                if not m.told_stop:
                    m.fetch(clients.half_schema)
        if self.keep != "none":
            atomic_save(clients.state_dict(), self.ckpt)
        also = _measure_final(cfg, clients, p, self.data, clients.vit, self.device)  # before the link closes
        self.close()
        reason = p.stopped_by = clients.stopped_by()
        summary = make_summary(cfg, clients.method, clients.vit, p, reason, self.data)
        summary.update(clients_summary(cfg, clients, p))
        summary.update(also)
        summary.update(clients.records(run=True))
        if self.warnings:
            summary["warnings"] = self.warnings
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _measure_final(cfg, clients: Clients, p: Progress, data, vit, device) -> dict:
    """``eval.also``: the final model measured in more ways, by the client that evaluated the last round
    (over gRPC, only that client's process has it)."""
    last = p.history[-1] if p.history else None
    if cfg.clients.num == 1:  # alone: its last round is always evaluated
        evaluator = clients.members[0] if last else None
    else:
        evaluator = clients.members.get(last["client"]) if last and last.get("round") == p.round else None
    out = {}
    for mode in (cfg.eval.get("also") or []) if evaluator is not None else []:
        loss, acc = evaluator.client.evaluate(test_batches(cfg, data, vit, device), mode)
        out[f"final_val_acc_{mode}"], out[f"final_val_loss_{mode}"] = acc, loss
        log.info(f"final model, eval.mode={mode}: val_loss {loss:.4f} val_acc {acc:.4f}")
    return out


def _round(cfg, clients: Clients, plan: RoundPlan, p: Progress, losses: list[float], interrupt, tracker,
           total: int, warmup: int, evaluate_and_save) -> bool | None:
    """One round, top to bottom, as its plan scripts it: each local client's events in the plan's order.
    A reply that says a cap was reached cuts the plan there, as the server cut it. Returns whether the
    run is over after it, or None when it never started (the run was over)."""
    over, cut, before, trained, i = False, False, p.global_steps, 0, 0
    for m in clients.members.values():
        m.trained = 0
    while i < len(plan.stages):
        for c, what in plan.stages[i]:
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
                over |= m.upload(plan.round, clients.scheme.upload_says_stop())
            elif what == "done":  # a cut round is the run's last (a cap cut it)
                evaluate_and_save(m, plan, before, final=over or cut)
                over |= m.done(plan.round)
            else:
                images, labels = clients.next_batch(m)
                clients.set_lr(cfg.train.lr * lr_factor(cfg.train.get("schedule", "constant"), before + trained - 1, total, warmup))
                loss, reached = m.client.train_step(images, labels, m.steps)
                losses.append(loss)
                m.steps += 1
                m.trained += labels.shape[0]
                p.step += 1
                p.samples += labels.shape[0]
                vit = clients.vit
                up, down = uncompressed_bytes(labels.shape[0], vit.num_tokens, vit.embed_dim, clients.data.num_classes,
                                              m.steps - 1, losses[-1], stop=reached)
                p.baseline_up += up
                p.baseline_down += down
                tracker.step(p.step, losses[-1], p.bytes_up + p.bytes_down)
                if reached:  # the server's count reached a cap at this step: the round ends here
                    plan, cut = clients.scheme.cut(plan, i), True
                if interrupt.requested:
                    if len(clients.sizes) > 1:  # the others' rounds go on: this one resumes from its last round
                        raise Interrupted(p.step, "")
                    # a federation of one can end its round at any step: this one ends here, to resume from
                    done = clients.scheme.trained(replace(plan, stages=plan.stages[:i + 1])).steps
                    for c, k in done.items():
                        p.client_steps[str(c)] = p.client_steps.get(str(c), 0) + k
                    p.global_steps, p.round = before + sum(done.values()), p.round + 1
                    raise Interrupted(p.step, "round closed")
        if i == plan.closing:  # every step of the round is taken
            for c, k in plan.steps.items():
                p.client_steps[str(c)] = p.client_steps.get(str(c), 0) + k
            p.global_steps = before + sum(plan.steps.values())
        i += 1
    return over


def _save_partition(run_dir: Path, sim: Clients, data) -> None:
    """``clients.json``: each client's size and class histogram (how the training set was split)."""
    hist = histograms(data.train.labels, sim.parts, data.num_classes)
    (run_dir / "clients.json").write_text(json.dumps(
        {"partition": sim.cfg.clients.partition, "alpha": sim.cfg.clients.alpha, "seed": sim.cfg.seed,
         "clients": [{"id": i, "samples": len(part), "histogram": h} for i, (part, h) in enumerate(zip(sim.parts, hist))]},
    ) + "\n")


def clients_summary(cfg, sim: Clients, p: Progress) -> dict:
    """summary.json's figures of the clients: per client (those this process ran), and the weights and
    control messages in total."""
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
        "engine": cfg.clients.get("engine", "splitvit"),
        "alpha": cfg.clients.alpha if cfg.clients.partition == "dirichlet" else None,
        "rounds": p.round, "budget_counts": BUDGET_COUNTS, "steps_all_clients": p.global_steps,
        "eval_model": sim.scheme.eval_model,
        "weights_bytes_up": weights_up, "weights_bytes_down": weights_down,
        "total_bytes": p.bytes_up + p.bytes_down + weights_up + weights_down,
        "per_client": per_client,
    }
