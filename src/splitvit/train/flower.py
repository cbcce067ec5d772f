"""Split learning on Flower: a ``ServerApp`` (:data:`server_app`) and a ``ClientApp`` (:data:`client_app`)
that run a splitvit experiment of several clients on Flower's engines, the simulation (``splitvit train
clients.engine=flower``, or ``flwr run`` on a simulation federation) and a deployment (a SuperLink and
SuperNodes, ``flwr run``). Install with ``pip install -e '.[flower]'`` (Python 3.11 or later).

Flower carries the control plane, splitvit's link the data (docs: "Flower"). A Flower message costs a
round trip through the SuperLink whatever its size, so the per-step activations and gradients never
travel as Flower messages:

- The ServerApp runs the server's side of the run, a :class:`~splitvit.train.hub.Hub` behind splitvit's
  gRPC link server (TLS and a token, as ``splitvit serve``), in its own process.
- Each round it sends the round's participants (the plan of the scheme, from the seed) one Flower message:
  which client they are, the round, and where the link server is. Before the first round every node is sent
  a ``join`` (each client's hello, so the plan can be made), and after the last a ``finish``.
- A ClientApp plays its client's part of that round over splitvit's link, exactly as a ``splitvit client``
  process does (:class:`~splitvit.train.clients.Loop` with a :class:`~splitvit.train.remote.RemoteClient`):
  its training steps, the hand-on or FedAvg of its half (splitvit's FedAvg, on the server), and the
  evaluation when it is the round's evaluator. A ClientApp lives for one message; what must outlive it is
  the client's checkpoint, in its run directory (``<run_dir>/client-<i>/``), from which the next message's
  ClientApp resumes.
- Bytes are counted on splitvit's link, as everywhere. The records of Flower's own messages are counted too
  (their serialised content) and reported apart, in ``summary.json``'s ``flower_control_bytes_*``.

Flower's run config maps onto splitvit's overrides one way: a key ``K`` with value ``V`` is the override
``K=V`` (``method = "adc"``, ``"method.compression" = 0.1``, ``"clients.num" = 3``). A run of the same seed
and config gives the same steps, the same bytes on the data link and the same final accuracy on either
engine (tested for ``sequential``, ``splitfed_v1`` and ``splitfed_v2``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

try:
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common.serde import recorddict_to_proto
    from flwr.serverapp import Grid, ServerApp
except ImportError as e:  # the base install has no Flower
    raise ImportError("splitvit.flower needs Flower: pip install -e '.[flower]' (Python 3.11 or later)") from e

from ..link.grpc import LinkServer, Security
from .checkpoint import atomic_save
from .clients import Loop
from .common import StopBetweenSteps, config_hash, held, load_data, prepare
from .config import ConfigError, compose, validate
from .remote import RemoteClient, Sessions, chunk_bytes, security_from

log = logging.getLogger(__name__)

STOP = threading.Event()  # set when a simulation this process runs has ended: its ServerApp thread stops waiting
RECORD = "splitvit"  # the name of splitvit's ConfigRecord in every Flower message, both ways
NODES_TIMEOUT_S = 120.0  # how long the ServerApp waits for enough SuperNodes to connect


def overrides(run_config: Mapping) -> list[str]:
    """Flower's run config as splitvit's Hydra overrides, one way: ``K = V`` is ``K=V`` (booleans in Hydra's
    lower case). Sorted, so that the same config gives the same overrides."""
    out = []
    for key, value in sorted(run_config.items()):
        if isinstance(value, bool):
            value = str(value).lower()
        out.append(f"{key}={value}")
    return out


def content_bytes(content: RecordDict) -> int:
    """The bytes of a Flower message's records, serialised as Flower sends them (its own headers apart)."""
    return len(recorddict_to_proto(content).SerializeToString())


def over_grpc(cfg: DictConfig) -> DictConfig:
    """``cfg`` with splitvit's gRPC link (``link=grpc``'s defaults, and the link model the run asked for) where it
    has the in-process one: what both sides of a simulated run talk over."""
    if cfg.link.kind == "grpc":
        return cfg
    cfg = cfg.copy()
    modelled = {k: cfg.link.get(k) for k in ("bandwidth_mbps", "downlink_mbps", "latency_ms")}
    cfg.link = OmegaConf.merge(OmegaConf.load(str(files("splitvit.conf") / "link" / "grpc.yaml")), modelled)
    return cfg


# -- the server's side ------------------------------------------------------------------------------------

class Driver:
    """The ServerApp's work: the link server with its hub, and the run's rounds as Flower messages."""

    def __init__(self, grid: Grid, cfg: DictConfig, run_dir: Path, simulated: bool):
        self.grid, self.cfg, self.run_dir = grid, cfg, Path(run_dir)
        cfg = over_grpc(cfg)
        self.num = cfg.clients.num
        self.control = {"up": 0, "down": 0, "messages": 0}  # Flower's own messages: down to the nodes, up from them
        self.client_cfg: dict = {}  # what the clients need to reach the link server, sent with every message
        server_dir = self.run_dir / "server"
        server_dir.mkdir(parents=True, exist_ok=True)
        if simulated:  # on loopback: no TLS, a fresh random token in a file only this user reads
            token = secrets.token_hex(16)
            token_file = server_dir / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(token)
            security = Security(insecure=True, token=token)
            listen = "127.0.0.1:0"
            self.client_cfg = {"link.insecure": True, "link.token_file": str(token_file)}
        else:  # link.tls.cert and key are the link server's; link.tls.ca is what the clients check it with
            security = replace(security_from(cfg.link), ca=None)  # the nodes' identity is Flower's node authentication
            listen = cfg.link.listen
        self.sessions = Sessions(cfg, server_dir)
        try:
            self.server = LinkServer(self.sessions, listen, security, chunk_bytes=chunk_bytes(cfg.link),
                                     idle_timeout_s=float(cfg.link.idle_timeout_s), once=False, clients=self.num)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.address = cfg.link.server if not simulated and cfg.link.get("server") else self.server.address
        log.info("splitvit on Flower: the link server listens on %s (%s)", self.server.address,
                 "TLS" if security.tls else "no TLS")

    def run(self) -> dict:
        """Every round until the run ends; returns the run's summary (also written to ``summary.json``)."""
        try:
            nodes = self._nodes()
            self.node_of = dict(enumerate(nodes))  # client i is the i-th node by id: stable for the run
            self._send({c: {"action": "join"} for c in range(self.num)})
            rows: list[dict] = []
            metrics = self.run_dir / "metrics.jsonl"
            metrics.write_text("")
            while True:
                coordinator = self.sessions.hub.coordinator
                with coordinator.cond:
                    plan, finished = coordinator.plan, coordinator.finished
                if finished or plan is None:
                    break
                replies = self._send({c: {"action": "round", "round": plan.round} for c in sorted(set(plan.participants))})
                with coordinator.cond:
                    moved = coordinator.finished or coordinator.plan.round != plan.round
                if not moved:
                    raise RuntimeError(f"round {plan.round + 1} did not close: a client of it failed (see its log in "
                                       f"{self.run_dir}/client-<i>/splitvit.log)")
                for c in sorted(replies):
                    for row in json.loads(replies[c]["rows"]):
                        row.update(self._ledger_bytes())  # every client's training bytes, as the simulation counts
                        rows.append(row)
                        with metrics.open("a") as f:
                            f.write(json.dumps(row) + "\n")
            summaries = self._send({c: {"action": "finish"} for c in range(self.num)})
        finally:
            self.server.stop()
        return self._summary(rows, {c: json.loads(r["summary"]) for c, r in summaries.items()})

    def _nodes(self) -> list[int]:
        deadline = time.monotonic() + NODES_TIMEOUT_S
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.num:
                return nodes[:self.num]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(nodes)} SuperNodes connected in {NODES_TIMEOUT_S:.0f} s; clients.num={self.num} "
                                   "needs as many (start more SuperNodes, or lower clients.num)")
            time.sleep(0.5)

    def _send(self, orders: dict[int, dict]) -> dict[int, ConfigRecord]:
        """One Flower message to each client's node, and their replies, by client."""
        messages = []
        for c, order in orders.items():
            content = RecordDict({RECORD: ConfigRecord({**order, "client": c, "server": self.address,
                                                         "config": json.dumps(self.client_cfg)})})
            self.control["down"] += content_bytes(content)
            messages.append(Message(content=content, dst_node_id=self.node_of[c], message_type="train"))
        client_of = {n: c for c, n in self.node_of.items()}
        replies = {}
        waiting = set(self.grid.push_messages(messages))
        self.control["messages"] += len(messages)
        while waiting:  # polled, so that a simulation runtime that ended (STOP) ends this thread too
            if STOP.is_set():
                raise RuntimeError("Flower's runtime stopped while the ServerApp waited for the clients")
            for reply in self.grid.pull_messages(list(waiting)):
                waiting.discard(reply.metadata.reply_to_message_id)
                c = client_of[reply.metadata.src_node_id]
                if reply.has_error():
                    raise RuntimeError(f"client {c} failed: {reply.error.reason}")
                self.control["up"] += content_bytes(reply.content)
                replies[c] = reply.content[RECORD]
            if waiting:
                time.sleep(0.05)
        return replies

    def _ledger_bytes(self) -> dict:
        ledger = self.sessions.hub.ledger
        return {"bytes_up": ledger.bytes_up, "bytes_down": ledger.bytes_down}

    def _summary(self, rows: list[dict], clients: dict[int, dict]) -> dict:
        """The simulation's summary.json: the server's count of steps and bytes, the last evaluator's final
        accuracy, every client's own figures, and Flower's control traffic apart."""
        ledger = self.sessions.hub.ledger
        last = max((c for c, s in clients.items() if s.get("final_val_acc") is not None),
                   key=lambda c: clients[c].get("rounds_evaluated", -1), default=None)
        summary = dict(clients[last] if last is not None else clients[0])
        per_client = [s["per_client"][0] for _, s in sorted(clients.items())]
        weights_up = sum(c["weights_bytes_up"] for c in per_client)
        weights_down = sum(c["weights_bytes_down"] for c in per_client)
        for key in ("baseline_bytes_up", "baseline_bytes_down", "eval_bytes_up", "eval_bytes_down"):
            summary[key] = sum(s.get(key) or 0 for s in clients.values())  # each client's own, as the simulation's all
        summary.update(
            engine="flower", link="grpc", steps=ledger.step, rounds=ledger.round,
            bytes_up=ledger.bytes_up, bytes_down=ledger.bytes_down, stopped_by=self.sessions.hub.ledger.stopped_by,
            steps_all_clients=ledger.step, per_client=per_client, weights_bytes_up=weights_up,
            weights_bytes_down=weights_down, total_bytes=ledger.bytes_up + ledger.bytes_down + weights_up + weights_down,
            flower_control_bytes_down=self.control["down"], flower_control_bytes_up=self.control["up"],
            flower_messages=self.control["messages"],
        )
        if rows:  # every round's evaluation, whoever evaluated it
            summary["best_val_acc"] = max(r["val_acc"] for r in rows)
        baseline = summary["baseline_bytes_up"] + summary["baseline_bytes_down"]
        summary["compression_measured"] = (ledger.bytes_up + ledger.bytes_down) / baseline if baseline else None
        summary["config_hash"] = config_hash(self.cfg)
        summary.pop("rounds_evaluated", None)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        OmegaConf.save(self.cfg, self.run_dir / "config.yaml", resolve=True)
        return summary


def serve_flower(grid: Grid, cfg: DictConfig, run_dir: str | Path, simulated: bool = False) -> dict:
    """The ServerApp's main: run the experiment ``cfg`` of ``clients.num`` clients on the grid's nodes."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Driver(grid, cfg, run_dir, simulated).run()


# -- a client's side ---------------------------------------------------------------------------------------

_DATA: dict[str, object] = {}  # this process's dataset, by its config: a ClientApp loads it once, not per message


def _data(cfg: DictConfig):
    """The experiment's data, loaded on a process's first message (CIFAR-100: about 1.5 s) and kept; the
    images are read-only tensors, so every client this process plays shares them."""
    key = json.dumps(OmegaConf.to_container(cfg.dataset, resolve=True), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()  # one experiment's data at a time
        _DATA[key] = load_data(cfg)
    return _DATA[key]


def play(order: ConfigRecord, cfg: DictConfig) -> ConfigRecord:
    """A ClientApp's work for one message: client ``order["client"]`` joins the run, plays its part of a round
    or finishes, over splitvit's link to ``order["server"]``, from and to its checkpoint."""
    c = int(order["client"])
    run_dir = Path(cfg.run_dir) / f"client-{c}"
    resume = (run_dir / "checkpoints" / "clients.pt").is_file()
    cfg = over_grpc(cfg).copy()
    if cfg.link.get("tls"):  # link.tls.cert and key name the link server's own (see Driver)
        cfg.link.tls.cert = cfg.link.tls.key = None
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        f"link.server={order['server']}", f"clients.id={c}", f"train.resume={str(resume).lower()}",
        "clients.engine=splitvit",  # from splitvit's side, a client process of a splitvit serve
        *(f"{k}={v}" for k, v in json.loads(order["config"]).items())]))
    with held(run_dir):
        run_dir, device, shaping, data = prepare(cfg, run_dir, _data(cfg))
        loop = Loop(cfg, run_dir, device, shaping, data, make_clients=RemoteClient)
        before = len(loop.p.history)
        reply: dict = {"rows": "[]"}  # the run's end the Driver reads from its own coordinator
        with StopBetweenSteps() as interrupt, loop.saving_on_interrupt():
            if order["action"] == "join":  # said hello: the checkpoint the first round starts from
                atomic_save(loop.clients.state_dict(), loop.ckpt)
            elif order["action"] == "round":
                over = loop.play(interrupt)
                if over and loop.keep != "none":  # this process ends here: the last round too is kept for finish
                    atomic_save(loop.clients.state_dict(), loop.ckpt)
            else:  # finish: a client not yet told hears the run is over, then its summary
                summary = loop.finish(tell=True)
                evaluated = [r.get("round", 0) for r in loop.p.history]
                summary["rounds_evaluated"] = max(evaluated) if evaluated else -1
                reply["summary"] = json.dumps(summary)
            reply["rows"] = json.dumps(loop.p.history[before:])
    return ConfigRecord(reply)


def _client_message(msg: Message, context: Context, cfg: DictConfig | None) -> Message:
    if cfg is None:
        cfg = compose(*overrides(context.run_config))
    order = msg.content[RECORD]
    reply = play(order, cfg)
    return Message(RecordDict({RECORD: reply, "ack": MetricRecord({"client": int(order["client"])})}), reply_to=msg)


# -- the apps --------------------------------------------------------------------------------------------

def _logging() -> None:
    """A ServerApp or ClientApp process that nothing configured says what splitvit does, as splitvit's CLI does."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def apps(cfg: DictConfig | None = None, run_dir: str | Path | None = None) -> tuple[ServerApp, ClientApp]:
    """A ServerApp and a ClientApp for the experiment ``cfg`` (bound, for Flower's simulation engine), or, with
    no ``cfg``, for the one Flower's run config gives (``flwr run``)."""
    server, client = ServerApp(), ClientApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        _logging()
        c = cfg if cfg is not None else compose(*overrides(context.run_config))
        serve_flower(grid, c, run_dir or c.run_dir, simulated=cfg is not None)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        _logging()
        return _client_message(msg, context, cfg)

    return server, client


server_app, client_app = apps()  # for flwr run: serverapp = "splitvit.flower:server_app", clientapp = "...:client_app"


RAY_STARTS = 3  # Ray's node waits a fixed 30 s for its raylet; on a loaded machine that first start can miss it


def _ray_did_not_start(e: BaseException | None) -> bool:
    """Whether ``e`` (Flower's error) was caused by Ray failing to start: raised inside Flower's
    ``RayBackend.init_ray`` (``ray.init``: a raylet or GCS port that did not come up in time), or Ray's
    node timing out as it started."""
    while e is not None:
        if "timed out during startup" in str(e) or any(f.name == "init_ray" for f in traceback.extract_tb(e.__traceback__)):
            return True
        e = e.__cause__ or e.__context__
    return False


def simulate(cfg: DictConfig, run_dir: str | Path) -> dict:
    """``splitvit train clients.engine=flower``: the experiment on Flower's simulation engine, one virtual
    SuperNode per client, every client of a round running at once (the link's referee orders their
    messages, as for client processes); returns the summary written to ``run_dir/summary.json``."""
    from flwr.simulation import run_simulation

    validate(cfg)
    run_dir = Path(run_dir)
    cfg = OmegaConf.merge(cfg, {"run_dir": str(run_dir)})
    server, client = apps(cfg, run_dir)
    # a round's clients run at the same time, or the referee would wait for one that cannot start
    cpus = os.cpu_count() or 1
    # Ray starts its workers at niceness 15; the clients are this run's work, not background work
    os.environ.setdefault("RAY_worker_niceness", "0")
    at_once = max(1, math.ceil(cfg.clients.fraction * cfg.clients.num))  # a round's clients, at most
    per_client = max(cpus / at_once, 0.01)  # so Ray keeps that many actors, each with its own torch
    for attempt in range(1, RAY_STARTS + 1):
        STOP.clear()
        try:
            run_simulation(server, client, num_supernodes=cfg.clients.num,
                           backend_config={"client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": cpus, "include_dashboard": False}})
            break
        except RuntimeError as e:
            if attempt == RAY_STARTS or not _ray_did_not_start(e):
                raise
            # nothing ran: no node got a message before the runtime was up, so the run starts over cleanly
            log.warning("Ray did not start within its fixed 30 s (attempt %d of %d, a busy machine); starting "
                        "the simulation again", attempt, RAY_STARTS)
            import ray

            ray.shutdown()
        finally:
            STOP.set()
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"the Flower simulation ended without a summary; see the logs under {run_dir}")
    return json.loads(summary_path.read_text())
