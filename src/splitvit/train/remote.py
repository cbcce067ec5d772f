"""Client and server in different processes: the server's sessions, ``splitvit serve``, and the client's connection.

The server builds its half from its own config when a client says hello, after checking that the
client's shared config keys and the digest of its initial server-half weights equal its own. The
client keeps the data; the server learns only the number of classes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..link import Exchange
from ..link.grpc import CHUNK_BYTES, GrpcLink, LinkError, LinkServer, Refused, Security
from .clients import Clients
from .common import held
from .config import ConfigError, config_diff, resolve_device, shared_config, validate
from .hub import Hub
from .server import Session, server_digest
from .state import Progress

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{32}")  # names a directory on the server: nothing else is accepted
MAX_CONFIG_CHARS = 16_384  # a handshake's shared config is a few hundred characters
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a head for more is memory a client could make the server spend


def security_from(link: DictConfig) -> Security:
    """TLS files from ``link.tls``; the token from ``$SPLITVIT_TOKEN`` or ``link.token_file`` (never from
    the config itself, which is saved with every run)."""
    token = os.environ.get("SPLITVIT_TOKEN") or None
    if token is None and link.get("token_file"):
        path = Path(link.token_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"link.token_file={path} does not exist")
        token = path.read_text().strip() or None
    tls = link.get("tls") or {}
    return Security(
        insecure=bool(link.get("insecure")), cert=tls.get("cert"), key=tls.get("key"), ca=tls.get("ca"),
        server_name=tls.get("server_name"), token=token,
    )


def chunk_bytes(link: DictConfig) -> int:
    """The chunk size of ``link.chunk_kb`` in bytes (the default when unset)."""
    kb = link.get("chunk_kb")
    return CHUNK_BYTES if kb is None else int(kb) * 1024


class Sessions:
    """Opens each client's session on the run's :class:`~.hub.Hub`: one client or several, the same way.
    The rounds of a run of several clients are saved under ``<run_dir>/federation/``; a server of one
    client serves one run after another, each run's under ``<run_dir>/federation/<run id>/``."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.shared = shared_config(cfg)
        self.hub: Hub | None = None  # the run its clients share
        self.run_id: str | None = None  # one client at a time: whose run the hub is
        self.lock = threading.Lock()

    def __call__(self, hello) -> Session:
        if not RUN_ID.fullmatch(hello.run_id):
            raise Refused(f"run id {hello.run_id[:40]!r} is not 32 hex digits")
        # the cheap checks first: nothing is built for a client that is refused
        if len(hello.config_json) > MAX_CONFIG_CHARS:
            raise Refused(f"the client's config is {len(hello.config_json)} characters; a config of shared keys "
                          f"is a few hundred (limit {MAX_CONFIG_CHARS})")
        try:
            theirs = json.loads(hello.config_json)
        except (ValueError, RecursionError):
            raise Refused("the client's config is not valid JSON of shared keys") from None
        if not isinstance(theirs, dict) or not all(isinstance(v, (str, int, float, bool, type(None), list))
                                                   for v in theirs.values()):
            raise Refused("the client's config must be a flat JSON object of shared keys")
        diff = config_diff(self.shared, theirs)
        if diff:
            shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise Refused("the client's config differs from the server's; start both with the same overrides. "
                          "Differing keys: " + shown)
        if not 2 <= hello.num_classes <= MAX_CLASSES:
            raise Refused(f"num_classes={hello.num_classes} is not in [2, {MAX_CLASSES}]")
        num = self.cfg.clients.num
        if not 0 <= hello.client < num:
            raise Refused(f"client id {hello.client} is not in [0, {num - 1}] (clients.num={num})")
        if hello.samples < 1:
            raise Refused("the client says it holds no training samples")
        with self.lock:
            # a new run: the first hello, or (one client at a time) another run's
            if self.hub is None or (num == 1 and hello.run_id != self.run_id):
                state_dir = self.run_dir / "federation" / (hello.run_id if num == 1 else "")
                self.hub = Hub(self.cfg, hello.num_classes, self.device, state_dir=state_dir)
                self.run_id = hello.run_id
            hub = self.hub
        if hello.num_classes != hub.num_classes:
            raise Refused(f"the client has {hello.num_classes} classes; this run's other clients have {hub.num_classes}")
        if hello.init_digest != hub.digest:
            raise Refused(DIGEST_DIFFERS)
        try:
            return hub.session(hello.client, hello.samples, resume_steps=hello.resume_step if hello.resume else None)
        except ValueError as e:
            raise Refused(str(e)) from None


DIGEST_DIFFERS = ("the client's initial weights of the server half differ from the server's: give both sides "
                  "the same model.checkpoint file (or model.pretrained)")


class RemoteClient(Clients):
    """``splitvit client clients.id=<i>`` (or ``splitvit train link=grpc``): one client of a run, talking to
    ``splitvit serve`` over gRPC."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data, device, shaping, progress: Progress):
        if not cfg.link.server and cfg.clients.num > 1:
            raise ConfigError("a client of several needs a running server: start `splitvit serve clients.num=N ...` "
                              "and pass its address as server=HOST:PORT")
        super().__init__(cfg, data, device, progress, [cfg.clients.id])
        me = cfg.clients.id
        link = connect(cfg, run_dir, progress, data.num_classes, server_digest(self.server_model, self.method.server()),
                       client=me, samples=self.sizes[me])
        self.members[me].client.exchange = Exchange(link, self.mods(self.members[me], shaping))
        if link.welcome.round > progress.round:  # resumed while the others went on: from the server's next round
            log.info("the run is at round %d; this client takes part from there", link.welcome.round + 1)
            for r in range(progress.round, link.welcome.round):  # the rounds it missed, as planned
                for c, k in self.plan(r).steps.items():
                    progress.client_steps[str(c)] = progress.client_steps.get(str(c), 0) + k
                    progress.global_steps += k
            progress.round = link.welcome.round

    def close_link(self) -> None:
        """Close the gRPC link."""
        for m in self.members.values():
            m.client.exchange.close()


def serve(cfg: DictConfig, run_dir: str | Path, ready_file: str | Path | None = None) -> None:
    """``splitvit serve``: with one client, serve client runs one at a time until stopped (or the first
    ends, ``link.once``); with ``clients.num > 1``, one run of that many clients (``link.once``: stop
    when they all closed)."""
    validate(cfg)
    with held(run_dir):
        _serve(cfg, Path(run_dir), ready_file)


def _serve(cfg: DictConfig, run_dir: Path, ready_file: str | Path | None) -> None:
    security = security_from(cfg.link)
    try:
        server = LinkServer(
            Sessions(cfg, run_dir), cfg.link.listen, security, chunk_bytes=chunk_bytes(cfg.link),
            idle_timeout_s=float(cfg.link.idle_timeout_s), once=bool(cfg.link.once), clients=cfg.clients.num,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"splitvit serve: listening on {server.address} ({'TLS' if security.tls else 'no TLS'}, "
          f"{'token required' if security.token else 'no token'}); " + (
              f"serving one client at a time; each round's state in {run_dir}/federation/" if cfg.clients.num == 1 else
              f"serving {cfg.clients.num} clients ({cfg.clients.scheme}); each round's state in {run_dir}/federation/"),
          flush=True)
    if not security.tls:
        print("splitvit serve: warning: without TLS what crosses the link (activations, gradients" +
              (", the token" if security.token else "") + ") travels in plaintext, and " +
              ("any peer that reaches this port may hold handshakes open" if not security.token else
               "anyone on the path can read the token") + ": use this on a network you trust only", flush=True)
    if ready_file is not None:
        tmp = Path(f"{ready_file}.tmp")
        tmp.write_text(server.address)
        os.replace(tmp, ready_file)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


class LocalServer:
    """A ``splitvit serve`` child process on loopback for ``splitvit train link=grpc`` with no ``link.server``.

    It is reached on 127.0.0.1 only, so it runs without TLS but with a fresh random token; it serves this
    run once and writes its log and checkpoints to ``<run_dir>/server/``.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, start_timeout_s: float = 120.0):
        self.dir = run_dir / "server"
        self.dir.mkdir(parents=True, exist_ok=True)
        server_cfg = OmegaConf.merge(cfg, {"link": {"listen": "127.0.0.1:0", "once": True, "insecure": True, "server": None}})
        OmegaConf.save(server_cfg, self.dir / "config.yaml", resolve=True)
        ready = self.dir / "address"
        ready.unlink(missing_ok=True)
        self.token = secrets.token_hex(16)
        self.log_path = self.dir / "serve.log"
        with self.log_path.open("w") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "splitvit.train.remote", str(self.dir / "config.yaml"), str(self.dir), str(ready)],
                env={**os.environ, "SPLITVIT_TOKEN": self.token}, stdout=log_file, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + start_timeout_s
        while not ready.is_file():
            if self.proc.poll() is not None:
                raise LinkError(f"the local server exited with code {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise LinkError(f"the local server did not start within {start_timeout_s:.0f} s; see {self.log_path}")
            time.sleep(0.05)
        self.address = ready.read_text()

    def stop(self) -> None:
        """Stop the local server process."""
        try:
            self.proc.wait(timeout=15)  # it exits by itself once the session closes
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=15)


class ClientLink(GrpcLink):
    """:class:`GrpcLink` that also stops the local server it started, if any, when the run ends."""

    local: LocalServer | None = None

    def close(self, shutdown: bool = False) -> None:
        """Close the channel (the server keeps the session for a resume)."""
        super().close(shutdown=shutdown or self.local is not None)
        if self.local is not None:
            self.local.stop()


def connect(cfg: DictConfig, run_dir: Path, progress, num_classes: int, digest: str, client: int = 0,
            samples: int = 0) -> ClientLink:
    """The client's link to ``link.server`` (or to a local server it starts), handshake done."""
    link_cfg = cfg.link
    local = None
    if link_cfg.server:
        target, security = link_cfg.server, security_from(link_cfg)
        if security.token and not security.tls:
            log.warning("warning: the token goes to %s in plaintext (link.insecure without link.tls): anyone on the "
                        "path can read it; use TLS (link.tls.ca) beyond a network you trust", target)
    else:
        local = LocalServer(cfg, run_dir)
        target = local.address
        security = Security(insecure=True, token=local.token)
    try:
        link = ClientLink(
            target, security, chunk_bytes=chunk_bytes(link_cfg), timeout_s=float(link_cfg.timeout_s),
            retries=int(link_cfg.retries), connect_timeout_s=float(link_cfg.connect_timeout_s),
            max_reply_bytes=max_reply_bytes(cfg, num_classes),
        )
    except ValueError as e:
        if local is not None:
            local.proc.terminate()
        raise ConfigError(str(e)) from None
    link.local = local
    try:
        welcome = link.connect(progress.run_id, json.dumps(shared_config(cfg)), num_classes, digest,
                               resume_steps=progress.step if cfg.train.resume else None, client=client, samples=samples)
    except LinkError:
        link.close()
        raise
    log.info("connected to %s (session %s; %s)", target, welcome.session_id, welcome.note)
    link.welcome = welcome
    return link


def max_reply_bytes(cfg: DictConfig, num_classes: int) -> int:
    """The largest reply a server can owe this client: a float32 gradient as large as uncompressed
    activations of a training batch (no method sends back more), or the logits of an evaluation
    batch, plus the largest header."""
    from ..models import PRESETS
    from ..wire import MAX_HEADER_BYTES

    m = cfg.model
    geometry = {k: m[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads") if m.get(k) is not None}
    vit = replace(PRESETS[m.name], **geometry)
    grad = cfg.train.batch_size * vit.num_tokens * vit.embed_dim * 4
    logits = cfg.eval.batch_size * num_classes * 4
    return max(grad, logits) + 8 + MAX_HEADER_BYTES


def _exit_with_parent(parent: int) -> None:
    """The local server lives only as long as the client that started it, even if that client is killed."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


if __name__ == "__main__":  # the local server of `splitvit train link=grpc`: config file, run dir, ready file
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    serve(OmegaConf.load(sys.argv[1]), sys.argv[2], sys.argv[3])
