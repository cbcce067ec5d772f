"""ADC's kernel on its own: merge the samples of a batch by K-means on their CLS-attention rows, keep the
most-attended tokens of each merged sample, and back-propagate through it.

    python examples/merge_and_select.py [--smoke]
"""

from __future__ import annotations

import argparse

import torch

from splitvit.compression import merge_and_select
from splitvit.models import create_model, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a small ViT (CI runs every example so)")
    args = ap.parse_args()
    name, size = ("vit_mini_patch4_32", 32) if args.smoke else ("deit_tiny_patch16_224", 224)
    model = create_model(name, num_classes=100)
    client, server = split(model, 3)  # client: patch embedding and blocks 1..3
    images = torch.randn(128, 3, size, size)
    h, cls_attn = client(images)  # [B, N, D] and the CLS row of block 3's attention, [B, N]
    xi = 0.1
    z, assignment, token_index = merge_and_select(h, cls_attn, xi ** 0.5, xi ** 0.5,
                                                  generator=torch.Generator().manual_seed(0))
    print(f"activations {tuple(h.shape)} -> merged {tuple(z.shape)}: {z.shape[0]} merged samples of "
          f"{z.shape[1]} tokens (CLS and the most attended), {z.numel() / h.numel():.3f} of the values")
    print(f"cluster sizes: {torch.bincount(assignment).tolist()}")
    logits = server(z)  # the server needs no token positions
    logits.sum().backward()  # the gradient reaches the client's blocks through the merge and the gather
    grad = client.blocks[-1].mlp.fc2.weight.grad
    print(f"logits {tuple(logits.shape)}; the client's last block has a gradient: {grad is not None}")


if __name__ == "__main__":
    main()
