"""The gRPC link: same run as in process, security, bad messages, limits, retries, resume after a crash."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splitvit.link.grpc import PROTOCOL, GrpcLink, LinkError, LinkServer, Security
from splitvit.train import ConfigError, fit
from splitvit.train.config import shared_config
from splitvit.train.build import build_halves
from splitvit.train.remote import Sessions
from splitvit.train.server import server_digest
from splitvit.wire import encode

from conftest import SMALL, make_cfg

RUN = (*SMALL, "train.batch_size=128", "train.epochs=2")  # 12 steps an epoch on digits
CLOCK = {"wall_s", "time_s", "framing_bytes_up", "framing_bytes_down"}  # what the transport may change
TOKEN = "s3cret-token"


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in rows]


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    """The reference: the same experiment in one process."""
    run_dir = tmp_path_factory.mktemp("inprocess")
    return fit(make_cfg(*RUN), run_dir), metrics(run_dir)


def start_serve(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``splitvit serve`` as a separate process; returns it and the address it listens on."""
    log = (tmp_path / "serve.out").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitvit", "serve", "listen=127.0.0.1:0", f"run_dir={tmp_path / 'server'}", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in (tmp_path / "serve.out").read_text().splitlines():
            if "listening on " in line:
                return proc, line.split("listening on ")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("splitvit serve did not start:\n" + (tmp_path / "serve.out").read_text())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- one run, two processes ---------------------------------------------------------------------------
def test_local_grpc_run_equals_the_inprocess_run(tmp_path, inprocess):
    """`splitvit train link=grpc`: a server process on loopback, this process the client."""
    summary, reference = inprocess
    s = fit(make_cfg(*RUN, "link=grpc"), tmp_path)
    assert metrics(tmp_path) == reference  # losses, accuracies and every byte count, step for step
    for key in ("bytes_up", "bytes_down", "eval_bytes_up", "eval_bytes_down", "steps", "final_val_acc"):
        assert s[key] == summary[key]
    assert s["link"] == "grpc" and s["framing_bytes_up"] > 0 and s["framing_bytes_down"] > 0
    assert summary["framing_bytes_up"] == 0
    # the first eval message (256 x 65 x 64 float32, 4.26 MB) is over gRPC's 4 MiB default: it crossed in chunks
    # gRPC framing is a few bytes per chunk: reported apart, small beside the messages
    assert s["framing_bytes_up"] < 1e-3 * (s["bytes_up"] + s["eval_bytes_up"])
    assert sorted(p.name for p in (tmp_path / "server" / "federation").glob("*/*.pt")) == [
        "round-000000012.pt", "round-000000024.pt"]  # the server's side of each round, the last two


def certificates(tmp_path: Path, clients=("client",)) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, issuer_key=None, issuer_name=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, b.sign(issuer_key or key, hashes.SHA256())

    def write(stem, key, cert):
        (tmp_path / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (tmp_path / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key, ca = make("splitvit test CA", ca=True)
    write("ca", ca_key, ca)
    write("server", *make("localhost", ca_key, ca.subject,
                          san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    for name in clients:
        write(name, *make(name, ca_key, ca.subject, san=[x509.DNSName(name)]))
    files = ["ca.pem", "server.pem", "server.key", *(f"{n}.{e}" for n in clients for e in ("pem", "key"))]
    return {k: str(tmp_path / k) for k in files}


def test_serve_and_client_over_mutual_tls_with_token_then_resume_after_a_kill(tmp_path, inprocess):
    """`splitvit serve` and `splitvit client` as two processes; the client is killed mid-run and resumes."""
    pem = certificates(tmp_path)
    tls = [f"link.tls.cert={pem['server.pem']}", f"link.tls.key={pem['server.key']}", f"link.tls.ca={pem['ca.pem']}"]
    server, address = start_serve(tmp_path, *RUN, *tls, env={"SPLITVIT_TOKEN": TOKEN})
    try:
        client_tls = [f"link.tls.ca={pem['ca.pem']}", f"link.tls.cert={pem['client.pem']}", f"link.tls.key={pem['client.key']}"]
        run_dir = tmp_path / "client"
        cmd = [sys.executable, "-m", "splitvit", "client", f"server={address}", *RUN, *client_tls, f"run_dir={run_dir}"]
        env = {**os.environ, "SPLITVIT_TOKEN": TOKEN}
        client = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = run_dir / "checkpoints" / "clients.pt"
        deadline = time.monotonic() + 120
        while not ckpt.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        client.kill()  # mid-run: after the first epoch's checkpoint, somewhere in the second
        client.wait()
        assert ckpt.exists()
        done = subprocess.run([*cmd, "train.resume=true"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "24 steps" in done.stdout
        assert metrics(run_dir) == inprocess[1]  # the crash cost nothing: same run as one process, exactly
        assert server.poll() is None  # and the server is still serving
    finally:
        stop(server)


# -- the protocol, against a server in this process ---------------------------------------------------
@pytest.fixture
def served(tmp_path):
    """A LinkServer (token, no TLS) and what a client needs to talk to it."""
    cfg = make_cfg(*RUN, "link=grpc", "train.batch_size=16", "eval.batch_size=16")
    server = LinkServer(Sessions(cfg, tmp_path), "127.0.0.1:0", Security(insecure=True, token=TOKEN), chunk_bytes=64 * 1024)
    _, server_model, method, vit = build_halves(cfg, 10, torch.device("cpu"))
    yield cfg, server, server_digest(server_model, method.server()), method, vit
    server.stop()


def client(served, token=TOKEN, run_id="a" * 32, **kwargs) -> GrpcLink:
    cfg, server, digest, *_ = served
    link = GrpcLink(server.address, Security(insecure=True, token=token), chunk_bytes=64 * 1024, retries=1,
                    backoff_s=0.01, connect_timeout_s=kwargs.pop("connect_timeout_s", 5), **kwargs)
    # a client alone: the server plans its rounds from its samples (here, one round longer than any test)
    link.connect(run_id, json.dumps(shared_config(cfg)), 10, digest, samples=16 * 10_000)
    return link


def train_message(method, vit, step: int, batch: int = 16) -> bytes:
    h = torch.randn(batch, vit.num_tokens, vit.embed_dim)
    a = torch.softmax(torch.randn(batch, vit.num_tokens), -1)
    sent = method.client().encode(h, a, torch.randint(0, 10, (batch,)))
    return encode(sent.message, {"kind": "train", "step": str(step)})


def test_wrong_or_missing_token_is_refused(served):
    for token in ("wrong", None):
        with pytest.raises(LinkError, match="UNAUTHENTICATED.*token"):
            client(served, token=token)
    client(served).close()  # the right one is let in


def test_config_mismatch_is_refused_naming_the_keys(served):
    cfg, server, digest, *_ = served
    theirs = shared_config(make_cfg(*RUN, "model.depth=4", "method.compression=0.2", "train.batch_size=16", "eval.batch_size=16"))
    link = GrpcLink(server.address, Security(insecure=True, token=TOKEN), retries=0, connect_timeout_s=2)
    with pytest.raises(LinkError, match=r"method.compression: server 0.1, client 0.2; model.depth: server 3, client 4") as e:
        link.connect("b" * 32, json.dumps(theirs), 10, digest, samples=100)
    assert "FAILED_PRECONDITION" in str(e.value)
    with pytest.raises(LinkError, match="initial weights"):
        link.connect("b" * 32, json.dumps(shared_config(cfg)), 10, "0" * 64, samples=100)
    with pytest.raises(LinkError, match="run id"):
        link.connect("../../etc", json.dumps(shared_config(cfg)), 10, digest, samples=100)


def test_bad_messages_are_refused_and_the_server_keeps_serving(served):
    cfg, server, digest, method, vit = served
    link = client(served)
    good = train_message(method, vit, 0)
    nan = train_message(method, vit, 0)
    header_len = int.from_bytes(nan[:8], "little")
    nan = nan[: 8 + header_len] + torch.full(((len(nan) - 8 - header_len) // 4,), float("nan")).numpy().tobytes()
    huge = bytearray(good)  # a header that claims a tensor far larger than the schema admits
    header = json.loads(good[8: 8 + header_len])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**9] + header[name]["shape"][1:]
    raw = json.dumps(header).encode()
    huge = len(raw).to_bytes(8, "little") + raw + bytes(good[8 + header_len:])
    for bad, why in [(b"not a message", "too short|header"), (good[:-100], "offsets|bytes|buffer|size"),
                     (nan, "finite"), (huge, "shape|dimension|bound|at most")]:
        with pytest.raises(LinkError, match="INVALID_ARGUMENT.*message refused") as e:
            link.request(bad)
        assert re.search(why, str(e.value)), str(e.value)
    # nothing was applied: step 0 is still the next step, and it works
    reply = link.request(good)
    assert b"grad" in reply[:4000]
    link.close()


def only_session(server):
    (entry,) = server.service.entries.values()
    return entry.session


def test_message_size_limits(served):
    cfg, server, digest, method, vit = served
    link = client(served)
    limit = link.max_message_bytes
    assert limit == only_session(server).max_message_bytes
    link.max_message_bytes = 0  # skip the client's own check: the server must refuse by itself
    with pytest.raises(LinkError, match="RESOURCE_EXHAUSTED.*exceeds"):
        link.request(b"\0" * (limit + 1))  # one byte over, in many chunks
    # one gRPC message just over the per-message limit (a chunk plus slack) is refused by gRPC itself
    link.chunk_bytes = 64 * 1024 + 4096 + 1
    with pytest.raises(LinkError, match="RESOURCE_EXHAUSTED"):
        link.request(train_message(method, vit, 0, batch=16) + b"\0" * 70_000)
    link.chunk_bytes = 64 * 1024
    # a legitimate message many chunks long goes through (the local run above sends 4.3 MB eval messages,
    # over gRPC's 4 MiB default, with the default 1 MiB chunks)
    z = torch.randn(16, vit.num_tokens, vit.embed_dim)
    reply = link.request(encode({"z": z}, {"kind": "eval", "mode": "uncompressed"}))
    assert len(encode({"z": z})) > 4 * link.chunk_bytes and len(reply) > 16 * 10 * 4
    link.request(train_message(method, vit, 0))
    assert only_session(server).last_step == 0
    link.close()


def test_retried_step_is_applied_once_and_out_of_order_refused(served):
    cfg, server, digest, method, vit = served
    link = client(served)
    session = only_session(server)
    msg = train_message(method, vit, 0)
    first = link.request(msg)
    params = [p.detach().clone() for p in session.model.parameters()]
    again = link.request(msg)  # the client retrying after a lost reply
    assert again == first
    assert all(torch.equal(a, b) for a, b in zip(params, session.model.parameters()))
    assert session.last_step == 0
    with pytest.raises(LinkError, match="out of order"):
        link.request(train_message(method, vit, 5))
    link.request(train_message(method, vit, 1))
    assert session.last_step == 1


def test_one_client_at_a_time(served):
    first = client(served)
    with pytest.raises(LinkError, match="one client at a time"):
        client(served, run_id="c" * 32, connect_timeout_s=1)
    first.close()  # the first run ends: the next is served
    client(served, run_id="c" * 32).close()


def test_unreachable_server_fails_after_retries_with_a_clear_error():
    link = GrpcLink("127.0.0.1:1", Security(insecure=True), retries=2, backoff_s=0.01, timeout_s=2, connect_timeout_s=1)
    with pytest.raises(LinkError, match="UNAVAILABLE.*127.0.0.1:1"):
        link.connect("a" * 32, "{}", 10, "")
    assert link.retried >= 1


def test_security_is_on_unless_switched_off_by_name(tmp_path):
    cfg = make_cfg(*SMALL, "link=grpc")
    with pytest.raises(ValueError, match="TLS certificate.*insecure"):
        LinkServer(Sessions(cfg, tmp_path), "127.0.0.1:0", Security(token=TOKEN))
    with pytest.raises(ValueError, match="SPLITVIT_TOKEN.*insecure"):
        GrpcLink("127.0.0.1:1", Security(ca="ca.pem"))
    with pytest.raises(ConfigError, match="TLS certificate"):
        from splitvit.train.remote import serve

        serve(make_cfg(*SMALL, "link=grpc", "link.listen=127.0.0.1:0"), tmp_path)


def test_protocol_is_versioned(served):
    cfg, server, digest, *_ = served
    from splitvit.link import splitvit_pb2 as pb

    link = GrpcLink(server.address, Security(insecure=True, token=TOKEN), retries=0, connect_timeout_s=1)
    hello = pb.Hello(protocol="splitvit/0", run_id="a" * 32, config_json="{}", num_classes=10)
    with pytest.raises(Exception, match=PROTOCOL):
        link._handshake(hello, timeout=5, metadata=[("authorization", f"Bearer {TOKEN}")])


def test_a_client_that_disappears_mid_upload_leaves_nothing_applied(served):
    import threading

    from splitvit.link import splitvit_pb2 as pb
    from splitvit.link.grpc import SESSION_HEADER

    cfg, server, digest, method, vit = served
    link = client(served)
    session = only_session(server)
    before = [p.detach().clone() for p in session.model.parameters()]
    message = train_message(method, vit, 0)
    hold = threading.Event()

    def half_then_wait():
        yield pb.Chunk(data=message[: len(message) // 2])
        hold.wait(10)  # the client "dies" here: the call is cancelled under the server's feet

    call = link._exchange(half_then_wait(), timeout=10,
                          metadata=[(SESSION_HEADER, link.session_id), ("authorization", f"Bearer {TOKEN}")])
    time.sleep(0.3)
    call.cancel()
    hold.set()
    time.sleep(0.3)
    assert session.last_step == -1
    assert all(torch.equal(a, b) for a, b in zip(before, session.model.parameters()))
    link.request(message)  # the same session goes on with step 0
    assert session.last_step == 0
    # and its failed call means it may be gone: another run is served at once, not after idle_timeout_s
    client(served, run_id="d" * 32, connect_timeout_s=1).close()


def test_listen_address_is_checked_and_a_taken_port_refused(tmp_path):
    cfg = make_cfg(*SMALL, "link=grpc")
    security = Security(insecure=True)
    with pytest.raises(ValueError, match="port in"):
        LinkServer(Sessions(cfg, tmp_path), "127.0.0.1:99999", security)
    first = LinkServer(Sessions(cfg, tmp_path), "127.0.0.1:0", security)
    try:
        with pytest.raises(LinkError, match="cannot listen"):  # not a second server sharing the port
            LinkServer(Sessions(cfg, tmp_path), first.address, security)
    finally:
        first.stop()


def test_the_client_refuses_an_oversized_reply_as_it_arrives():
    """A hostile server streams chunk after chunk: the client stops at its own bound, not the server's."""
    from splitvit.link.grpc import GrpcLink, LinkError, Security

    link = GrpcLink("127.0.0.1:9", Security(insecure=True), max_reply_bytes=3 * 1024, retries=0)
    sent = []

    class Endless:
        cancelled = False

        def __iter__(self):
            for i in range(600):
                sent.append(i)
                yield type("Chunk", (), {"data": b"x" * 1024, "ByteSize": lambda self: 1024})()

        def cancel(self):
            Endless.cancelled = True

    link._exchange = lambda *a, **kw: Endless()
    with pytest.raises(LinkError, match="exceeds 3072 bytes"):
        link.request(b"hello")
    assert len(sent) == 4 and Endless.cancelled  # the fourth kilobyte was the last one read
    link.close()


@pytest.mark.parametrize("config_json, num_classes, words", [
    ("[" * 5000 + "]" * 5000, 10, "not valid JSON"),                            # deep nesting
    ("{" + '"a":{' * 3000 + "}" * 3001, 10, "not valid JSON|characters"),
    (json.dumps({f"k{i}": i for i in range(30_000)}), 10, "larger than max|characters"),  # 30,000 keys
    ('{"a": {"b": 1}}', 10, "flat JSON object"),
    ("{}", 10_000_000, "num_classes"),                                           # a head of ten million classes
    (json.dumps({f"k{i}": i for i in range(1500)}), 10, "characters"),           # under gRPC's limit, over ours
])
def test_hostile_handshakes_are_refused_cheaply_and_clearly(served, config_json, num_classes, words):
    from splitvit.link import splitvit_pb2 as pb
    from splitvit.link.grpc import PROTOCOL

    cfg, server, digest, *_ = served
    link = GrpcLink(server.address, Security(insecure=True, token=TOKEN), retries=0, connect_timeout_s=1)
    if words == "num_classes":
        from splitvit.train.config import shared_config

        config_json = json.dumps(shared_config(cfg))
    hello = pb.Hello(protocol=PROTOCOL, run_id="b" * 32, config_json=config_json, num_classes=num_classes,
                     init_digest=digest)
    t0 = time.perf_counter()
    with pytest.raises(Exception, match=words) as e:
        link._handshake(hello, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert time.perf_counter() - t0 < 2 and len(str(e.value)) < 2000
    link.close()


def test_calls_without_the_token_are_refused_before_their_body_and_hold_no_worker(served):
    """Held-open calls without the token (headers sent, body never) must not take the server's workers."""
    import threading

    import grpc

    from splitvit.link import splitvit_pb2 as pb

    cfg, server, digest, method, vit = served
    link = GrpcLink(server.address, Security(insecure=True, token="wrong"), retries=0, connect_timeout_s=1)
    release = threading.Event()

    def never():  # a request stream that sends nothing until released
        release.wait(20)
        yield pb.Chunk(data=b"x")

    from splitvit.link.grpc import SERVICE

    # half-open handshakes: headers sent, the request body never (as a peer without the token can do)
    handshake = link.channel.stream_unary(f"/{SERVICE}/Handshake", request_serializer=pb.Chunk.SerializeToString,
                                          response_deserializer=pb.Welcome.FromString)
    calls = [handshake.future(never(), timeout=20, metadata=[("authorization", "Bearer wrong")]) for _ in range(8)]
    codes = [c.exception(timeout=5).code() for c in calls]  # refused at once, not after the body or the timeout
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 8
    t0 = time.perf_counter()
    good = client(served)  # a real client still gets in and trains, at once
    good.request(train_message(method, vit, 0))
    assert time.perf_counter() - t0 < 5
    release.set()
    link.close()


def test_a_failed_connection_says_what_it_most_likely_means(tmp_path):
    c = certificates(tmp_path)
    server = LinkServer(lambda hello: None, "127.0.0.1:0", Security(cert=c["server.pem"], key=c["server.key"], token=TOKEN))
    try:
        def fails(target, security, **kw):
            link = GrpcLink(target, security, retries=5, backoff_s=0.01, timeout_s=2, **{"connect_timeout_s": 1, **kw})
            t0 = time.monotonic()
            with pytest.raises(LinkError) as e:
                link.connect("a" * 32, "{}", 10, "")
            return str(e.value), link.retried, time.monotonic() - t0

        message, *_ = fails("127.0.0.1:9", Security(insecure=True))
        assert "is `splitvit serve` running at 127.0.0.1:9?" in message
        message, *_ = fails(server.address, Security(insecure=True, token=TOKEN))
        assert "speaks plaintext to it: give link.tls.ca" in message
        # a certificate that does not name the host is not a network blip: no retries, the key named at once
        message, retried, took = fails(server.address, Security(ca=c["ca.pem"], token=TOKEN, server_name="elsewhere"),
                                       connect_timeout_s=30)
        assert "set link.tls.server_name" in message and retried == 0 and took < 10
    finally:
        server.stop()


def test_a_server_that_offers_impossible_chunks_is_refused(tmp_path):
    class Session:  # what the handshake reads of a session
        max_message_bytes, round = 1 << 20, 0

        def lost(self):
            pass

    for chunk in (0, 16, 1 << 30):
        server = LinkServer(lambda hello: Session(), "127.0.0.1:0", Security(insecure=True), chunk_bytes=chunk)
        try:
            with pytest.raises(LinkError, match=f"offers chunks of {chunk} bytes"):
                GrpcLink(server.address, Security(insecure=True), retries=0, connect_timeout_s=5).connect("a" * 32, "{}", 10, "")
        finally:
            server.stop()


def test_the_proto_declares_what_the_server_serves_and_loads_under_older_protobuf():
    import inspect

    from splitvit.link import grpc as link
    from splitvit.link import splitvit_pb2 as pb

    declared = {m.name for m in pb.DESCRIPTOR.services_by_name["SplitLearning"].methods}
    source = inspect.getsource(link)
    served = {name for name in declared if f'"{name}": ' in source}
    assert declared == served == {"Handshake", "Exchange", "Close"}  # no rpc the server does not answer
    # protoc's check that the runtime is at least its own version is dropped (proto/portable.py): Flower pins < 7
    assert "ValidateProtobufRuntimeVersion" not in inspect.getsource(pb)
