"""splitvit export: the two halves of a run joined into one timm-layout file, with its provenance."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import SMALL, make_cfg
from splitvit.cli import main as cli
from splitvit.export import ExportError, export
from splitvit.models import create_model, load_checkpoint, read_metadata
from splitvit.train import ConfigError, fit
from splitvit.train.build import build_halves

GEOMETRY = ["model.embed_dim=64", "model.depth=3", "model.num_heads=2"]


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    fit(make_cfg(*SMALL, "train.max_steps=4", "dataset.classes=0:6"), run)
    return run


def test_exported_model_gives_the_logits_of_the_two_halves_chained(split_run, tmp_path):
    out = tmp_path / "m.safetensors"
    assert cli(["export", str(split_run), "--out", str(out)]) == 0
    cfg = make_cfg(*SMALL, "dataset.classes=0:6")
    client, server, _, _ = build_halves(cfg, 6, torch.device("cpu"))
    state = torch.load(split_run / "checkpoints" / "clients.pt", weights_only=True)
    client.load_state_dict(state["members"][0]["model"])
    server.load_state_dict(state["hub"]["halves"][0]["model"])
    whole = create_model("vit_mini_patch4_32", num_classes=6, embed_dim=64, depth=3, num_heads=2)
    load_checkpoint(whole, out)
    x = torch.randn(5, 3, 32, 32)
    client.eval(), server.eval(), whole.eval()
    with torch.no_grad():
        assert torch.allclose(whole(x), server(client(x)[0]), atol=1e-6)


def test_provenance_is_in_the_metadata(split_run, tmp_path):
    meta = export(split_run / "checkpoints" / "clients.pt", tmp_path / "m.safetensors")
    assert read_metadata(tmp_path / "m.safetensors") == meta
    summary = json.loads((split_run / "summary.json").read_text())
    assert meta["model"] == "vit_mini_patch4_32" and json.loads(meta["geometry"])["embed_dim"] == 64
    assert meta["num_classes"] == "6" and meta["dataset"] == "digits" and json.loads(meta["dataset_classes"]) == "0:6"
    assert int(meta["steps"]) == summary["steps"] and float(meta["final_val_acc"]) == summary["final_val_acc"]
    assert meta["config_hash"] == summary["config_hash"]


def test_a_whole_model_run_exports_and_fine_tunes_with_a_new_head(tmp_path):
    fit(make_cfg(*SMALL, "split.index=null", "train.max_steps=3", "dataset.classes=0:5"), tmp_path / "pre")
    out = tmp_path / "pre.safetensors"
    export(tmp_path / "pre" / "checkpoints" / "client.pt", out)
    weights = load_file(out)
    assert weights["head.weight"].shape[0] == 5
    # another class count: a new head, the pretrained blocks
    cfg = make_cfg(*SMALL, f"model.checkpoint={out}", "dataset.classes=2:9")
    client, server, _, _ = build_halves(cfg, 7, torch.device("cpu"))
    assert torch.equal(client.blocks[0].attn.qkv.weight, weights["blocks.0.attn.qkv.weight"])
    assert torch.equal(server.blocks["2"].mlp.fc2.weight, weights["blocks.2.mlp.fc2.weight"])
    assert server.head.weight.shape[0] == 7
    assert fit(make_cfg(*SMALL, f"model.checkpoint={out}", "dataset.classes=2:9", "train.max_steps=2"), tmp_path / "ft")["steps"] == 2


def test_same_class_count_keeps_the_head_unless_told(tmp_path):
    fit(make_cfg(*SMALL, "split.index=null", "train.max_steps=3", "dataset.classes=0:5"), tmp_path / "pre")
    out = tmp_path / "pre.safetensors"
    export(tmp_path / "pre" / "checkpoints" / "client.pt", out)
    head = load_file(out)["head.weight"]
    _, kept, _, _ = build_halves(make_cfg(*SMALL, f"model.checkpoint={out}"), 5, torch.device("cpu"))
    _, fresh, _, _ = build_halves(make_cfg(*SMALL, f"model.checkpoint={out}", "model.new_head=true"), 5, torch.device("cpu"))
    assert torch.equal(kept.head.weight, head) and not torch.equal(fresh.head.weight, head)


def grpc_files(run, where):
    """A run's checkpoint as the two machines of a gRPC run hold it: the client's file without the server's
    side, and the server's round file (``federation/round-<steps>.pt``: the hub's state)."""
    state = torch.load(run / "checkpoints" / "clients.pt", weights_only=True)
    hub = state.pop("hub")
    where.mkdir(parents=True, exist_ok=True)
    torch.save(state, where / "clients.pt")
    torch.save(hub, where / f"round-{hub['ledger']['step']:09d}.pt")
    return where / "clients.pt", where / f"round-{hub['ledger']['step']:09d}.pt"


def test_a_grpc_run_exports_from_both_checkpoint_files(split_run, tmp_path):
    client_only, server_file = grpc_files(split_run, tmp_path / "grpc")
    with pytest.raises(ExportError, match="--server"):
        export(client_only, tmp_path / "m.safetensors", None)
    assert cli(["export", "--client", str(client_only), "--server", str(server_file), "--out", str(tmp_path / "m.safetensors")]) == 0
    whole = export(split_run / "checkpoints" / "clients.pt", tmp_path / "w.safetensors")
    assert load_file(tmp_path / "m.safetensors").keys() == load_file(tmp_path / "w.safetensors").keys() and whole
    assert cli(["export", "--client", str(client_only), "--server", str(server_file.parent), "--out",
                str(tmp_path / "d.safetensors")]) == 0  # or the server's folder: the round of the same step


def test_mismatched_and_corrupt_checkpoints_get_clear_errors(split_run, tmp_path, capsys):
    other = tmp_path / "other"
    fit(make_cfg(*SMALL, "train.max_steps=2", "dataset.classes=0:6"), other)
    _, older = grpc_files(other, tmp_path / "older")
    client_only, _ = grpc_files(split_run, tmp_path / "grpc")
    with pytest.raises(ExportError, match="after 2 steps.*after 4"):
        export(client_only, tmp_path / "m.safetensors", older)
    broken = tmp_path / "clients.pt"
    broken.write_bytes((split_run / "checkpoints" / "clients.pt").read_bytes()[:5000])
    assert cli(["export", "--client", str(broken), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and str(broken) in err and not (tmp_path / "m.safetensors").exists()
    # a corrupt weights file given to model.checkpoint: a config error that names the file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConfigError, match="bad.safetensors"):
        fit(make_cfg(*SMALL, f"model.checkpoint={bad}", "train.max_steps=1"), tmp_path / "r")
    # another geometry's weights
    export(split_run / "checkpoints" / "clients.pt", tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="does not fit"):
        fit(make_cfg(*SMALL, "model.embed_dim=32", f"model.checkpoint={tmp_path / 'm.safetensors'}", "train.max_steps=1"), tmp_path / "r2")


def test_eval_measures_a_run_or_its_model_file_as_the_run_did(tmp_path, capsys):
    from splitvit.cli import main

    s = fit(make_cfg(*SMALL, "train.max_steps=6", "clients.num=2", "clients.scheme=splitfed_v2"), tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), f"out={tmp_path / 'e.json'}"]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["val_acc"] == s["final_val_acc"] and got["val_loss"] == pytest.approx(s["final_val_loss"], rel=1e-6)
    assert main(["export", str(tmp_path / "run"), f"out={tmp_path / 'm.safetensors'}"]) == 0
    assert main(["eval", str(tmp_path / "m.safetensors"), "eval.max_batches=1", "eval.batch_size=64"]) == 0
    assert "64 test images" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "neither a run directory nor a .safetensors file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "run"), "dataset.classes=0:5"]) == 2
    assert "the model has 10 classes" in capsys.readouterr().err
