"""What a newcomer meets: errors that name the key and say what to do, never a traceback; logs that work
off a terminal; Ctrl-C that saves; a sweep that survives one bad job."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SMALL
from splitvit.cli import main


def run(*args, cwd, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "splitvit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.mark.parametrize("args, words", [
    (["trian.max_steps=5"], "unknown key trian.max_steps; did you mean train.max_steps?"),
    (["+trian.max_steps=5"], "unknown key trian.max_steps; did you mean train.max_steps?"),
    (["train.batchsize=3"], "did you mean train.batch_size"),
    (["link.retries=0"], "link.retries is a key of link=grpc, not of the link in use"),
    (["method=fedlite", "method.compression=0.1"], "method=fedlite has no key compression (its keys: q, L"),
    (["+method.compresion=0.1"], "did you mean method.compression"),
    (["method=c3"], "method='c3' is not allowed; choose one of: adc"),
    (["--multirun", "method=adc,fedlite", "method.compression=0.1"], "method=fedlite has no key compression"),
])
def test_unknown_keys_and_options_are_refused_with_the_nearest_names(args, words, capsys):
    assert main(["train", *args]) == 2
    out, err = capsys.readouterr()
    assert words in err and out == "" and "Traceback" not in err


@pytest.mark.parametrize("args, words", [
    (["seed=abc"], "seed='abc' must be an integer"),
    (["method.compression=abc"], "method.compression='abc' must be a number"),
    (["method.compression=2"], "method.compression must be in (0, 1], got 2"),
    (["dataset=folder"], "dataset.root is required for dataset=folder"),
    (["train.lr=fast"], "train.lr='fast' must be a number"),
    (["train.max_steps=2.5"], "train.max_steps=2.5 must be an integer"),
])
def test_bad_values_name_the_full_key_and_exit_2(tmp_path, monkeypatch, capsys, args, words):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMALL, *args, f"run_dir={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert words in err and "Traceback" not in err


def test_plan_of_a_sweep_without_an_experiment_and_its_errors_on_stderr(capsys):
    from splitvit.plan import main as plan

    assert plan(["method=adc,c3sl"]) == 0 and "2 jobs" in capsys.readouterr().out
    assert plan(["method=adc", "method.compression=7"]) == 2
    out, err = capsys.readouterr()
    assert "method.compression" in err and out == ""


def test_version(capsys):
    from splitvit import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"splitvit {__version__}"


def test_start_line_at_once_and_the_log_file_is_written(tmp_path):
    r = run("train", *SMALL, "train.max_steps=2", f"run_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("splitvit: starting") and "adc" in first and "digits" in first and "device cpu" in first
    log = (tmp_path / "r" / "splitvit.log").read_text()
    assert "starting" in log and "val_acc" in log


def test_one_bad_job_does_not_stop_the_sweep(tmp_path):
    r = run("train", "--multirun", *SMALL, "train.max_steps=1", "method.compression=0.1,2,0.2",
            f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode == 1
    # each job's folder is named by its number and what the sweep varies in it
    jobs = {p.name: p for p in (tmp_path / "s").iterdir() if p.is_dir()}
    assert sorted(jobs) == ["0_method.compression=0.1", "1_method.compression=2", "2_method.compression=0.2"]
    assert (jobs["0_method.compression=0.1"] / "summary.json").is_file() and (jobs["2_method.compression=0.2"] / "summary.json").is_file()
    assert "must be in (0, 1]" in (jobs["1_method.compression=2"] / "FAILED").read_text()
    assert "1 job(s) of the sweep failed" in r.stderr and str(jobs["1_method.compression=2"]) in r.stderr


def test_unreachable_target_is_warned_in_the_log_and_the_summary(tmp_path):
    r = run("train", *SMALL, "train.max_steps=1", "method.batch_ratio=0.01", "train.batch_size=16",
            f"run_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (warning,) = json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"]
    assert "0.0625" in warning and "0.0625" in r.stdout and "cannot be reached" in (tmp_path / "r" / "splitvit.log").read_text()


def test_ctrl_c_saves_the_step_reached_and_says_how_to_continue(tmp_path):
    run_dir = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "-m", "splitvit.cli", "train", *SMALL, "train.epochs=50", f"run_dir={run_dir}"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "clients.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)  # the first evaluation has checkpointed: training is under way
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted after step" in err and "train.resume=true" in err and f"run_dir={run_dir}" in err
    state = torch.load(run_dir / "checkpoints" / "clients.pt", weights_only=True)
    step = state["progress"]["step"]
    assert f"after step {step}" in err and "saved a checkpoint there" in err
    assert state["hub"]["ledger"]["step"] == step  # the server's half, at the same step
    # and the command it prints continues the run
    r = run("train", *SMALL, "train.epochs=50", "train.max_steps=" + str(step + 2), "train.resume=true",
            f"run_dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0 and json.loads((run_dir / "summary.json").read_text())["steps"] == step + 2


def test_resume_hint_only_when_a_checkpoint_exists(tmp_path):
    r = run("client", "server=127.0.0.1:9", "--insecure", *SMALL, "link.connect_timeout_s=1", "link.retries=0",
            f"run_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert r.returncode == 3 and "train.resume=true" not in r.stderr


def test_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, capsys):
    from conftest import make_cfg
    from splitvit.train import ConfigError, fit
    from splitvit.train.checkpoint import atomic_save, checksum_file, load_checkpoint_file

    fit(make_cfg(*SMALL, "train.max_steps=2"), tmp_path)
    ckpt = tmp_path / "checkpoints" / "clients.pt"
    good = ckpt.read_bytes()
    rot = bytearray(good)
    rot[len(rot) // 2] ^= 1  # one bit, which torch might well load without a word
    ckpt.write_bytes(bytes(rot))
    with pytest.raises(SystemExit) as e:  # what the command says
        main(["train", *SMALL, "train.max_steps=4", "train.resume=true", f"run_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and str(ckpt) in err and "does not match its checksum" in err and "Traceback" not in err
    assert "keeps no checkpoint before it: start the run again in a new run_dir" in err  # the advice is what works
    ckpt.write_bytes(good[:1000])
    with pytest.raises(ConfigError, match="truncated"):
        load_checkpoint_file(ckpt)
    checksum_file(ckpt).unlink()  # a checkpoint from before checksums: read as it is
    with pytest.raises(ConfigError, match="cannot be read .* damaged or truncated"):
        load_checkpoint_file(ckpt)
    # a server's round: the advice is to fall back on the round before, which the server keeps
    rnd = tmp_path / "federation" / "round-000000002.pt"
    atomic_save({"a": torch.zeros(3)}, rnd)
    first = rnd.read_bytes()
    atomic_save({"a": torch.ones(3)}, rnd)
    assert len(checksum_file(rnd).read_text().split()) == 2
    rnd.write_bytes(first)  # a crash between the two renames: the old file with the new checksum list
    assert torch.equal(load_checkpoint_file(rnd)["a"], torch.zeros(3))
    rnd.write_bytes(first[:-10])
    with pytest.raises(ConfigError, match="the server resumes from the round it saved before it"):
        load_checkpoint_file(rnd)


def test_shell_completion_installs_for_splitvit_and_completes_after_the_subcommand(tmp_path):
    r = run("-sc", "install=bash", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("hydra_bash_completion splitvit")
    line = "splitvit train method=c3"
    r = run("-sc", "query=bash", cwd=tmp_path, env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert r.stdout.split() == ["method=c3sl"]
    line = "splitvit train train.max"
    r = run("-sc", "query=bash", cwd=tmp_path, env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert "train.max_steps=" in r.stdout.split()


def test_a_malformed_reply_is_a_link_error_with_exit_3(tmp_path, monkeypatch, capsys):
    from splitvit.train.server import Session
    from splitvit.wire import encode

    def nested_header(self, payload):  # a server that answers with a tensor of the wrong shape
        return encode({"grad": torch.zeros(3, 3)}, {"kind": "grad", "step": "0", "loss": "1.0"})

    monkeypatch.setattr(Session, "handle", nested_header)
    with pytest.raises(SystemExit) as e:
        main(["train", *SMALL, "train.max_steps=2", f"run_dir={tmp_path}", "hydra.output_subdir=null"])
    assert e.value.code == 3
    err = capsys.readouterr().err
    assert "link error" in err and "grad" in err and "train.resume=true" not in err


def test_checkpoints_are_fsynced_file_and_directory(tmp_path, monkeypatch):
    from splitvit.train.checkpoint import atomic_save

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_mode) or real(fd))
    atomic_save({"x": torch.ones(2)}, tmp_path / "c" / "client.pt")
    import stat

    # the checksum's bytes and the file's, then the renames in their directory
    assert [stat.S_ISREG(m) for m in synced] == [True, True, False]
    assert torch.load(tmp_path / "c" / "client.pt", weights_only=True)["x"].sum() == 2
    import hashlib

    digest = hashlib.sha256((tmp_path / "c" / "client.pt").read_bytes()).hexdigest()
    assert (tmp_path / "c" / "client.pt.sha256").read_text().split() == [digest]
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_a_modelled_link_shows_its_time_in_the_final_lines(tmp_path):
    from splitvit.cli import format_summary
    from splitvit.train import fit

    from conftest import make_cfg

    s = fit(make_cfg(*SMALL, "train.max_steps=2", "link.bandwidth_mbps=1", "link.latency_ms=20"), tmp_path)
    text = format_summary(s, tmp_path)
    assert f"{s['link_s']:.1f} s on the link" in text and "best accuracy reached at" in text and s["link_s"] > 1


def test_license_and_citation_are_shipped():
    import yaml
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert "Permission is hereby granted" in (root / "LICENSE").read_text()
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    titles = " ".join(r["title"] for r in cff["references"])
    assert cff["cff-version"] and "Attention-based Double Compression" in titles and "Token Selection" in titles


def test_a_client_without_a_server_address_is_refused(capsys):
    assert main(["client", *SMALL, "--insecure"]) == 2
    err = capsys.readouterr().err
    assert "splitvit client needs server=HOST:PORT" in err and "splitvit train link=grpc" in err


@pytest.mark.parametrize("arg", ["train.lr=nan", "train.lr=inf", "train.weight_decay=nan", "method.compression=-inf"])
def test_a_setting_that_is_not_a_finite_number_is_refused(arg, capsys, tmp_path):
    assert main(["train", *SMALL, arg, f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"{arg.split('=')[0]}=" in err and "is not a finite number" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_a_run_directory_held_by_a_live_process_is_refused(tmp_path):
    from splitvit.train import ConfigError, fit
    from splitvit.train.common import held
    from conftest import make_cfg

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom splitvit.train.common import held\n"
                               f"with held({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"run_dir {tmp_path} is in use by another splitvit process \\(pid {holder.pid}\\)"):
            fit(make_cfg(*SMALL, "train.max_steps=1"), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    with held(tmp_path):  # the hold goes with its process
        pass
    assert not (tmp_path / "summary.json").exists()


def test_a_resume_of_nothing_is_refused_before_anything_is_made(tmp_path, capsys):
    assert main(["train", *SMALL, "train.resume=true", f"run_dir={tmp_path / 'nope'}"]) == 2
    assert "holds no checkpoints/" in capsys.readouterr().err and not (tmp_path / "nope").exists()


def test_each_client_gets_its_own_default_folder(monkeypatch):
    import splitvit.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_train", lambda: seen.setdefault("argv", list(sys.argv)))
    assert cli.main(["client", *SMALL, "server=127.0.0.1:9", "clients.num=2", "clients.id=1"]) == 0
    assert "run_dir=outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-client${clients.id}" in seen["argv"]
    from conftest import make_cfg

    cfg = make_cfg(*SMALL, "clients.num=2", "clients.id=1", "run_dir=outputs/x-client${clients.id}")
    assert cfg.run_dir == "outputs/x-client1"
