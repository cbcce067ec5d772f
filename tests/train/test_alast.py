"""ALaST: the budget update, token counts per block, frozen blocks, FLOP savings, clean evaluation, LoRA."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import SMALL, make_cfg
from splitvit.models import ViTConfig, VisionTransformer
from splitvit.models.alast import add_lora, keep_counts, prune_tokens
from splitvit.profiling import Profiler
from splitvit.train import ConfigError, fit
from splitvit.train.alast import ALaST, stage_K
from splitvit.train.config import validate


def tiny(depth: int = 4) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2, num_classes=5))


def step(model, alast, images, labels, opt):
    model.train()
    alast.before_step()
    loss = F.cross_entropy(model(images), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    alast.after_step()


def test_budget_update_on_a_hand_made_delta_sequence():
    model = tiny(3)
    a = ALaST(model.blocks, tokens=17, K=3, alpha=0.1, b0=0.9, b_min=0.5)
    for delta in ([1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [0.0, 9.0, 3.0], [0.0, 0.0, -10.0]):
        a.before_step()
        a.schedule.delta = list(delta)
        a.after_step()
    # step 1 only records; then b += 0.1 (d - d_prev), clipped to [0.5, 1]
    # block 0: 0.9 + 0.1 (2 - 1) = 1.0, + 0.1 (0 - 2) = 0.8, + 0 = 0.8
    # block 1: 0.9 - 0.1 = 0.8, + 0.8 -> 1.0 (clipped from 1.6), - 0.9 -> 0.5 (clipped from 0.1)
    # block 2: 0.9, 0.9, then - 1.3 -> 0.5 (clipped)
    assert a.budgets == pytest.approx([0.8, 0.5, 0.5])


def test_tokens_per_block_follow_the_budgets_and_stay_dropped():
    assert keep_counts([1.0, 0.5, 0.75, 0.25], 17) == [17, 9, 9, 5]  # never more than the block before
    model = tiny(4)
    a = ALaST(model.blocks, tokens=17, K=4, alpha=0.0, b0=1.0, b_min=0.25)
    a.budgets = [1.0, 0.5, 0.75, 0.25]
    model.train()
    a.before_step()
    model(torch.randn(3, 3, 16, 16))
    assert a.schedule.seen == [17, 9, 9, 5]  # prune=before: block 0 has no attention before it
    b = ALaST(tiny(4).blocks, tokens=17, K=4, alpha=0.0, prune="after")
    b.budgets = [0.5, 1.0, 0.25, 0.25]
    b.blocks.train()
    b.before_step()
    x = torch.randn(2, 17, 32)
    for blk in b.blocks:
        x = blk(x)
    assert b.schedule.seen == [17, 9, 9, 5] and x.shape[1] == 5  # each block cuts its own output


def test_prune_keeps_cls_and_the_most_attended_in_order():
    x = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)
    scores = torch.tensor([[0.0, 0.1, 0.5, 0.2, 0.9], [9.0, 0.8, 0.1, 0.7, 0.0]])
    kept, s = prune_tokens(x, scores, 3)
    assert kept[0, :, 0].tolist() == [0, 2, 4] and kept[1, :, 0].tolist() == [5, 6, 8]


def test_frozen_blocks_get_no_gradient_and_keep_their_adam_state():
    model = tiny(4)
    a = ALaST(model.blocks, tokens=17, K=1, alpha=0.0)
    a.budgets = [0.6, 0.9, 0.7, 0.8]  # alpha 0: block 1 has the top budget at every step
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(4, 3, 16, 16), torch.arange(4) % 5
    step(model, a, images, labels, opt)
    frozen = [p for i in (0, 2, 3) for p in model.blocks[i].parameters()]
    assert all(p.grad is None for p in frozen)
    assert all(p not in opt.state for p in frozen)  # Adam never touched them
    before = [p.detach().clone() for p in frozen]
    trained = [p.detach().clone() for p in model.blocks[1].parameters()]
    step(model, a, images, labels, opt)
    assert all(torch.equal(b, p) for b, p in zip(before, frozen))
    assert not all(torch.equal(b, p) for b, p in zip(trained, model.blocks[1].parameters()))
    assert model.head.weight.grad is not None  # the head always trains


def test_the_flop_saving_shows_in_the_counter():
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 5

    def flops(alast: bool) -> int:
        model = tiny(4)
        for p in (*model.patch_embed.parameters(), model.cls_token, model.pos_embed):
            p.requires_grad_(not alast)
        a = ALaST(model.blocks, tokens=17, K=2, alpha=0.0, b0=1.0, b_min=0.25) if alast else None
        if a is not None:
            a.budgets = [0.25, 0.25, 0.5, 1.0]  # 5 tokens from block 1 on (dropped ones stay dropped)
            a.before_step()
        prof = Profiler()
        model.train()
        with prof.step(count_flops=True):
            F.cross_entropy(model(images), labels).backward()
        return prof.flops["total"]

    full, fast = flops(False), flops(True)
    assert fast < 0.5 * full  # fewer tokens in three blocks, and two blocks' weight gradients skipped


def test_evaluation_is_unpruned_and_unfrozen():
    model, reference = tiny(4), copy.deepcopy(tiny(4))
    a = ALaST(model.blocks, tokens=17, K=1, alpha=0.0, b_min=0.25)
    a.budgets = [0.25] * 4
    images = torch.randn(3, 3, 16, 16)
    model.train()
    a.before_step()
    model(images)
    a.after_step()
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
    assert a.budgets == [0.25] * 4  # and evaluation updates nothing


def test_lora_starts_as_the_base_model_exactly():
    model, base = tiny(3), copy.deepcopy(tiny(3))
    adapters = add_lora(model.blocks, rank=2)
    images = torch.randn(2, 3, 16, 16)
    model.eval()
    base.eval()
    with torch.no_grad():
        assert torch.equal(model(images), base(images))
    assert all(not p.requires_grad for p in model.blocks[0].attn.qkv.parameters())
    assert all(p.requires_grad for p in adapters[0].parameters())
    assert stage_K(6, 2, 8) == 2 and stage_K(6, 6, 8) == 4 and stage_K(1, 2, 8) == 1


def test_alast_runs_whole_and_split_and_resumes_exactly(tmp_path):
    base = (*SMALL, "finetune=alast", "finetune.b_min=0.25", "finetune.alpha=0.05", "train.batch_size=64",
            "train.epochs=2", "eval.max_batches=1")
    fit(make_cfg(*base, "split.index=null", "train.max_steps=4"), tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])["alast"]["whole"]
    assert len(whole["budgets"]) == 3 and whole["tokens"][0] == 65 and min(whole["tokens"]) < 65  # b_min 0.25, alpha 0.05
    fit(make_cfg(*base, "train.max_steps=8"), tmp_path / "straight")
    fit(make_cfg(*base, "train.max_steps=4"), tmp_path / "resumed")
    s = fit(make_cfg(*base, "train.max_steps=8", "train.resume=true"), tmp_path / "resumed")

    # the resumed run evaluated at 4 too, and its gradient there said "stop" (max_steps): a few bytes
    last = lambda d: {k: v for k, v in json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]).items()  # noqa: E731
                      if k not in ("wall_s", "time_s", "eval_bytes_up", "eval_bytes_down", "train_loss", "bytes_down",
                                   "baseline_bytes")}
    assert last(tmp_path / "resumed") == last(tmp_path / "straight") and s["steps"] == 8
    assert set(last(tmp_path / "straight")["alast"]) == {"client", "server"}


def test_a_method_that_needs_a_fixed_token_count_is_refused_with_client_pruning():
    with pytest.raises(ConfigError, match="method=none or adc"):
        validate(make_cfg(*SMALL, "finetune=alast", "method=topk"))
    validate(make_cfg(*SMALL, "finetune=alast", "method=topk", "finetune.where=server"))
    validate(make_cfg(*SMALL, "finetune=alast", "method=none"))
    with pytest.raises(ConfigError, match="finetune.K"):
        validate(make_cfg(*SMALL, "finetune=alast", "finetune.K=99"))


def test_a_lora_run_exports_as_a_plain_model_with_its_adapters_folded_in(tmp_path):
    from splitvit.export import export
    from splitvit.models import create_model, load_checkpoint

    cfg = make_cfg(*SMALL, "finetune=alast", "finetune.lora=true", "finetune.lora_alpha=4", "method=none",
                   "train.batch_size=64", "train.max_steps=3", "eval.max_batches=1", "finetune.b_min=1.0")
    s = fit(cfg, tmp_path / "run")
    export(tmp_path / "run" / "checkpoints" / "clients.pt", tmp_path / "m.safetensors")
    model = create_model("vit_mini_patch4_32", embed_dim=64, depth=3, num_heads=2, num_classes=10)
    load_checkpoint(model, tmp_path / "m.safetensors")  # timm's keys only
    from splitvit.data import load_dataset
    from splitvit.data.base import batches, eval_subset

    data = load_dataset("digits")
    ids = eval_subset(data.test, 256)  # the images the run evaluated on (eval.max_batches=1 of 256)
    images, labels = next(batches(data.test, 256, 32, 3, indices=ids))
    model.eval()
    with torch.no_grad():
        acc = (model(images).argmax(1) == labels).float().mean().item()
    assert acc == pytest.approx(s["final_val_acc"], abs=1.5 / 256)  # the folded model is the trained one


def test_alast_over_grpc_equals_in_process(tmp_path):
    import json

    base = (*SMALL, "finetune=alast", "finetune.b_min=0.25", "finetune.alpha=0.05", "train.batch_size=64",
            "train.max_steps=4", "train.eval_every=2", "eval.max_batches=1")
    fit(make_cfg(*base), tmp_path / "local")
    fit(make_cfg(*base, "link=grpc"), tmp_path / "grpc")
    rows = lambda d: [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "time_s", "framing_bytes_up",  # noqa: E731
                       "framing_bytes_down", "alast")} for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "local") == rows(tmp_path / "grpc")  # the server's ALaST runs in the server process


def test_blocks_drawn_from_softmax_of_the_budgets():
    """The co-author's code draws the K blocks from softmax(budgets): with budgets in [0.5, 1] that is close to
    uniform, where sample (proportional to b) favours the high budgets twice as much."""
    counts = {}
    for select in ("sample", "softmax"):
        a = ALaST(tiny(4).blocks, tokens=17, K=1, alpha=0.0, b0=1.0, b_min=0.5, select=select, seed=3)
        a.budgets = [1.0, 0.5, 0.5, 0.5]
        seen = [0] * 4
        for _ in range(4000):
            a.before_step()
            seen[a.schedule.frozen.index(False)] += 1
            a.schedule.keep = []
        counts[select] = [c / 4000 for c in seen]
    # P(block 0): 1 / 2.5 = 0.4 in proportion to b; e^1 / (e^1 + 3 e^0.5) = 0.355 from the softmax
    assert counts["sample"][0] == pytest.approx(0.4, abs=0.03)
    assert counts["softmax"][0] == pytest.approx(torch.tensor([1.0, 0.5, 0.5, 0.5]).softmax(0)[0].item(), abs=0.03)
    with pytest.raises(ValueError, match="finetune.select='best' is not one of top, sample, softmax"):
        ALaST(tiny(2).blocks, tokens=17, K=1, alpha=0.0, select="best")
