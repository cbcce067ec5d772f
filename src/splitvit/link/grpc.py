"""Split learning between processes and machines over gRPC.

The wire messages (safetensors bytes from :mod:`splitvit.wire`) cross unchanged: the client cuts
each into chunks of at most ``chunk_bytes`` and streams them up, the server streams the reply back
the same way. gRPC's per-message limits are set to one chunk plus slack, on purpose, and a whole
message may not exceed what the server's schemas admit (``max_message_bytes``), so a peer cannot
make the other buffer more than one legitimate message. Protobuf only frames the chunks and carries
the handshake; nothing received is ever unpickled.

Security is on unless switched off by name: TLS with the server's certificate (mutual TLS when the
server is given a CA for client certificates) and a bearer token checked on every call.
"""

from __future__ import annotations

import hmac
import logging
import random
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import grpc

from . import splitvit_pb2 as pb

log = logging.getLogger(__name__)

PROTOCOL = "splitvit/1"
SERVICE = "splitvit.v1.SplitLearning"
CHUNK_BYTES = 1 << 20  # 1 MiB pieces: a quarter of gRPC's 4 MiB default, cheap to buffer on both sides
MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 1 << 12, 1 << 26  # what a client accepts from a server's Welcome
FRAME_SLACK = 1 << 12  # room for the protobuf field tag and length around one chunk
GRPC_PREFIX = 5  # bytes gRPC writes before every message: a compressed flag and a 4-byte length
SESSION_HEADER = "splitvit-session"
# transient failures: the step is retried with the same id, which the server applies once
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class LinkError(RuntimeError):
    """The link failed or the server refused; the message says which and what to do."""


class Refused(Exception):
    """Raised by a session opener to refuse a handshake; the text goes to the client."""


class Session(Protocol):
    """What the server side serves for one client run (see :mod:`splitvit.train.remote`)."""

    max_message_bytes: int
    round: int  # several clients: the round the client takes part from (0 otherwise)

    def handle(self, payload: bytes) -> bytes:
        """One message from the session's client -> the reply."""

    def lost(self) -> None:
        """A call of the session's client failed."""


@dataclass(frozen=True)
class Security:
    """TLS files (PEM paths) and the token. ``insecure`` must be said to go without TLS and token.

    Server: ``cert``/``key`` are its certificate chain and key; ``ca``, when given, requires clients
    to present a certificate it signed (mutual TLS). Client: ``ca`` verifies the server (default: the
    system roots); ``cert``/``key`` are its own for mutual TLS; ``server_name`` overrides the name
    checked against the server's certificate (for a certificate issued to a name, reached by IP).
    """

    insecure: bool = False
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        """Whether TLS is configured (a certificate, its key, or a CA)."""
        return bool(self.cert or self.key or self.ca)

    def check(self, side: str) -> None:
        """Refuse, naming the key, a configuration ``side`` (``server``, ``client``) cannot run with."""
        if bool(self.cert) != bool(self.key):
            raise ValueError("link.tls.cert and link.tls.key go together: give both (or neither)")
        if self.insecure:
            return
        if side == "server" and not self.cert:
            raise ValueError(
                "the server needs a TLS certificate: pass link.tls.cert=server.pem link.tls.key=server.key "
                "(see the docs, 'Two machines over gRPC'), or link.insecure=true on a network you trust"
            )
        if not self.token:
            raise ValueError(
                "no client token: set the environment variable SPLITVIT_TOKEN (or link.token_file=PATH) to the same "
                "secret on client and server, or pass link.insecure=true on a network you trust"
            )

    def _read(self, path: str | None) -> bytes | None:
        if path is None:
            return None
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"TLS file {p} does not exist")
        return p.read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The gRPC server's TLS credentials (mutual when a CA is given), or None."""
        if not self.cert:
            return None
        ca = self._read(self.ca)
        return grpc.ssl_server_credentials(
            [(self._read(self.key), self._read(self.cert))], root_certificates=ca, require_client_auth=ca is not None
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """The client channel's TLS credentials, or None."""
        if self.insecure and not self.tls:
            return None
        return grpc.ssl_channel_credentials(self._read(self.ca), self._read(self.key), self._read(self.cert))


def _options(chunk_bytes: int) -> list[tuple[str, int]]:
    limit = chunk_bytes + FRAME_SLACK
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def _chunks(payload: bytes, size: int) -> Iterator[pb.Chunk]:
    view = memoryview(payload)
    yield pb.Chunk(data=bytes(view[:size]))  # an empty message is still one chunk
    for i in range(size, len(payload), size):
        yield pb.Chunk(data=bytes(view[i:i + size]))


def _overhead(chunk: pb.Chunk) -> int:
    """Bytes protobuf and gRPC put around one chunk's data: field tag, length varint, message prefix."""
    return chunk.ByteSize() - len(chunk.data) + GRPC_PREFIX


# -- server ----------------------------------------------------------------------------------------
@dataclass
class _Entry:
    """A client's session on the server."""

    session: Session
    run_id: str
    client: int
    last_seen: float
    lock: threading.Lock = field(default_factory=threading.Lock)  # a session's messages one at a time
    failed: bool = False  # a call of it failed: another run may take its place at once


class _Service:
    """Sessions, one per client (``capacity`` of them); every call authenticated; bad messages refused,
    the server kept up. Calls of different sessions run in parallel: each waits only for its own
    session and for what the session itself waits for (its turn on a shared half)."""

    def __init__(self, open_session: Callable[[pb.Hello], Session], security: Security, chunk_bytes: int,
                 idle_timeout_s: float, once: bool, stop: threading.Event, capacity: int = 1):
        self.open_session = open_session
        self.token = security.token
        self.chunk_bytes = chunk_bytes
        self.idle_timeout_s = idle_timeout_s
        self.once = once
        self.stop = stop
        self.capacity = capacity
        # mutual TLS with several clients: each client's certificate must name its id (client-<id>)
        self.check_ids = bool(security.cert and security.ca) and capacity > 1
        self.lock = threading.Lock()  # guards the table of sessions
        self.entries: dict[str, _Entry] = {}
        self.served = 0  # sessions closed

    def _auth(self, context) -> None:
        if self.token is None:
            return
        got = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "wrong or missing token: set SPLITVIT_TOKEN (or link.token_file) to the server's token")

    def _current(self, context) -> tuple[str, _Entry]:
        self._auth(context)
        sid = dict(context.invocation_metadata()).get(SESSION_HEADER, "")
        with self.lock:
            entry = next((e for k, e in self.entries.items() if hmac.compare_digest(sid.encode(), k.encode())), None)
        if entry is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "no such session on this server (it restarted, or another run took over): "
                          "restart the client (with train.resume=true if it has saved a checkpoint)")
        return sid, entry

    def Handshake(self, hello: pb.Hello, context) -> pb.Welcome:
        self._auth(context)
        if hello.protocol != PROTOCOL:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol {hello.protocol!r} is not served; this server speaks {PROTOCOL!r}: use the same splitvit version")
        if self.check_ids:
            auth = context.auth_context()
            names = {v.decode(errors="replace") for k in ("x509_common_name", "x509_subject_alternative_name")
                     for v in auth.get(k, [])}
            if f"client-{hello.client}" not in names:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"this client's certificate names {sorted(names)}, not client-{hello.client}: with mutual "
                              "TLS each client presents a certificate whose common name or DNS name is client-<its id>")
        with self.lock:
            now = time.monotonic()
            for sid, e in list(self.entries.items()):
                if e.client == hello.client and (e.run_id == hello.run_id or e.failed or now - e.last_seen > self.idle_timeout_s):
                    del self.entries[sid]  # the same run again (a restarted client), or a dead one: it gives way
            taken = next((e for e in self.entries.values() if e.client == hello.client), None)
        if taken is not None:
            if self.capacity == 1:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the server is training run {taken.run_id} with another client and serves one client "
                              "at a time (clients.num=1). Retry when that run ends")
            context.abort(grpc.StatusCode.ALREADY_EXISTS,
                          f"client id {hello.client} is taken by run {taken.run_id}: a second run with the same id is "
                          "refused; give each client its own clients.id")
        try:
            session = self.open_session(hello)
        except Refused as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        sid = uuid.uuid4().hex
        with self.lock:
            self.entries[sid] = _Entry(session, hello.run_id, hello.client, time.monotonic())
        log.info("client %d, run %s, connected (session %s%s)", hello.client, hello.run_id, sid,
                 f", resuming after {hello.resume_step} steps" if hello.resume else "")
        note = "one client at a time" if self.capacity == 1 else f"client {hello.client} of {self.capacity}"
        return pb.Welcome(session_id=sid, max_message_bytes=session.max_message_bytes, chunk_bytes=self.chunk_bytes,
                          note=note, round=getattr(session, "round", 0))

    def _lost(self, entry: _Entry) -> None:
        entry.failed = True  # another run may take its place at once, not after idle_timeout_s
        entry.session.lost()

    def Exchange(self, chunks: Iterator[pb.Chunk], context) -> Iterator[pb.Chunk]:
        sid, entry = self._current(context)
        answered = threading.Event()
        # a client that dies while its call waits (for its turn) ends the call: the session hears at once
        context.add_callback(lambda: None if answered.is_set() else self._lost(entry))
        limit = entry.session.max_message_bytes
        buf = bytearray()
        for chunk in chunks:  # a client that disappears mid-upload ends here: nothing was applied
            if len(buf) + len(chunk.data) > limit:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"message exceeds the {limit} bytes this session's schemas admit")
            buf += chunk.data
        if not context.is_active():  # the client went away mid-message: its session gives way at once
            self._lost(entry)
            return
        with entry.lock:
            with self.lock:
                if self.entries.get(sid) is not entry:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the session ended while the message was uploading")
            try:
                reply = entry.session.handle(bytes(buf))
            except ValueError as e:  # WireError and friends: the message is refused, nothing applied
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"message refused: {e}")
            except TimeoutError as e:  # waited too long for its turn: another client is gone
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
            except Exception as e:  # noqa: BLE001 - one bad step must not take the server down
                log.exception("step failed")
                context.abort(grpc.StatusCode.INTERNAL, f"the server failed on this message: {type(e).__name__}: {e}")
            entry.last_seen = time.monotonic()
        del buf
        try:
            yield from _chunks(reply, self.chunk_bytes)
        except GeneratorExit:  # the call was cancelled while the reply streamed: the client is gone or retries
            self._lost(entry)
            raise
        answered.set()

    def Close(self, control: pb.Control, context) -> pb.Ack:
        sid, entry = self._current(context)
        with self.lock:
            self.entries.pop(sid, None)
            self.served += 1
            last = not self.entries and self.served >= self.capacity
        log.info("client %d, run %s, closed its session", entry.client, entry.run_id)
        if control.shutdown or (self.once and last):
            self.stop.set()
        return pb.Ack(detail="closed")


def _handler(service: _Service) -> grpc.GenericRpcHandler:
    uu, ss = grpc.unary_unary_rpc_method_handler, grpc.stream_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Handshake": uu(service.Handshake, request_deserializer=pb.Hello.FromString,
                        response_serializer=pb.Welcome.SerializeToString),
        "Exchange": ss(service.Exchange, request_deserializer=pb.Chunk.FromString,
                       response_serializer=pb.Chunk.SerializeToString),
        "Close": uu(service.Close, request_deserializer=pb.Control.FromString,
                    response_serializer=pb.Ack.SerializeToString),
    })


class _TokenFirst(grpc.ServerInterceptor):
    """Refuse a call without the token from its headers alone, before its body is read: a peer without
    the token cannot hold a worker thread by sending headers and then nothing."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        got = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(got.encode(), self.expected):
            return continuation(handler_call_details)

        def refuse(request_iterator, context):  # a streaming handler: called at once, the body never read
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "wrong or missing token: set SPLITVIT_TOKEN (or link.token_file) to the server's token")

        return grpc.stream_stream_rpc_method_handler(refuse)


class LinkServer:
    """A gRPC server for split-learning sessions. ``open_session(hello)`` builds the server half.

    ``listen`` is ``HOST:PORT`` (port 0 picks a free one; :attr:`address` tells which). With
    ``once`` it stops after the first session closes; :meth:`wait` blocks until it stops.
    """

    def __init__(self, open_session: Callable[[pb.Hello], Session], listen: str, security: Security, *,
                 chunk_bytes: int = CHUNK_BYTES, idle_timeout_s: float = 600.0, once: bool = False, clients: int = 1,
                 workers: int | None = None):
        security.check("server")
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"link.listen={listen!r} must be HOST:PORT with a port in [0, 65535] (0: any free one)")
        self.stop_event = threading.Event()
        self.service = _Service(open_session, security, chunk_bytes, idle_timeout_s, once, self.stop_event, clients)
        # a worker per client, which may wait in a call for its turn, and as many again for handshakes,
        # uploads and closes (a peer without the token takes none: it is refused from its headers)
        workers = workers or 2 * clients + 2
        # no SO_REUSEPORT: a second server on a taken port must fail, not silently share the clients
        options = [*_options(chunk_bytes), ("grpc.so_reuseport", 0)]
        interceptors = [_TokenFirst(security.token)] if security.token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                                  interceptors=interceptors)
        self.server.add_generic_rpc_handlers((_handler(self.service),))
        creds = security.server_credentials()
        try:
            port = self.server.add_secure_port(listen, creds) if creds else self.server.add_insecure_port(listen)
        except RuntimeError as e:
            raise LinkError(f"cannot listen on {listen}: {e}") from None
        if port == 0:
            raise LinkError(f"cannot listen on {listen}: address in use or not valid (HOST:PORT, port 0 for any free one)")
        self.address = f"{listen.rsplit(':', 1)[0]}:{port}"
        self.server.start()

    def wait(self) -> None:
        """Block until the server stops."""
        while not self.stop_event.wait(0.2):
            pass
        self.server.stop(grace=2.0).wait()

    def stop(self) -> None:
        """Stop serving, at once."""
        self.stop_event.set()
        self.server.stop(grace=None)


# -- client ----------------------------------------------------------------------------------------
class GrpcLink:
    """The client's end: :meth:`connect` once, then :meth:`request` per message (a :class:`Link`).

    Every call has a deadline (``timeout_s``); transient failures (server unreachable, deadline
    passed) are retried ``retries`` times with exponential backoff and jitter. A retried training
    step carries the same step id, so the server applies it once.
    """

    def __init__(self, target: str, security: Security, *, chunk_bytes: int = CHUNK_BYTES, timeout_s: float = 120.0,
                 retries: int = 5, backoff_s: float = 0.5, connect_timeout_s: float = 60.0,
                 max_reply_bytes: int | None = None):
        security.check("client")
        options = _options(chunk_bytes)
        if security.server_name:
            options.append(("grpc.ssl_target_name_override", security.server_name))
        creds = security.channel_credentials()
        self.channel = grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target, options)
        self.target = target
        self.token = security.token
        self.chunk_bytes = chunk_bytes
        self.security = security
        self.timeout_s, self.retries, self.backoff_s, self.connect_timeout_s = timeout_s, retries, backoff_s, connect_timeout_s
        self.session_id = ""
        self.max_message_bytes = 0
        # the largest reply this client will take, from its own schemas: a server's word is not enough
        self.max_reply_bytes = max_reply_bytes
        self.last_framing = (0, 0)  # bytes, gRPC and protobuf framing around the last request and its reply
        self.retried = 0
        m = f"/{SERVICE}/"
        self._handshake = self.channel.unary_unary(m + "Handshake", request_serializer=pb.Hello.SerializeToString,
                                                   response_deserializer=pb.Welcome.FromString)
        self._exchange = self.channel.stream_stream(m + "Exchange", request_serializer=pb.Chunk.SerializeToString,
                                                    response_deserializer=pb.Chunk.FromString)
        self._close = self.channel.unary_unary(m + "Close", request_serializer=pb.Control.SerializeToString,
                                               response_deserializer=pb.Ack.FromString)

    def _metadata(self) -> list[tuple[str, str]]:
        md = [(SESSION_HEADER, self.session_id)]
        if self.token:
            md.append(("authorization", f"Bearer {self.token}"))
        return md

    def _diagnosis(self, details: str) -> tuple[str | None, bool]:
        """What a failed call's text most likely means for a user, and whether it is worth retrying."""
        text = details or ""
        if "Hostname Verification" in text or "No match found for server name" in text:
            return (f"the server's TLS certificate does not name the host this client reaches it by ({self.target}"
                    f"{', link.tls.server_name=' + self.security.server_name if self.security.server_name else ''}): set "
                    "link.tls.server_name to a name the certificate holds (as when reaching a server by its IP "
                    "address or through a tunnel)"), False
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return (f"the server's TLS certificate is not signed by link.tls.ca={self.security.ca}: give the CA that "
                    "signed it"), False
        if "Connection refused" in text:
            return f"nothing listens at {self.target}: is `splitvit serve` running at {self.target}?", True
        if "Socket closed" in text and not self.security.tls:
            return (f"the server at {self.target} closed the connection; if it serves TLS, this client (link.insecure, "
                    "no link.tls) speaks plaintext to it: give link.tls.ca"), True
        return None, True

    def _call(self, what: str, fn: Callable[[], object], retry_on=RETRYABLE, deadline: float | None = None):
        attempt = 0
        while True:
            try:
                return fn()
            except grpc.RpcError as e:
                code = e.code()
                hint, transient = self._diagnosis(e.details())
                out_of_time = deadline is not None and time.monotonic() > deadline
                if (code not in retry_on or not transient or (deadline is None and attempt >= self.retries)
                        or out_of_time):
                    raise LinkError(f"{what} failed ({code.name}) talking to {self.target}: "
                                    + (f"{hint} ({e.details()})" if hint else str(e.details()))) from None
                wait = min(self.backoff_s * 2 ** attempt, 10.0) * (0.5 + random.random())  # jitter: not seeded, never in results
                log.warning("%s: %s; retrying in %.1f s", what, hint or f"{code.name} ({e.details()})", wait)
                self.retried += 1
                attempt += 1
                time.sleep(wait)

    def connect(self, run_id: str, shared_config_json: str, num_classes: int, digest: str,
                resume_steps: int | None = None, client: int = 0, samples: int = 0) -> pb.Welcome:
        """Handshake; waits (with backoff, up to ``connect_timeout_s``) for a server that is starting or busy."""
        hello = pb.Hello(protocol=PROTOCOL, run_id=run_id, config_json=shared_config_json, num_classes=num_classes,
                         resume=resume_steps is not None, resume_step=resume_steps or 0, init_digest=digest,
                         client=client, samples=samples)
        welcome = self._call(
            "handshake", lambda: self._handshake(hello, timeout=self.timeout_s, metadata=self._metadata()),
            retry_on=(*RETRYABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), deadline=time.monotonic() + self.connect_timeout_s,
        )
        if not MIN_CHUNK_BYTES <= welcome.chunk_bytes <= MAX_CHUNK_BYTES or welcome.max_message_bytes < 0:
            raise LinkError(f"the server at {self.target} offers chunks of {welcome.chunk_bytes} bytes and messages of at "
                            f"most {welcome.max_message_bytes}; a splitvit server offers chunks of {MIN_CHUNK_BYTES} to "
                            f"{MAX_CHUNK_BYTES} bytes (a misconfigured or hostile server): refused")
        self.session_id = welcome.session_id
        self.max_message_bytes = welcome.max_message_bytes
        self.chunk_bytes = min(self.chunk_bytes, welcome.chunk_bytes)
        return welcome

    def request(self, payload: bytes) -> bytes:
        """Send one message (in chunks), return the reply; transient failures are retried."""
        if self.max_message_bytes and len(payload) > self.max_message_bytes:
            raise LinkError(f"message of {len(payload)} bytes exceeds the server's limit of {self.max_message_bytes}")

        def once() -> tuple[bytes, int, int]:
            up = list(_chunks(payload, self.chunk_bytes))
            stream = self._exchange(iter(up), timeout=self.timeout_s, metadata=self._metadata())
            down, size = [], 0
            for chunk in stream:  # the bound is enforced as the chunks arrive, not after buffering them all
                size += len(chunk.data)
                if self.max_reply_bytes is not None and size > self.max_reply_bytes:
                    if hasattr(stream, "cancel"):
                        stream.cancel()
                    raise LinkError(f"the server's reply exceeds {self.max_reply_bytes} bytes, more than any reply "
                                    "this client's config admits; refused (a misconfigured or hostile server)")
                down.append(chunk)
            return b"".join(c.data for c in down), sum(map(_overhead, up)), sum(map(_overhead, down))

        reply, framing_up, framing_down = self._call("step", once)
        self.last_framing = (framing_up, framing_down)
        return reply

    def close(self, shutdown: bool = False) -> None:
        """Close the channel."""
        if self.session_id:
            control = pb.Control(shutdown=shutdown)
            try:
                self._close(control, timeout=min(self.timeout_s, 10.0), metadata=self._metadata())
            except grpc.RpcError as e:  # the run is over either way; the server times the session out
                log.warning("closing the session failed (%s): %s", e.code().name, e.details())
            self.session_id = ""
        self.channel.close()
