"""How faithfully ``quant`` carries a cut's gradient, on each grid (README, "Why 2 bits diverge").

    python experiments/quant_grid.py --data /path/to/data [--run RUN_DIR] [--average 24]

One batch of 128 training images of CIFAR-100 classes 50-99 through the committed pretrained model
(new head, split after block 2, as the CPU protocol), or through a run's last checkpoint with
``--run``: the gradient at the cut, quantized at 2 and 4 bits on the ``minmax`` and the ``zero``
grid. Prints, for each, the share of near-zero entries (within ``max / 2**bits`` of zero), the
cosine with the true gradient at the cut, the cosine of the client's weight gradients it gives
with those the true gradient gives, and how much of its error is a per-token feature-mean: a part
the loss cannot see (the true gradient has none; the first line measures it), which
``method.grad_center=true`` drops, with the cosine that is left.

Then, at 4 bits, the client's weight gradients averaged over ``--average`` batches (the same
weights), against the true ones averaged alike: an error that is the same every step (a bias)
stays in the mean; one that changes from batch to batch averages out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from splitvit.compression.quant import Quantizer
from splitvit.data import batches, load_dataset
from splitvit.export import checkpoint_of, joined_state
from splitvit.models import create_model, load_checkpoint, split

CHECKPOINT = Path(__file__).parents[1] / "pretrained" / "vit_nano_patch8_32-cifar100_0-49.safetensors"


def client_grads(client, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    client.zero_grad()
    h, _ = client(x)
    h.backward(grad)
    return torch.cat([p.grad.flatten() for p in client.parameters() if p.grad is not None])


def cut_grad(client, server, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h, _ = client(x)
    z = h.detach().requires_grad_()
    F.cross_entropy(server(z), y).backward()
    return z.grad


def quantized(g: torch.Tensor, bits: int, grid: str, center: bool = False) -> torch.Tensor:
    q = Quantizer(bits, "tensor", grid)
    back = q.decode(q.encode(g), g.shape[1], g.shape[2])
    return back - back.mean(-1, keepdim=True) if center else back


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset.root: the folder that holds cifar-100-python/")
    ap.add_argument("--run", type=Path, default=None, help="a CPU-protocol run directory: its last checkpoint, not the start")
    ap.add_argument("--average", type=int, default=24, help="batches the 4-bit gradients are averaged over")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("vit_nano_patch8_32", num_classes=50)
    if args.run is None:
        load_checkpoint(model, CHECKPOINT, new_head=True)
    else:
        model.load_state_dict(joined_state(checkpoint_of(args.run))[0])
    client, server = split(model, 2)
    data = load_dataset("cifar100", args.data, classes="50:100", normalize="imagenet")
    x, y = next(batches(data.train, 128, 32, 3, shuffle_seed=0))
    g = cut_grad(client, server, x, y)
    print(f"the true gradient's per-token feature-mean: {(g.mean(-1).abs().mean() / g.pow(2).mean().sqrt()).item():.1e} of its RMS")
    true = client_grads(client, x, g)
    for bits in (2, 4):
        for grid in ("minmax", "zero"):
            back = quantized(g, bits, grid)
            near = (g.abs() < g.abs().max() / 2**bits).float().mean().item()
            cut = F.cosine_similarity(back.flatten(), g.flatten(), 0).item()
            error = ((back - g).norm() / g.norm()).item()
            weights = F.cosine_similarity(client_grads(client, x, back), true, 0).item()
            mean = (back - g).mean(-1, keepdim=True)
            unseen = (mean.pow(2).sum() * g.shape[-1] / (back - g).pow(2).sum()).item()
            centered = F.cosine_similarity(client_grads(client, x, quantized(g, bits, grid, center=True)), true, 0).item()
            print(f"{bits} bits, {grid:6}: near-zero entries {near:.3f}; at the cut cosine {cut:.3f}, error {error:.2f} "
                  f"x the norm ({unseen:.0%} of it a feature-mean); client weight gradients cosine {weights:.3f}, "
                  f"centered {centered:.3f}")
    settings = {"minmax, centered": ("minmax", True), "zero": ("zero", False)}
    sums = {name: 0.0 for name in ("true", *settings)}
    stream = batches(data.train, 128, 32, 3, shuffle_seed=1)
    print(f"4 bits, the client's weight gradients averaged over batches (cosine with the true mean):")
    for n in range(1, args.average + 1):
        x, y = next(stream)
        g = cut_grad(client, server, x, y)
        sums["true"] = sums["true"] + client_grads(client, x, g)
        for name, (grid, center) in settings.items():
            sums[name] = sums[name] + client_grads(client, x, quantized(g, 4, grid, center))
        if n in (1, 4, args.average):
            print(f"  {n:3} batches: " + ", ".join(
                f"{name} {F.cosine_similarity(sums[name], sums['true'], 0).item():.3f}" for name in settings))


if __name__ == "__main__":
    main()
