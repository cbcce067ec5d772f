"""A compression method of your own, in your own file: every other patch token, registered by name, trained
through the same loop, wire, byte counts and checks as the shipped methods.

    python examples/custom_method.py [--smoke]

A method is a `Method` (what both sides agree on: the schema of what crosses the link, the ratios) and its
two sides: a `ClientCodec` that encodes a batch and decodes the gradient that comes back, and a
`ServerCodec` that decodes a message and encodes the gradient (here the shipped one for token payloads). See the docs, "Add a method, a channel or a
scheme".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from splitvit.compression import ClientCodec, Method, RawServer, register_method
from splitvit.train import compose, fit
from splitvit.wire import Schema, TensorSpec


def kept(N: int) -> torch.Tensor:
    """CLS and every other patch token: positions 0, 1, 3, 5, ..."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, N, 2)])


class StrideClient(ClientCodec):
    def encode(self, h, cls_attn, labels=None):
        sent = h[:, kept(h.shape[1])]  # keeps its graph: the gradient of the kept tokens reaches h
        # the message (the labels are added when training); the gradient comes back raw, for `sent`
        return self.encoded({"z": self.method.to_wire(sent)}, sent, labels)


@register_method
class Stride(Method):
    """Every other patch token, and CLS, in float32; the gradient of those tokens comes back."""

    name = "stride"
    Client, Server = StrideClient, RawServer  # the server's side of any method that sends tokens as `z`

    def activation_schema(self, B, N, D):
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", len(kept(N)), D))})

    def target_ratio(self):
        return 0.5

    def nominal_ratio(self, B, N, D):
        return len(kept(N)) / N


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few steps (CI runs every example so)")
    args = ap.parse_args()
    steps = 4 if args.smoke else 200
    with tempfile.TemporaryDirectory() as d:
        # a method without options of its own needs no config file: method=none, renamed
        quick = ["eval.max_batches=1"] if args.smoke else []  # a quick look at the test set
        s = fit(compose("method=none", "method.name=stride", f"train.max_steps={steps}", "train.progress=false", *quick),
                Path(d))
    print(f"{s['method']}: {s['steps']} steps, accuracy {s['final_val_acc']:.4f}, measured compression "
          f"{s['compression_measured']:.4f} (nominal {33 / 65:.4f}: 33 of 65 tokens, and the labels and headers)")


if __name__ == "__main__":
    main()
