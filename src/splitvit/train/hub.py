"""The server's side of a run: one client or several, in a ``splitvit serve`` or in a simulation.

A single client is a federation of one (see :mod:`splitvit.train.schemes`): the same hub, sessions
and referee serve it, so every feature works with any number of clients.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from ..channel import ChannelSpec
from ..compression.schedule import CompressionSchedule
from ..link import Counts
from ..link.grpc import Refused
from ..profiling import Profiler
from .alast import build_alast
from .baseline import epoch_bytes
from .build import build_halves, make_optimizer
from .checkpoint import atomic_save, checksum_file, load_checkpoint_file
from .client import SplitClient
from .federation import Coordinator, Federation, caps_reached, half_state, spent
from .mods import ProfileStep, find
from .schemes import RoundPlan, build_scheme
from .server import ServerHalf, Session, server_digest
from .strategy import averaging
from .state import Progress

log = logging.getLogger(__name__)

KEEP_ROUNDS = 2  # a client may die between the server's save of a round and its own: keep the one before too


def client_template(cfg: DictConfig, client_model, method, vit, num_classes: int) -> dict:
    """A client half as every client holds it (ALaST's adapters included): what the server hands on."""
    model = copy.deepcopy(client_model)
    build_alast(cfg, model, vit.num_tokens, vit.depth, "client")
    return half_state(SplitClient(model, method.client(), None, None, num_classes))


class Hub:
    """The server's side of a run: the server half (one copy per client where the scheme says so, each
    with its own ALaST stage under ``finetune=alast``), the :class:`~.federation.Federation` of client
    halves, the :class:`~.federation.Coordinator` that applies the clients' messages in the seed's order,
    each client's :class:`~.server.Session`, and the server's own count of the training messages, from
    which it decides when the run ends. ``state_dir``: where each round's state is saved (a server
    process); ``None`` in a simulation, whose clients' checkpoint holds it. Under ``train.profile`` every
    session's training steps go through one :class:`~.mods.ProfileStep`, which counts FLOPs on every
    ``flop_every``-th step (by default once an evaluation interval, where the clients count theirs)."""

    def __init__(self, cfg: DictConfig, num_classes: int, device, state_dir: Path | None = None,
                 flop_every: int | None = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.state_dir = None if state_dir is None else Path(state_dir)
        c = cfg.clients
        self.scheme = build_scheme(c.scheme)
        client_model, server_model, method, self.vit = build_halves(cfg, num_classes, device)
        self.digest = server_digest(server_model, method.server())
        bf16 = cfg.train.precision == "bf16"
        self.halves = []
        for _ in range(self.scheme.server_copies(c.num)):
            model, codec = copy.deepcopy(server_model), method.server().to(device)
            alast = build_alast(cfg, model, self.vit.num_tokens, self.vit.depth, "server")  # before the optimizer: LoRA adds parameters
            self.halves.append(ServerHalf(model, codec, make_optimizer(cfg, model, codec.modules), bf16,
                                          mods=[alast] if alast is not None else []))
        self.federation = Federation(self.scheme, client_template(cfg, client_model, method, self.vit, num_classes),
                                     mean=averaging(cfg.clients.get("strategy")))
        self.coordinator = Coordinator(c.num, self._plan, self._close, drop_after_s=float(c.drop_after_s), log=log)
        self.channel = ChannelSpec.from_config(cfg.get("channel"))
        self.schedule = CompressionSchedule.from_config(cfg)
        self.ledger = Progress()  # the server's own count: training messages as received and replied
        self.sessions: dict[int, Session] = {}
        self.sizes: dict[int, int] = {}
        # without train.eval_every a server process cannot know the epoch's length, and counts FLOPs on step 0 only
        self.step_mods = [ProfileStep(Profiler(device), flop_every or cfg.train.eval_every or 1 << 62)
                          ] if cfg.train.get("profile") else []
        self.round_start = 0  # the server's step count when the round in progress started
        self._budget_of: tuple[int, float] = (-1, 0.0)  # (samples, the byte budget for them)
        self.lock = threading.Lock()
        self.restarted = False  # resumed from a saved round (several clients: each must come back from that round)
        self._resumed: dict[int, int] = {}  # the clients back since, and the steps each had taken
        if cfg.train.resume and self.state_dir is not None:  # the server restarted: from the last round it saved
            saved = self._saved()
            if not saved:
                raise Refused(f"the server was started with train.resume=true but {self.state_dir} holds no round's state")
            self.load_state_dict(load_checkpoint_file(saved[-1]))
            self.restarted = True
            self.coordinator.first_round = self.ledger.round
            log.info("resumed the run after round %d (%s)", self.ledger.round, saved[-1])

    @property
    def profiler(self) -> Profiler | None:
        """``train.profile``: the server's phases of every training step."""
        prof = find(self.step_mods, ProfileStep)
        return None if prof is None else prof.profiler

    @property
    def finished(self) -> bool:
        """The run is over and its last event done: a server of one client at a time may take the next."""
        return self.coordinator.finished

    def session(self, client: int, samples: int, resume_steps: int | None = None) -> Session:
        """Client ``client``'s session. A resumed client goes on from its checkpoint: alone, from the round
        the server saved at the same step (the server goes back to it); with others, in the next round."""
        with self.lock:
            if self.coordinator.failure is not None:  # a restart that cannot go on exactly: every client hears why
                raise ValueError(self.coordinator.failure)
            if client not in self.sessions:
                self.sessions[client] = Session(
                    self.halves[client % len(self.halves)], self.cfg.train.batch_size, self.vit.num_tokens,
                    self.vit.embed_dim, max_eval_batch=self.cfg.eval.batch_size, client=client,
                    federation=self.federation, coordinator=self.coordinator, ledger=self, channel=self.channel,
                    mods=self.step_mods, schedule=self.schedule)
            session = self.sessions[client]
            self.sizes[client] = samples
            if resume_steps is not None:
                if self.cfg.clients.num > 1 and self.restarted and self.coordinator.plan is None:
                    self._same_round(client, resume_steps)
                session.rejoin(resume_steps)
                caught_up = self.ledger.counts("train", client).messages == resume_steps
                session.round = (self._alone(resume_steps) if self.cfg.clients.num == 1
                                 else self.coordinator.rejoin(client, caught_up))
                log.info("client %d resumed after %d of its steps; it takes part from round %d", client, resume_steps,
                         session.round + 1)
        self.coordinator.register(client, samples)
        return session

    def _saved(self) -> list[Path]:
        return sorted(self.state_dir.glob("round-*.pt")) if self.state_dir is not None else []

    def _same_round(self, client: int, steps: int) -> None:
        """A server restarted from its last round, before the next starts: a client that comes back resumed has
        saved that round, or the run would go on with steps one side applied and the other never saw (the server
        stopped after saving a round and before the client saved it). When the client saved the round before, and
        the clients back so far agree with that round too, the server goes back to it (it keeps it:
        ``KEEP_ROUNDS``), and the run goes on as if never stopped. A client with steps the server's state lacks
        is refused. One whose checkpoint is older than any round kept (it dropped out earlier) rejoins from the
        next round, as a client that drops out does."""
        def own(ledger: Progress, c: int) -> int:
            return ledger.counts("train", c).messages

        back = {**self._resumed, client: steps}
        if all(own(self.ledger, c) == s for c, s in back.items()):
            self._resumed[client] = steps
            return
        for path in reversed(self._saved()):
            ledger = Progress.from_state(load_checkpoint_file(path)["ledger"])
            if ledger.round < self.ledger.round and all(own(ledger, c) == s for c, s in back.items()):
                log.info("client %d saved round %d, the server round %d: the server goes back to round %d (%s), "
                         "which it kept", client, ledger.round, self.ledger.round, ledger.round, path.name)
                self.load_state_dict(load_checkpoint_file(path))
                self.coordinator.first_round = self.ledger.round
                self._resumed[client] = steps
                return
        held = own(self.ledger, client)
        if steps > held:
            others = ", ".join(f"client {c} after {s}" for c, s in self._resumed.items())
            reason = (f"client {client} resumes after {steps} of its steps, but the server's state after round "
                      f"{self.ledger.round} holds {held} of them{f' (it agrees with {others})' if others else ''}: the "
                      "processes were stopped between saving one round and the next, and the clients saved different "
                      "rounds, so the run cannot go on exactly. Start it anew (a new run_dir for the server and the "
                      "clients)")
            self.coordinator.fail(reason)  # the clients back already, waiting for the round, hear it too
            raise ValueError(reason)
        log.warning("client %d resumes after %d of its steps, older than any round the server kept (it holds %d of "
                    "them): it dropped out earlier, and takes part again from the next round", client, steps, held)

    def _alone(self, steps: int) -> int:
        """A federation of one resumed after ``steps``: the server takes the state it had there (the round
        it saved there, or its own when it holds that very step) and the round the client goes on
        with: a round the client ended mid-way (Ctrl-C) ends there on the server too. Returns that round."""
        c = self.coordinator
        if self.ledger.step != steps:
            for path in reversed(self._saved()):
                state = load_checkpoint_file(path)
                if Progress.from_state(state["ledger"]).step == steps:
                    self.load_state_dict(state)
                    break
            else:
                have = [Progress.from_state(load_checkpoint_file(p)["ledger"]).step for p in self._saved()]
                raise ValueError(f"the client resumes after {steps} steps, but this server holds step {self.ledger.step} "
                                 f"and saved rounds after {have or 'none'} steps: resume the client from one of those, "
                                 "or start both anew")
            target = self.ledger.round
        elif c.plan is None:
            target = c.first_round
        else:
            target = c.plan.round + (steps != self.round_start)
        if c.plan is None:
            c.first_round = target
        else:
            c.restart(target, back=0)
        return target

    def _plan(self, round_: int, sizes: list[int]) -> RoundPlan:
        self.round_start = self.ledger.step  # where the round starts: a client alone may end it before its plan does
        c = self.cfg.clients
        return self.scheme.plan(self.cfg.seed, round_, sizes, c.fraction, self.cfg.train.batch_size, c.local_steps,
                                self.ledger.step, self.cfg.train.eval_every)

    def _budget(self) -> float | None:
        """``train.budget_epochs`` in bytes, for the clients' samples (measured once for each count)."""
        cfg, n = self.cfg, sum(self.sizes.values())
        if cfg.train.budget_epochs is None:
            return None
        if self._budget_of[0] != n:
            self._budget_of = (n, cfg.train.budget_epochs * epoch_bytes(n, cfg.train.batch_size, self.vit.num_tokens,
                                                                          self.vit.embed_dim, self.num_classes))
        return self._budget_of[1]

    def progress(self) -> float:
        """How far the run is, in [0, 1]: the share of its nearest cap spent, on the server's count (what a
        compression schedule follows)."""
        p = self.ledger
        with self.lock:
            return spent(self.cfg, p.step, p.samples, p.bytes_up + p.bytes_down, p.round, sum(self.sizes.values()),
                         self._budget())

    def _samples(self, client: int, step: int) -> int:
        B, n = self.cfg.train.batch_size, self.sizes[client]
        j = step % -(-n // B)  # the step's batch within the client's pass over its samples
        return min(B, n - j * B)

    def cuts(self, client: int, up: int, down: int, step: int) -> bool:
        """Whether the training step just applied reaches a cap, for a scheme that ends a round there (the
        coordinator then cuts the round). ``up``, ``down``: its request's and reply's bytes."""
        if not self.scheme.cuts_at_caps(self.cfg.clients.num):
            return False
        p = self.ledger
        with self.lock:
            reason = caps_reached(self.cfg, p.step + 1, p.samples + self._samples(client, step),
                                  p.bytes_up + p.bytes_down + up + down, p.round, sum(self.sizes.values()), self._budget())
        if reason is not None:
            self.coordinator.cut(self.scheme)
        return reason is not None

    def count(self, client: int, up: int, down: int, step: int) -> None:
        """A training step applied: its bytes, as received and replied, in the server's own count."""
        with self.lock:
            self.ledger.record(client, "train", Counts(up, down, 1))
            self.ledger.step += 1
            self.ledger.samples += self._samples(client, step)

    def _close(self, plan: RoundPlan) -> bool:
        """The end of a round: the scheme's (SplitFed averages); the caps are checked on the server's count.
        Returns whether the run is over; the round's state is saved in ``state_dir``, when there is one."""
        self.scheme.close(self.federation, self.halves, plan)
        cfg, p, n = self.cfg, self.ledger, sum(self.sizes.values())
        p.round = plan.round + 1
        reason = caps_reached(cfg, p.step, p.samples, p.bytes_up + p.bytes_down, p.round, n, self._budget())
        self.federation.stopped = reason is not None
        p.stopped_by = reason
        log.log(logging.INFO if len(self.sizes) > 1 else logging.DEBUG, "round %d closed: %d steps, %.2f MB of training messages%s", p.round, p.step,
                 (p.bytes_up + p.bytes_down) / 1e6, f"; the run is over ({reason})" if reason else "")
        if self.state_dir is not None:
            self._save_round(reason)
        return reason is not None

    def _save_round(self, reason: str | None) -> None:
        p = self.ledger
        atomic_save(self.state_dict(), self.state_dir / f"round-{p.step:09d}.pt")
        for old in self._saved()[:-KEEP_ROUNDS]:
            old.unlink()
            checksum_file(old).unlink(missing_ok=True)
        (self.state_dir / "summary.json").write_text(json.dumps({
            "rounds": p.round, "steps": p.step, "samples": p.samples, "stopped_by": reason,
            "bytes_up": p.bytes_up, "bytes_down": p.bytes_down,
            "per_client": {c: {"bytes_up": p.counts("train", c).up, "bytes_down": p.counts("train", c).down,
                               "steps": p.counts("train", c).messages} for c in p.clients()},
        }, indent=2) + "\n")

    def evaluated(self) -> None:
        """The round's evaluator said ``done``: every step of the round is over. A server process logs its
        phases of the round beside its round files (over gRPC they never reach a client's metrics.jsonl)."""
        if self.profiler is None or self.state_dir is None:
            return
        interval = self.profiler.summary()
        self.profiler.reset_times()  # (which adds the interval to the run's totals)
        p = self.ledger
        with (self.state_dir / "profile.jsonl").open("a") as f:
            f.write(json.dumps({"round": p.round, "step": p.step, "server": interval,
                                "server_run": self.profiler.summary(run=True)}) + "\n")

    def server_optimizers(self) -> list:
        """The optimizers of the server's halves."""
        return [h.optimizer for h in self.halves]

    def alast_summary(self) -> dict:
        """ALaST's state on the server's side, by half (one, or one per client's copy)."""
        stages = [h.alast for h in self.halves if h.alast is not None]
        if len(stages) == 1:
            return {"server": stages[0].summary()}
        return {f"server {i}": a.summary() for i, a in enumerate(stages)}

    def state_dict(self) -> dict:
        """The server's side of a round: its halves, the federation, the sessions' steps, its ledger."""
        return {"halves": [h.state_dict() for h in self.halves], "federation": self.federation.state_dict(),
                "sessions": {c: s.last_step for c, s in self.sessions.items()}, "ledger": asdict(self.ledger)}

    def load_state_dict(self, state: dict) -> None:
        """The state of a finished round (the sessions' step ids are set again as their clients come back)."""
        for h, s in zip(self.halves, state["halves"]):
            h.load_state_dict(s)
        self.federation.load_state_dict(state["federation"])
        self.ledger = Progress.from_state(state["ledger"])
        for c, last in state["sessions"].items():
            if int(c) in self.sessions:
                self.sessions[int(c)].last_step = last
