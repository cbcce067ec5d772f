"""The server's side of a run of several clients, in a ``splitvit serve`` or in a simulation."""

from __future__ import annotations

import copy
import json
import logging
import threading
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from ..link import Counts
from ..link.grpc import Refused
from .baseline import epoch_bytes
from .build import build_halves, make_optimizer
from .checkpoint import atomic_save, load_checkpoint_file
from .client import SplitClient
from .federation import Coordinator, Federation, RoundPlan, caps_reached, close_round, half_state
from .server import ServerHalf, Session, server_digest
from .state import Progress

log = logging.getLogger(__name__)


class Hub:
    """The server's side of a run of several clients: the server half (SplitFed-V1: one copy per
    client), the :class:`~.federation.Federation` of client halves, the :class:`~.federation.Coordinator`
    that applies the clients' messages in the seed's order, each client's :class:`~.server.Session`,
    and the server's own count of the training messages, from which it decides when the run ends."""

    def __init__(self, cfg: DictConfig, num_classes: int, device, state_dir: Path | None = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.state_dir = None if state_dir is None else Path(state_dir)  # None: nothing saved (a simulation)
        c = cfg.clients
        client_model, server_model, compressor, self.vit = build_halves(cfg, num_classes, device)
        self.digest = server_digest(server_model, compressor)
        bf16 = cfg.train.precision == "bf16"
        copies = c.num if c.scheme == "splitfed_v1" else 1
        self.halves = []
        for _ in range(copies):
            model, method = copy.deepcopy(server_model), copy.deepcopy(compressor)
            self.halves.append(ServerHalf(model, method, make_optimizer(cfg, model, method.server_modules), bf16))
        self.federation = Federation(c.scheme, half_state(SplitClient(client_model, compressor, None, None, num_classes)))
        self.coordinator = Coordinator(c.num, self._plan, self._close, drop_after_s=float(c.drop_after_s), log=log)
        self.ledger = Progress()  # the server's own count: training messages as received and replied
        self.sessions: dict[int, Session] = {}
        self.sizes: dict[int, int] = {}
        self.lock = threading.Lock()
        if cfg.train.resume and self.state_dir is not None:  # the server restarted: from the last round it saved
            saved = self.state_dir / "round.pt"
            if not saved.is_file():
                raise Refused(f"the server was started with train.resume=true but {saved} does not exist")
            self.load_state_dict(load_checkpoint_file(saved))
            self.coordinator.first_round = self.ledger.round
            log.info("resumed the run after round %d (%s)", self.ledger.round, saved)

    def session(self, client: int, samples: int, resume_steps: int | None = None) -> Session:
        """Client ``client``'s session. A resumed client goes on from its checkpoint: in the next round,
        or, to a server that itself resumed, in the round the server saved last."""
        with self.lock:
            if client not in self.sessions:
                self.sessions[client] = Session(
                    self.halves[client % len(self.halves)], self.cfg.train.batch_size, self.vit.num_tokens,
                    self.vit.embed_dim, max_eval_batch=self.cfg.eval.batch_size, client=client,
                    federation=self.federation, coordinator=self.coordinator, on_train=self._count)
            session = self.sessions[client]
            self.sizes[client] = samples
            if resume_steps is not None:
                session.rejoin(resume_steps)
                session.round = self.coordinator.rejoin(client)
                log.info("client %d resumed after %d of its steps; it takes part from round %d", client, resume_steps,
                         session.round + 1)
        self.coordinator.register(client, samples)
        return session

    def _plan(self, round_: int, sizes: list[int]) -> RoundPlan:
        c = self.cfg.clients
        return RoundPlan.make(self.cfg.seed, round_, sizes, c.scheme, c.fraction, self.cfg.train.batch_size, c.local_steps)

    def _count(self, client: int, up: int, down: int, step: int) -> None:
        B, n = self.cfg.train.batch_size, self.sizes[client]
        j = step % -(-n // B)  # the step's batch within the client's pass over its samples
        with self.lock:
            self.ledger.record(client, "train", Counts(up, down, 1))
            self.ledger.step += 1
            self.ledger.samples += min(B, n - j * B)

    def _close(self, plan: RoundPlan) -> bool:
        """The end of a round: SplitFed averages; the caps are checked on the server's count. Returns
        whether the run is over; the round's state is saved in ``state_dir``, when there is one."""
        close_round(self.federation, self.halves, self.cfg.clients.scheme, plan)
        cfg, p, n = self.cfg, self.ledger, sum(self.sizes.values())
        budget = None
        if cfg.train.budget_epochs is not None:
            budget = cfg.train.budget_epochs * epoch_bytes(n, cfg.train.batch_size, self.vit.num_tokens,
                                                           self.vit.embed_dim, self.num_classes)
        p.round = plan.round + 1
        reason = caps_reached(cfg, p.step, p.samples, p.bytes_up + p.bytes_down, p.round, n, budget)
        self.federation.stopped = reason is not None
        p.stopped_by = reason
        log.info("round %d closed: %d steps, %.2f MB of training messages%s", p.round, p.step,
                 (p.bytes_up + p.bytes_down) / 1e6, f"; the run is over ({reason})" if reason else "")
        if self.state_dir is not None:
            atomic_save(self.state_dict(), self.state_dir / "round.pt")
            (self.state_dir / "summary.json").write_text(json.dumps({
                "rounds": p.round, "steps": p.step, "samples": p.samples, "stopped_by": reason,
                "bytes_up": p.bytes_up, "bytes_down": p.bytes_down,
                "per_client": {c: {"bytes_up": p.counts("train", c).up, "bytes_down": p.counts("train", c).down,
                                   "steps": p.counts("train", c).messages} for c in p.clients()},
            }, indent=2) + "\n")
        return reason is not None

    def server_optimizers(self) -> list:
        return [h.optimizer for h in self.halves]

    def state_dict(self) -> dict:
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
