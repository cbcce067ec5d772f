"""Uniform ``b``-bit quantization of activations and gradients, bit-packed on the wire.

Codes are ``round((x - lo) / scale)`` in ``[0, 2**b - 1]`` with ``lo``/``scale`` (float32) per tensor
or per token. Each sample's codes are packed into ``ceil(N*D*b / 8)`` bytes. The client
back-propagates the server's (dequantized) gradient straight into ``h`` (straight-through); the
gradient travels quantized the same way.

``bits`` may be given directly, or through ``compression`` as ``round(32 * compression)``,
clamped to [1, 8] (so ``compression`` above 0.25 sends 8 bits: use ``wire.dtype`` for 16).

The grid (``grid`` for the activations, ``grad_grid`` for the gradients):

- ``minmax`` (default): ``2**b - 1`` steps from the minimum to the maximum. Every step serves the
  values, but 0.0 is in general not on the grid.
- ``zero``: affine quantization with an exact zero, as PyTorch's and TFLite's (Jacob et al., CVPR
  2018): the range stretched to hold 0 and its origin moved a whole number of steps below it, so
  0.0 comes back as exactly 0.0. A cut's gradient is mostly near zero with a few large entries: on
  a 2-bit min-max grid each near-zero entry comes back as a level about a sixth of the range from
  zero (an error four times the gradient's norm), on this grid as 0 (an error below its norm).
  Activations lose levels to the stretch instead. Which matters, at which bit width, is measured in
  the docs (docs/explanation/results.md, "Why 2 bits diverge").

Every value is within half a step of its code on either grid.

On the ``minmax`` grid most of a 2-bit gradient's error is a per-token mean over the features (the
near-zero entries all come back as the same level), which the loss cannot see and the client can
drop: ``split.grad_center=true`` (see :mod:`splitvit.compression.base`).

Nominal vs measured: nominal is ``b / 32``; measured adds the scales (8 bytes per tensor, or per
token with ``granularity=token``: ``64 / (D * b)`` more) and the labels.
"""

from __future__ import annotations

import torch

from ..channel import DIGITAL, PROTECTED
from ..wire import Schema, TensorSpec
from ..wire.bits import erased_codes, pack_rows, row_bytes, unpack_rows
from .base import ClientCodec, Decoded, Encoded, Method, ServerCodec, bits_for, register_method

GRANULARITIES = ("tensor", "token")


GRIDS = ("minmax", "zero")


def quantize(x: torch.Tensor, levels: int, per_row: bool, grid: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` on a grid of ``levels + 1`` codes (module docstring): (codes as floats, ``lo``, ``scale``), one
    ``lo``/``scale`` for the tensor (``[1]``) or, ``per_row``, one per row of the last dimension."""
    if per_row:
        lo, hi = x.amin(-1), x.amax(-1)
    else:
        lo, hi = x.min().reshape(1), x.max().reshape(1)
    if grid == "zero":  # the range holds 0; the origin a whole number of steps below it
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
    expand = (lambda t: t[..., None]) if per_row else (lambda t: t)  # noqa: E731
    if grid == "zero":
        zero = (-lo / scale).round_()  # the code of 0.0, which decodes as zero * scale + lo == 0.0 exactly
        lo = -(zero * scale)
        codes = x / expand(scale) + expand(zero)
    else:
        codes = (x - expand(lo)) / expand(scale)
    return codes.round_().clamp_(0, levels), lo, scale


def dequantize(codes: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The values of ``codes`` (``lo`` and ``scale`` shaped to broadcast against them)."""
    return codes * scale + lo


class Quantizer:
    """Pack ``x [B, N, D]`` into ``{codes, lo, scale}`` and back."""

    def __init__(self, bits: int, granularity: str, grid: str = "minmax", key: str = "method.grid"):
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"method.bits must be an integer in [1, 8] (0 bits carry nothing; use wire.dtype for 16), got {bits}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"method.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        if grid not in GRIDS:
            raise ValueError(f"{key} must be one of {', '.join(GRIDS)}, got {grid!r}")
        self.bits, self.granularity, self.grid = bits, granularity, grid
        self.levels = (1 << bits) - 1

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Floats -> bit-packed codes and the grid's scale and offset (per tensor or per token)."""
        x = x.detach().float()
        B, N, D = x.shape
        codes, lo, scale = quantize(x, self.levels, self.granularity == "token", self.grid)
        return {"codes": pack_rows(codes.reshape(B, N * D), self.bits), "lo": lo, "scale": scale}

    def decode(self, m: dict[str, torch.Tensor], N: int, D: int) -> torch.Tensor:
        """Codes and the grid -> the floats they stand for."""
        codes = m["codes"]
        x = unpack_rows(codes, self.bits, N * D).float().view(codes.shape[0], N, D)
        x = dequantize(x, m["lo"] if self.granularity == "tensor" else m["lo"][..., None],
                       m["scale"] if self.granularity == "tensor" else m["scale"][..., None])
        if "_erased" in m:  # codes a lossy channel never delivered (see repair): zero
            x = x.masked_fill(m["_erased"].view_as(x), 0.0)
        return x

    def repair(self, m: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], n: int, counts: dict[str, int]) -> None:
        """Every bit pattern is a valid code, so bit errors need nothing; lost bytes mark their codes erased."""
        if "codes" in erased:
            m["_erased"] = erased_codes(erased["codes"], self.bits, n)
            counts["erased"] += int(m["_erased"].sum())

    def schema(self, batch: int | str, N: int, D: int, prefix: str = "") -> dict[str, TensorSpec]:
        """The message's tensors for activations (or gradients) of shape ``shape``."""
        scale_shape = (1,) if self.granularity == "tensor" else (batch, N)
        return {
            f"{prefix}codes": TensorSpec(torch.uint8, (batch, row_bytes(N * D, self.bits))),
            f"{prefix}lo": TensorSpec(torch.float32, scale_shape),
            f"{prefix}scale": TensorSpec(torch.float32, scale_shape, low=0.0),
        }


class QuantClient(ClientCodec):
    """Sends the codes of the activations; the gradient's codes come back (straight-through into ``h``)."""

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        q = self.method.grad_q
        return self.encoded(self.method.q.encode(h), h, labels, lambda reply: q.decode(reply, h.shape[1], h.shape[2]))


class QuantServer(ServerCodec):
    """Dequantizes the activations; quantizes their gradient on its own grid (``grad_grid``)."""

    def decode(self, message) -> Decoded:
        m = self.method
        received = m.q.decode(message, m.tokens, m.dim).requires_grad_()
        return self.decoded(received, received, message, m.grad_q.encode)


@register_method
class Quant(Method):
    """Uniform ``bits``-bit quantization of the activations and the gradient, bit-packed, one scale per
    tensor or per token; ``bits`` directly or ``round(32 * compression)`` (module docstring)."""

    name = "quant"
    sized_by = ("bits",)
    grad_of_tokens = True
    Client, Server = QuantClient, QuantServer

    def __init__(self, bits: int | None = None, compression: float | None = 0.125, granularity: str = "tensor",
                 grid: str = "minmax", grad_grid: str = "minmax", **kwargs):
        super().__init__(**kwargs)
        bits = bits_for(compression) if bits is None else bits
        self.q = Quantizer(bits, granularity, grid)
        self.grad_q = Quantizer(bits, granularity, grad_grid, key="method.grad_grid")
        self.roles.update(codes=DIGITAL, lo=PROTECTED, scale=PROTECTED)

    def repair_digital(self, message, erased, counts) -> None:
        self.q.repair(message, erased, self.tokens * self.dim, counts)

    def activation_schema(self, B, N, D) -> Schema:
        return Schema(self.q.schema("B", N, D))

    def grad_schema(self, sent) -> Schema:
        return Schema(self.grad_q.schema(sent.shape[0], sent.shape[1], sent.shape[2]))

    def target_ratio(self) -> float:
        return self.q.bits / 32

    def nominal_ratio(self, B, N, D) -> float:
        return self.q.bits / 32
