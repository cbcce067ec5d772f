"""train.profile=true: phase times that add up, FLOPs that match a hand count, nothing when off."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SMALL, make_cfg
from splitvit import profiling
from splitvit.models import ViTConfig, VisionTransformer, split
from splitvit.profiling import Profiler, timed
from splitvit.train import fit

RUN = (*SMALL, "train.batch_size=64", "train.max_steps=8", "train.eval_every=4", "eval.max_batches=1", "train.profile=true")


def top_level(ms: dict) -> float:
    return sum(v for k, v in ms.items() if "/" not in k and k != "total")


@pytest.mark.parametrize("method", ["adc", "none"])
def test_phases_add_up_to_the_step_on_both_sides(tmp_path, method):
    s = fit(make_cfg(*RUN, f"method={method}"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for side in ("client", "server"):
        prof = s["profile"][side]
        assert prof["steps"] == 6  # 8 steps, of which steps 0 and 4 counted FLOPs instead of time
        # the phases cover the step: what is left is the Python between them (a few per cent; more on a busy machine)
        assert top_level(prof["ms"]) == pytest.approx(prof["ms"]["total"], rel=0.1)
        assert prof["flops"]["total"] > 0 and prof["peak_mb"] > 0
        assert all(side in r["profile"] for r in rows)  # per evaluation, as means
    client = s["profile"]["client"]
    assert {"forward", "compress", "serialize", "wait", "deserialize", "decompress", "backward", "step"} <= set(client["ms"])
    assert {"decode", "forward", "backward", "step", "encode"} <= set(s["profile"]["server"]["ms"])
    # in process the client waits for the server's whole step
    assert client["ms"]["wait"] >= s["profile"]["server"]["ms"]["total"] * 0.9
    if method == "adc":
        assert client["ms"]["compress/kmeans"] > 0 and client["flops"]["compress/kmeans"] > 0
        assert client["flops"]["forward/cls_attention"] > 0


def test_over_grpc_the_server_keeps_its_phases_beside_its_rounds(tmp_path):
    s = fit(make_cfg(*RUN, "link=grpc"), tmp_path)
    assert set(s["profile"]) == {"client", "peak_rss_mb"}  # the client has only its own phases
    [log] = (tmp_path / "server" / "federation").glob("*/profile.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]  # one line a round, i.e. (a client alone) an evaluation
    last = rows[-1]["server_run"]
    assert last["steps"] == 6  # as in process: steps 0 and 4 counted FLOPs instead of time
    assert {"decode", "forward", "backward", "step", "encode"} <= set(last["ms"])
    assert top_level(last["ms"]) == pytest.approx(last["ms"]["total"], rel=0.05)
    assert rows[0]["server"]["steps"] == 3
    inprocess = fit(make_cfg(*RUN), tmp_path / "inprocess")["profile"]["server"]
    assert last["flops"] == inprocess["flops"]  # the same work, counted on the same sampled step


def test_flops_match_a_hand_count_for_a_tiny_vit():
    B, img, p, D, H, depth, C = 3, 8, 4, 16, 2, 3, 5
    vit = VisionTransformer(ViTConfig(img_size=img, patch_size=p, embed_dim=D, depth=depth, num_heads=H, num_classes=C))
    client, server = split(vit, 2)
    N, hd = (img // p) ** 2 + 1, D // H
    patch = 2 * B * (N - 1) * (3 * p * p) * D
    block = (2 * B * N * D * 3 * D  # qkv
             + 2 * 2 * B * H * N * N * hd  # attention: q k^T and its product with v
             + 2 * B * N * D * D  # proj
             + 2 * 2 * B * N * D * 4 * D)  # mlp, two layers
    cls_row = 2 * B * H * N * hd  # the CLS query against every key, in the last client block
    prof = Profiler()
    with prof.step(count_flops=True):
        with timed("forward"):
            h, row = client(torch.randn(B, 3, img, img))
        with timed("server"):
            server(h)
    assert prof.flops["forward/cls_attention"] == cls_row
    assert prof.flops["forward"] == patch + 2 * block + cls_row
    assert prof.flops["server"] == (depth - 2) * block + 2 * B * D * C  # the head on the CLS token
    # a K-means distance is counted directly: 3 FLOPs per coordinate of each pair
    with prof.step(count_flops=True), timed("d"):
        torch.cdist(torch.randn(10, 4), torch.randn(3, 4))
    assert prof.flops["d"] == 3 * 10 * 3 * 4


def test_off_costs_nothing(tmp_path):
    assert timed("forward") is profiling._NULL  # no profiler: one lookup and a shared null context
    s = fit(make_cfg(*SMALL, "train.max_steps=2", "eval.max_batches=1"), tmp_path)
    assert "profile" not in s and "profile" not in (tmp_path / "metrics.jsonl").read_text()


def test_inspect_measures_purity_gradients_and_attention(tmp_path):
    fit(make_cfg(*SMALL, "train.batch_size=64", "train.max_steps=4", "train.eval_every=2", "eval.max_batches=1",
                     "train.inspect=true"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    got = rows[-1]["inspect"]
    assert 0 < got["attention_entropy_bits"] <= got["attention_entropy_uniform_bits"] + 1e-6
    assert 0 <= got["clusters_mixed"] <= 1 and got["cluster_label_entropy_bits"] >= 0
    assert got["grad_norm_sent"] > 0 and got["grad_norm_cut"] > 0
    fit(make_cfg(*SMALL, "method=none", "train.max_steps=2", "eval.max_batches=1", "train.inspect=true"), tmp_path / "n")
    row = json.loads((tmp_path / "n" / "metrics.jsonl").read_text().splitlines()[-1])["inspect"]
    assert "clusters_mixed" not in row  # nothing merged
    assert row["grad_norm_sent"] == pytest.approx(row["grad_norm_cut"], rel=1e-5)  # what came back is dL/dh


def test_purity_by_hand():
    from splitvit.train.inspect import Inspector

    ins = Inspector()
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])  # pure; one bit; H(0.25) = 0.811 bits
    ins.observe(torch.full((3, 4), 0.25), {"targets": targets})
    got = ins.summary()
    assert got["clusters_mixed"] == pytest.approx(2 / 3)
    assert got["cluster_label_entropy_bits"] == pytest.approx((0 + 1 + 0.811278) / 3, abs=1e-5)
    # ADC's merged_labels=members: the same clusters, from each sample's class and merged sample
    ins.observe(torch.full((3, 4), 0.25), {"labels": torch.tensor([0, 0, 1, 0, 1, 1, 1], dtype=torch.uint8),
                                           "members": torch.tensor([0, 1, 1, 2, 2, 2, 2], dtype=torch.uint8)})
    assert ins.summary() == got
    assert got["attention_entropy_bits"] == pytest.approx(2.0)  # uniform over 4 tokens
    assert ins.summary() == {}  # starts over after each evaluation


def test_show_draws_figure_8_from_a_tiny_run(tmp_path, capsys):
    from splitvit.show import main as show

    fit(make_cfg(*SMALL, "train.max_steps=3", "eval.max_batches=1", "dataset.classes=[3,5,7]"), tmp_path / "run")
    assert show([str(tmp_path / "run"), "--out", str(tmp_path / "pics"), "--batch", "64", "--clusters", "3"]) == 0
    for name in ("show_clusters.png", "show_attention.png"):
        assert (tmp_path / "pics" / name).stat().st_size > 10_000
    # the images are labelled by the dataset's class names, not by the ids the subset relabelled them to
    drawn = capsys.readouterr().out.split("mix classes", 1)[1].split("wrote", 1)[0]
    assert drawn.count("cluster ") == 3 and {"3", "5"} <= set(drawn.replace(",", " ").split()) and " 0" not in drawn
    assert show([str(tmp_path / "missing")]) == 2
