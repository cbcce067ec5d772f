"""Several client processes and one `splitvit serve` on loopback: the simulation's result, isolated
sessions, a duplicate client id refused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit.link.grpc import GrpcLink, LinkError, LinkServer, Security
from splitvit.train.build import build_halves
from splitvit.train.config import shared_config
from splitvit.train.server import server_digest
from splitvit.wire import Header, pack
from test_grpc import start_serve, stop

RUN = [*SMALL, "eval.max_batches=1", "eval.batch_size=64", "train.batch_size=16", "clients.num=3",
       "clients.local_steps=2", "clients.rounds=2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same float sums in every process


def splitvit(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitvit", *args], env={**os.environ, **ONE_THREAD},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def simulate(tmp_path: Path, *args: str) -> dict:
    proc = splitvit("train", *RUN, *args, f"run_dir={tmp_path / 'sim'}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return json.loads((tmp_path / "sim" / "summary.json").read_text())


# every feature at once with SplitFed-V2: each client over its own noisy channel, profiled, inspected,
# fine-tuned by ALaST on both sides
EVERYTHING = ["channel=awgn", "channel.snr_db=10", "train.profile=true", "train.inspect=true", "finetune=alast"]


@pytest.mark.parametrize("scheme, features", [("splitfed_v2", EVERYTHING), ("sequential", []), ("splitfed_v1", [])],
                         ids=["splitfed_v2-everything", "sequential", "splitfed_v1"])
def test_three_client_processes_equal_the_simulation(tmp_path, scheme, features):
    server, address = start_serve(tmp_path, *RUN, f"clients.scheme={scheme}", *features, "--insecure", "link.once=true",
                                  env=ONE_THREAD)
    try:
        procs = [splitvit("client", *RUN, f"clients.scheme={scheme}", *features, f"server={address}", "--insecure",
                          "eval.also=[compressed]", f"clients.id={i}", f"run_dir={tmp_path / f'c{i}'}") for i in range(3)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(outs)
        assert server.wait(timeout=30) == 0  # link.once: it stops when the last client closed
    finally:
        stop(server)
    sim = simulate(tmp_path, f"clients.scheme={scheme}", *features, "eval.also=[compressed]")
    remote = [json.loads((tmp_path / f"c{i}" / "summary.json").read_text()) for i in range(3)]
    for i, s in enumerate(remote):  # every byte of every client, weights included
        assert s["per_client"] == [sim["per_client"][i]]
        assert s["link"] == "grpc" and s["framing_bytes_up"] > 0
    # each round's evaluator (sequential: its last client) evaluated it; the last round's is the run's result
    last_round = {i: json.loads((tmp_path / f"c{i}" / "metrics.jsonl").read_text().splitlines()[-1])["round"]
                  for i, s in enumerate(remote) if s["final_val_acc"] is not None}
    final = remote[max(last_round, key=last_round.get)]
    assert final["final_val_acc"] == sim["final_val_acc"] and final["final_val_loss"] == sim["final_val_loss"]
    assert final["final_val_acc_compressed"] == sim["final_val_acc_compressed"]  # measured by that client too
    served = json.loads((tmp_path / "server" / "federation" / "summary.json").read_text())
    assert served["stopped_by"] == sim["stopped_by"] == "rounds" and served["steps"] == sim["steps"] == 12
    assert served["bytes_up"] == sim["bytes_up"] and served["bytes_down"] == sim["bytes_down"]
    if features:  # each client's channel, phases, inspection and ALaST stage, in its own run files
        for i, s in enumerate(remote):
            assert s["channel_snr_db_up"] == sim["channel_per_client"][str(i)]["channel_snr_db_up"]
            assert abs(s["channel_snr_db_up"] - 10) < 0.5 and set(s["profile"]) == {"client", "peak_rss_mb"}
        assert {"client 0", "client 1", "client 2", "server"} <= set(sim["profile"])
        row = json.loads((tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()[-1])
        assert set(row["inspect"]) == {"client 0", "client 1", "client 2"} and "attention_entropy_bits" in row["inspect"]["client 0"]
        assert {"client 0", "client 1", "client 2", "server"} == set(row["alast"])
        evaluated = [json.loads(line) for i in range(3) for line in (tmp_path / f"c{i}" / "metrics.jsonl").read_text().splitlines()]
        assert evaluated and all({"inspect", "alast", "profile", "channel_snr_db_up"} <= set(r) for r in evaluated)
        assert (tmp_path / "server" / "federation" / "profile.jsonl").is_file()  # the server's phases, by round


def test_a_second_run_with_a_taken_id_is_refused_and_sessions_stay_apart(tmp_path):
    server, address = start_serve(tmp_path, *RUN, "--insecure")
    try:
        first = splitvit("client", *RUN, f"server={address}", "--insecure", "clients.id=1", f"run_dir={tmp_path / 'a'}")
        # the first client waits for the other two to start the round; meanwhile another run says it is client 1
        deadline = time.monotonic() + 60
        while "connected" not in (tmp_path / "serve.out").read_text():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        second = splitvit("client", *RUN, f"server={address}", "--insecure", "clients.id=1", "link.connect_timeout_s=5",
                          f"run_dir={tmp_path / 'b'}")
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 3 and "client id 1 is taken by run" in out
        # a session cannot speak for another client: a message that names another is refused
        cfg = make_cfg(*RUN, "link=grpc")
        _, server_half, method, _ = build_halves(cfg, 10, torch.device("cpu"))
        link = GrpcLink(address, Security(insecure=True), timeout_s=10, retries=0)
        link.connect("c" * 32, json.dumps(shared_config(cfg)), 10, server_digest(server_half, method.server()),
                     client=2, samples=479)
        with pytest.raises(LinkError, match="from client 0 reached the session of client 2"):
            link.request(pack(Header("control", client=0, step=0, mode="fetch"), {}))
        first.kill()
        first.communicate()
    finally:
        stop(server)


def wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


def client_process(tmp_path: Path, run: list[str], address: str, i: int, *more: str) -> subprocess.Popen:
    """``splitvit client`` number ``i`` of ``run`` against ``address``, in ``tmp_path/c<i>``."""
    return splitvit("client", *run, f"server={address}", "--insecure", f"clients.id={i}", f"run_dir={tmp_path / f'c{i}'}",
                    *more)


def killed_once_saved(tmp_path: Path, procs: list, i: int) -> None:
    """Kill client ``i`` once it has finished a round and saved it."""
    ckpt = tmp_path / f"c{i}" / "checkpoints" / "clients.pt"
    deadline = time.monotonic() + 120
    while not ckpt.is_file():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    procs[i].kill()
    procs[i].communicate()


def test_a_client_killed_mid_round_is_dropped_and_resumed_in_a_later_round(tmp_path):
    run = [*RUN, "clients.scheme=splitfed_v2", "clients.rounds=40", "clients.local_steps=2", "clients.drop_after_s=3"]
    server, address = start_serve(tmp_path, *run, "--insecure", "link.once=true")
    try:
        procs = [client_process(tmp_path, run, address, i) for i in range(3)]
        killed_once_saved(tmp_path, procs, 2)
        procs[2] = client_process(tmp_path, run, address, 2, "train.resume=true")
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(outs)
        assert server.wait(timeout=30) == 0
    finally:
        stop(server)
    log = (tmp_path / "serve.out").read_text()
    assert "client 2 dropped from round" in log
    back = int(log.split("client 2 resumed after ")[1].split()[0])  # its steps when it saved its last round
    served = json.loads((tmp_path / "server" / "federation" / "summary.json").read_text())
    assert served["rounds"] == 40 and served["stopped_by"] == "rounds"
    steps = {int(c): v["steps"] for c, v in served["per_client"].items()}
    assert steps[0] == steps[1] == 40 * 2  # the others' rounds are whole
    assert back < steps[2] < 40 * 2  # client 2 missed a round or more, and trained again once back
    summaries = [json.loads((tmp_path / f"c{i}" / "summary.json").read_text()) for i in range(3)]
    assert summaries[0]["final_val_acc"] is not None and summaries[0]["rounds"] == 40


def test_an_evaluator_back_after_the_run_ended_says_its_last_evaluation_is_not_the_end(tmp_path):
    run = [*RUN, "clients.scheme=splitfed_v2", "clients.rounds=6", "clients.local_steps=2", "clients.drop_after_s=2"]
    server, address = start_serve(tmp_path, *run, "--insecure")
    try:
        procs = [client_process(tmp_path, run, address, i) for i in range(3)]
        killed_once_saved(tmp_path, procs, 0)  # client 0 evaluates every round
        outs = [p.communicate(timeout=300)[0] for p in procs[1:]]  # the others finish the run without it
        assert all(p.returncode == 0 for p in procs[1:]), "\n".join(outs)
        back = client_process(tmp_path, run, address, 0, "train.resume=true")
        out, _ = back.communicate(timeout=120)
        assert back.returncode == 0, out
    finally:
        stop(server)
    s = json.loads((tmp_path / "c0" / "summary.json").read_text())
    [warning] = [w for w in s.get("warnings", []) if "the run ended while this client was away" in w]
    assert "is not the run's final model" in warning and "warning: the run ended while this client was away" in out


def test_with_mutual_tls_a_client_must_present_its_own_id(tmp_path):
    from splitvit.train.remote import Sessions
    from test_grpc import certificates

    pem = certificates(tmp_path, clients=("client-0", "client-1"))
    cfg = make_cfg(*RUN, "link=grpc")
    server = LinkServer(Sessions(cfg, tmp_path), "127.0.0.1:0",
                        Security(cert=pem["server.pem"], key=pem["server.key"], ca=pem["ca.pem"], token="t"), clients=3)
    _, server_half, method, _ = build_halves(cfg, 10, torch.device("cpu"))
    hello = (json.dumps(shared_config(cfg)), 10, server_digest(server_half, method.server()))
    try:
        def link(name):
            return GrpcLink(server.address, Security(ca=pem["ca.pem"], cert=pem[f"{name}.pem"], key=pem[f"{name}.key"],
                                                     server_name="localhost", token="t"), timeout_s=10, retries=0)

        with pytest.raises(LinkError, match="names .*client-0.*, not client-1"):
            link("client-0").connect("a" * 32, *hello, client=1, samples=479)
        welcome = link("client-1").connect("b" * 32, *hello, client=1, samples=479)
        assert welcome.note == "client 1 of 3"
    finally:
        server.stop()


def test_a_server_killed_mid_run_resumes_from_its_last_round(tmp_path):
    """Killed as round 3 closes: the restart goes on to the end, or (a client saved a round the server had not,
    which the moment of the kill decides) every client is told at once that the run cannot go on exactly."""
    run = [*RUN, "clients.scheme=splitfed_v2", "clients.rounds=12", "clients.local_steps=2", "link.retries=0"]
    server, address = start_serve(tmp_path, *run, "--insecure")

    def clients(address, *more):
        return [splitvit("client", *run, f"server={address}", "--insecure", f"clients.id={i}",
                         f"run_dir={tmp_path / f'c{i}'}", *more) for i in range(3)]

    try:
        procs = clients(address)
        wait_for(tmp_path / "serve.out", "round 3 closed")
        server.kill()  # mid-run; the clients' calls fail and they stop with a link error
        server.wait()
        assert [p.wait(timeout=120) for p in procs] == [3, 3, 3]
        (tmp_path / "serve.out").rename(tmp_path / "serve-1.out")
        server, address = start_serve(tmp_path, *run, "--insecure", "link.once=true", "train.resume=true")
        procs = clients(address, "train.resume=true")
        outs = [p.communicate(timeout=300)[0] for p in procs]
        codes = [p.returncode for p in procs]
        if codes != [0, 0, 0]:  # the clients' saved rounds disagree with the server's: all are told so, at once
            assert codes == [3, 3, 3], "\n".join(outs)
            assert all("the run cannot go on exactly" in out for out in outs), "\n".join(outs)
            return
        assert server.wait(timeout=30) == 0
    finally:
        stop(server)
    assert "resumed the run after round" in (tmp_path / "serve.out").read_text()
    served = json.loads((tmp_path / "server" / "federation" / "summary.json").read_text())
    assert served["rounds"] == 12 and served["stopped_by"] == "rounds"


def test_a_server_killed_as_a_round_closes_goes_back_to_the_round_the_clients_saved(tmp_path):
    """The server saved round r and was killed; the clients saved round r - 1 only. They come back from it, the
    server goes back to it too, and the run ends exactly as if never stopped. (The other way round, a client
    that saved a round the server had not, is the kill-mid-run test's second outcome.)"""
    import hashlib
    import io
    import threading

    more = ["clients.scheme=splitfed_v2", "clients.rounds=8"]
    run = [*RUN, *more, "link.retries=0"]
    kept: dict[int, dict[int, bytes]] = {i: {} for i in range(3)}  # client -> round -> its checkpoint's bytes
    done = threading.Event()

    def watch():  # every checkpoint each client writes, by the round it holds
        while not done.is_set():
            for i in range(3):
                path = tmp_path / f"c{i}" / "checkpoints" / "clients.pt"
                try:
                    data = path.read_bytes()
                    state = torch.load(io.BytesIO(data), weights_only=True)
                except Exception:  # noqa: BLE001 - not there yet, or mid-rename
                    continue
                kept[i].setdefault(state["progress"]["round"], data)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    server, address = start_serve(tmp_path, *run, "--insecure", env=ONE_THREAD)
    try:
        procs = [client_process(tmp_path, run, address, i) for i in range(3)]
        wait_for(tmp_path / "serve.out", "round 3 closed")
        server.kill()  # as a round closes
        server.wait()
        assert [p.wait(timeout=120) for p in procs] == [3, 3, 3]
        done.set()
        watcher.join()
        saved = max(torch.load(p, weights_only=True)["ledger"]["round"]
                    for p in (tmp_path / "server" / "federation").glob("round-*.pt"))
        assert 2 <= saved < 8, saved  # killed mid-run (as round 3 closed: its save may not have been made)
        restore = saved - 1
        assert all(restore in kept[i] for i in range(3)), {i: sorted(k) for i, k in kept.items()}
        for i in range(3):
            path = tmp_path / f"c{i}" / "checkpoints" / "clients.pt"
            path.write_bytes(kept[i][restore])
            path.with_name(path.name + ".sha256").write_text(hashlib.sha256(kept[i][restore]).hexdigest() + "\n")
        (tmp_path / "serve.out").rename(tmp_path / "serve-1.out")
        server, address = start_serve(tmp_path, *run, "--insecure", "link.once=true", "train.resume=true", env=ONE_THREAD)
        procs = [client_process(tmp_path, run, address, i, "train.resume=true") for i in range(3)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(outs)
        assert server.wait(timeout=30) == 0
    finally:
        done.set()
        stop(server)
    assert f"the server goes back to round {saved - 1}" in (tmp_path / "serve.out").read_text()
    sim = simulate(tmp_path, *more)
    served = json.loads((tmp_path / "server" / "federation" / "summary.json").read_text())
    assert served["steps"] == sim["steps"] and served["rounds"] == 8
    assert served["bytes_up"] == sim["bytes_up"] and served["bytes_down"] == sim["bytes_down"]
    remote = [json.loads((tmp_path / f"c{i}" / "summary.json").read_text()) for i in range(3)]
    final = [s for s in remote if s["final_val_acc"] is not None]
    assert final and all(s["final_val_acc"] == sim["final_val_acc"] and s["final_val_loss"] == sim["final_val_loss"]
                         for s in final)
