import math

import pytest
import torch

from splitvit.models import PRESETS, create_model, split
from splitvit.models.vit import Attention


def full_attention(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention matrix [B, H, N, N] and output, written out without SDPA."""
    B, N, D = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    p = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).softmax(-1)
    out = attn.proj((p @ v).transpose(1, 2).reshape(B, N, D))
    return p, out


def test_cls_row_equals_row_of_full_attention_matrix():
    attn = Attention(48, 4).double()
    x = torch.randn(5, 17, 48, dtype=torch.double)
    out, row = attn(x, cls_attn=True)
    p, ref = full_attention(attn, x)
    torch.testing.assert_close(row.double(), p[:, :, 0].mean(1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(row.sum(-1), torch.ones(5, dtype=row.dtype))


def test_cls_row_carries_no_gradient():
    attn = Attention(32, 2)
    _, row = attn(torch.randn(2, 9, 32, requires_grad=True), cls_attn=True)
    assert not row.requires_grad


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_splits(name):
    model = create_model(name, num_classes=7, depth=2)
    n = model.cfg.num_tokens
    assert model.pos_embed.shape == (1, n, model.cfg.embed_dim)
    client, server = split(model, 1)
    x = torch.randn(2, 3, model.cfg.img_size, model.cfg.img_size)
    h, row = client(x)
    assert h.shape == (2, n, model.cfg.embed_dim) and row.shape == (2, n)
    assert server(h).shape == (2, 7)


@pytest.mark.parametrize("index", [1, 2, 4])
def test_split_parts_compose_to_the_whole_model(index):
    model = create_model("vit_mini_patch4_32", num_classes=10, depth=4).eval()
    client, server = split(model, index)
    x = torch.randn(3, 3, 32, 32)
    h, _ = client(x)
    torch.testing.assert_close(server(h), model(x))
    names = set(client.state_dict()) | set(server.state_dict())
    assert names == set(model.state_dict())  # timm's names survive the split


def test_split_index_out_of_range_is_refused():
    model = create_model("vit_mini_patch4_32", depth=3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="split index"):
            split(model, bad)


def test_wrong_image_size_says_what_to_do():
    model = create_model("vit_mini_patch4_32")
    with pytest.raises(ValueError, match="resize"):
        model(torch.randn(1, 3, 64, 64))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="deit_tiny_patch16_224"):
        create_model("vit_huge")


def test_server_accepts_any_token_subset():
    model = create_model("vit_mini_patch4_32", depth=2)
    _, server = split(model, 1)
    assert server(torch.randn(4, 7, 128)).shape == (4, 1000)
