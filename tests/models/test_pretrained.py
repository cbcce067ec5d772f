import pytest
import torch
from safetensors.torch import save_file

from splitvit.models import create_model, load_checkpoint
from splitvit.models import pretrained


def timm_deit_tiny_keys(depth: int) -> set[str]:
    """The parameter names of timm's deit_tiny_patch16_224 state dict."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys


def test_names_match_timm():
    assert set(create_model("deit_tiny_patch16_224").state_dict()) == timm_deit_tiny_keys(12)


@pytest.fixture
def deit_state():
    """A deit_tiny-layout checkpoint (ImageNet head), with random values."""
    src = create_model("deit_tiny_patch16_224", depth=2)
    return {k: torch.randn_like(v) for k, v in src.state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_timm_checkpoint_loads(tmp_path, deit_state, fmt):
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        save_file(deit_state, path)
    else:
        torch.save({"model": deit_state} if fmt == "pth-wrapped" else deit_state, path)
    model = create_model("deit_tiny_patch16_224", depth=2)
    load_checkpoint(model, path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, deit_state[k])


def test_new_head_and_resampled_positions(tmp_path, deit_state):
    save_file(deit_state, tmp_path / "w.safetensors")
    model = create_model("deit_tiny_patch16_224", depth=2, num_classes=100, img_size=112)
    head_before = model.head.weight.clone()
    load_checkpoint(model, tmp_path / "w.safetensors")
    assert model.pos_embed.shape == (1, 50, 192)
    torch.testing.assert_close(model.pos_embed[:, 0], deit_state["pos_embed"][:, 0])  # CLS kept
    torch.testing.assert_close(model.head.weight, head_before)  # 1000 -> 100 classes: new head
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, deit_state["blocks.1.attn.qkv.weight"])


def test_resampling_a_grid_to_itself_is_identity(deit_state):
    pe = deit_state["pos_embed"]
    torch.testing.assert_close(pretrained.resample_pos_embed(pe, pe.shape[1]), pe)


def test_mismatched_checkpoint_is_refused(tmp_path, deit_state):
    save_file(deit_state, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="unexpected"):
        load_checkpoint(create_model("deit_tiny_patch16_224", depth=1), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="shape differs"):
        load_checkpoint(create_model("deit_small_patch16_224", depth=2), tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="timm-layout"):
        load_checkpoint(create_model("deit_tiny_patch16_224"), tmp_path / "missing.pth")


def test_hub_download_is_mocked_at_the_network_boundary(tmp_path, deit_state, monkeypatch):
    import huggingface_hub

    save_file(deit_state, tmp_path / "model.safetensors")
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = pretrained.hub_checkpoint("deit_tiny_patch16_224")
    assert calls == [("timm/deit_tiny_patch16_224.fb_in1k", "model.safetensors")]  # found in the (mocked) cache
    model = create_model("deit_tiny_patch16_224", depth=2, num_classes=10)
    load_checkpoint(model, path)


def test_hub_offline_gives_a_clear_message_at_once(monkeypatch):
    import time

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def not_cached(*a, **kw):
        calls.append(kw.get("local_files_only", False))
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="model.checkpoint=PATH"):
        pretrained.hub_checkpoint("deit_small_patch16_224")
    assert calls == [True] and time.perf_counter() - t0 < 1  # the cache was asked, the network never


def test_hub_reachability_is_a_short_tcp_check(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert pretrained.hub_reachable() is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    assert pretrained.hub_reachable(timeout=1) is False


def test_hub_weights_come_from_the_cache_when_offline(tmp_path, deit_state, monkeypatch):
    """The real hf_hub_download, offline, over a cache in the hub's own layout: no network, no mock."""
    from huggingface_hub import constants

    repo = tmp_path / "models--timm--deit_tiny_patch16_224.fb_in1k"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(deit_state, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = pretrained.hub_checkpoint("deit_tiny_patch16_224")
    assert path == snapshot / "model.safetensors"
    model = create_model("deit_tiny_patch16_224", depth=2, num_classes=100)
    load_checkpoint(model, path)  # the head is new: 100 classes
    with pytest.raises(RuntimeError, match="not in the local cache.*model.checkpoint=PATH"):
        pretrained.hub_checkpoint("deit_small_patch16_224")
