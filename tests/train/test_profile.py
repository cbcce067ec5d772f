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
        assert top_level(prof["ms"]) == pytest.approx(prof["ms"]["total"], rel=0.05)
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
