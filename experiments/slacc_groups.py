"""Why SL-ACC at a mean of 2 bits cannot train (README, CPU protocol, "Why 2 bits diverge").

    python experiments/slacc_groups.py --data /path/to/data

One batch of 128 training images of CIFAR-100 classes 50-99 through the committed pretrained model
(new head, split after block 2, as the CPU protocol): the activations at the cut, sent by ``quant``
and by ``slacc`` at the same mean bits. Prints each one's error (relative to the activations' norm)
and cosine, and for ``slacc`` each entropy group's bits and its share of the squared error. Then the
gradient at the cut sent back by each, as ``experiments/quant_grid.py`` measures it: its cosine with
the true one, the share of its error that is a per-token feature-mean (which the loss cannot see),
and the cosine of the client's weight gradients it gives, as sent and centred (``split.grad_center``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from quant_grid import CHECKPOINT, client_grads  # experiments/, beside this script

from splitvit.compression import build_compressor
from splitvit.data import batches, load_dataset
from splitvit.models import create_model, load_checkpoint, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset.root: the folder that holds cifar-100-python/")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("vit_nano_patch8_32", num_classes=50)
    load_checkpoint(model, CHECKPOINT, new_head=True)
    client, server = split(model, 2)
    data = load_dataset("cifar100", args.data, classes="50:100", normalize="imagenet")
    x, y = next(batches(data.train, 128, 32, 3, shuffle_seed=0))
    h, attn = client(x)
    h, attn = h.detach(), attn.detach()
    B, N, D = h.shape
    for compression in (0.0625, 0.125):
        for name in ("quant", "slacc"):
            c = build_compressor(name, 50, N, D, compression=compression)
            message, _ = c.compress(h, attn, True)
            _, z = c.decompress(message)
            error = ((z - h).norm() / h.norm()).item()
            cosine = F.cosine_similarity(z.flatten(), h.flatten(), 0).item()
            line = f"{name:5} at {compression}: error {error:.2f} x the norm, cosine {cosine:.3f}"
            if name == "slacc":  # its groups, lowest entropy first, as the message says
                squared = (z - h).pow(2).reshape(-1, D).sum(0)
                shares = ", ".join(f"{bits} bits {(squared[message['group'] == g].sum() / squared.sum()).item():.0%}"
                                   for g, bits in enumerate(c.q.group_bits))
                line += f"; its groups' share of the squared error: {shares}"
            print(line)
    z = h.clone().requires_grad_()
    F.cross_entropy(server(z), y).backward()
    g = z.grad
    true = client_grads(client, x, g)
    for compression in (0.0625, 0.125):
        for name in ("quant", "slacc"):
            c = build_compressor(name, 50, N, D, compression=compression)
            back = c.decode_grad(c.encode_grad(g), h)
            mean = (back - g).mean(-1, keepdim=True)
            unseen = (mean.pow(2).sum() * D / (back - g).pow(2).sum()).item()
            cosines = [F.cosine_similarity(client_grads(client, x, b), true, 0).item()
                       for b in (back, back - back.mean(-1, keepdim=True))]
            print(f"{name:5} at {compression}, the gradient: cosine {F.cosine_similarity(back.flatten(), g.flatten(), 0).item():.3f} "
                  f"at the cut ({unseen:.0%} of the error a feature-mean); client weight gradients cosine "
                  f"{cosines[0]:.3f}, centred {cosines[1]:.3f}")


if __name__ == "__main__":
    main()
