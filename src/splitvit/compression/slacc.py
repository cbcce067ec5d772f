"""Channel-grouped quantization by channel entropy, in the spirit of SL-ACC.

Reconstructed from the SL-ACC paper's abstract (no public code). Each step the sender estimates the
entropy of every channel (a ``bins``-bin histogram of its ``B*N`` values), sorts the channels by
entropy and cuts them into ``groups`` equal groups. Group ``g`` (0 = lowest entropy) is quantized
uniformly with ``bits`` plus an offset symmetric around zero (-1/+1 for two groups, -2/-1/+1/+2 for
four), clamped to [1, 8]: more bits where the channel carries more information, ``bits`` on average. On the wire: each channel's group
(``uint8 [D]``), ``lo`` and ``scale`` per channel (float32), and each group's codes, bit-packed per
sample. The gradient comes back compressed the same way (its own entropies).

The mean ``bits`` may be given directly, or through ``compression`` as ``round(32 * compression)``.

Nominal vs measured: nominal is the mean bits per value over 32; measured adds the per-channel
header (``9 D`` bytes a message) and the labels.
"""

from __future__ import annotations

import math

import torch

from ..channel import DIGITAL, PROTECTED
from ..wire import Schema, TensorSpec, WireError
from ..wire.bits import erased_codes, pack_rows, row_bytes, unpack_rows
from .base import ClientCodec, Decoded, Encoded, Method, ServerCodec, bits_for, register_method


def channel_entropy(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``x [M, D]`` -> entropy in bits of each channel's ``bins``-bin histogram, ``[D]``."""
    lo, hi = x.amin(0), x.amax(0)
    idx = ((x - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp_(0, bins - 1)  # [M, D]
    counts = torch.zeros(bins, x.shape[1], device=x.device).scatter_add_(0, idx, torch.ones_like(x))
    p = counts / x.shape[0]
    return -(p * torch.log2(p.clamp_min(1e-30))).sum(0)


class EntropyGroupedQuantizer:
    """SL-ACC's quantiser: channels ranked by the entropy of their values, cut into ``groups``, and each
    group quantised with more bits the higher its entropy, ``bits`` on average."""
    def __init__(self, dim: int, bits: int, groups: int, bins: int):
        if not isinstance(groups, int) or not 1 <= groups <= dim:
            raise ValueError(f"method.groups must be an integer in [1, {dim}], got {groups}")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"method.bits must be an integer in [1, 8], got {bits}")
        self.dim, self.bits, self.groups, self.bins = dim, bits, groups, bins
        # offsets symmetric around the mean, one bit apart: 2 groups -1/+1, 3 groups -1/0/+1, 4 groups -2/-1/+1/+2
        offsets = [math.floor(d) if d < 0 else math.ceil(d) for d in (g - (groups - 1) / 2 for g in range(groups))]
        self.group_bits = [min(max(bits + o, 1), 8) for o in offsets]
        # equal groups: the first D % groups groups take one channel more
        self.sizes = [dim // groups + (g < dim % groups) for g in range(groups)]

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Floats -> each channel group's codes at its bits, with the grid of each group."""
        x = x.detach().float()
        B, N, D = x.shape
        flat = x.reshape(B * N, D)
        order = channel_entropy(flat, self.bins).argsort(stable=True)  # low entropy first
        group = torch.empty(D, dtype=torch.uint8, device=x.device)
        group[order] = torch.repeat_interleave(torch.arange(self.groups, device=x.device), torch.tensor(self.sizes, device=x.device)).to(torch.uint8)
        lo, hi = flat.amin(0), flat.amax(0)
        message = {"group": group, "lo": lo}
        scales = torch.ones(D, device=x.device)
        for g, b in enumerate(self.group_bits):  # a handful of groups, each a whole-tensor op
            ch = (group == g).nonzero().squeeze(1)
            levels = (1 << b) - 1
            scale = torch.where(hi[ch] > lo[ch], (hi[ch] - lo[ch]) / levels, torch.ones_like(lo[ch]))
            scales[ch] = scale
            codes = ((x[:, :, ch] - lo[ch]) / scale).round_().clamp_(0, levels).reshape(B, -1)
            message[f"codes{g}"] = pack_rows(codes, b)
        message["scale"] = scales
        return message

    def decode(self, m: dict[str, torch.Tensor], N: int) -> torch.Tensor:
        """Codes and grids -> the floats they stand for."""
        group = m["group"].long()
        B = m["codes0"].shape[0]
        out = torch.empty(B, N, self.dim, device=group.device)
        for g, b in enumerate(self.group_bits):
            ch = (group == g).nonzero().squeeze(1)
            if ch.numel() != self.sizes[g]:
                raise WireError(f"group {g} has {ch.numel()} channels, expected {self.sizes[g]}")
            codes = unpack_rows(m[f"codes{g}"], b, N * ch.numel()).float().view(B, N, -1)
            values = codes * m["scale"][ch] + m["lo"][ch]
            if f"_erased{g}" in m:  # codes a lossy channel never delivered (see repair): zero
                values = values.masked_fill(m[f"_erased{g}"].view_as(values), 0.0)
            out[:, :, ch] = values
        return out

    def repair(self, m: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], N: int, counts: dict[str, int]) -> None:
        """Every bit pattern is a valid code, so bit errors need nothing; lost bytes mark their codes erased."""
        for g, b in enumerate(self.group_bits):
            if f"codes{g}" in erased:
                m[f"_erased{g}"] = erased_codes(erased[f"codes{g}"], b, N * self.sizes[g])
                counts["erased"] += int(m[f"_erased{g}"].sum())

    def schema(self, batch, N: int) -> dict[str, TensorSpec]:
        """The message's tensors for a batch."""
        specs = {
            "group": TensorSpec(torch.uint8, (self.dim,), low=0, high=self.groups - 1),
            "lo": TensorSpec(torch.float32, (self.dim,)),
            "scale": TensorSpec(torch.float32, (self.dim,), low=0.0),
        }
        for g, b in enumerate(self.group_bits):
            specs[f"codes{g}"] = TensorSpec(torch.uint8, (batch, row_bytes(N * self.sizes[g], b)))
        return specs

    def mean_bits(self) -> float:
        """Bits per value, averaged over the channels."""
        return sum(b * n for b, n in zip(self.group_bits, self.sizes)) / self.dim


class SLACCClient(ClientCodec):
    """Quantizes the activations by channel groups; decodes the gradient, grouped by its own entropies."""

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        q = self.method.q
        return self.encoded(q.encode(h), h, labels, lambda reply: q.decode(reply, h.shape[1]))


class SLACCServer(ServerCodec):
    """Decodes the activations; quantizes their gradient the same way."""

    def decode(self, message) -> Decoded:
        q = self.method.q
        received = q.decode(message, self.method.tokens).requires_grad_()
        return self.decoded(received, received, message, q.encode)


@register_method
class SLACC(Method):
    """SL-ACC-style quantization: channels grouped by entropy, more bits to the groups that carry more,
    ``bits`` on average (module docstring)."""

    name = "slacc"
    sized_by = ("bits",)
    grad_of_tokens = True
    Client, Server = SLACCClient, SLACCServer

    def __init__(self, bits: int | None = None, compression: float | None = 0.125, groups: int = 4, bins: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.q = EntropyGroupedQuantizer(self.dim, bits_for(compression) if bits is None else bits, groups, bins)
        self.roles.update(group=PROTECTED, lo=PROTECTED, scale=PROTECTED, **{f"codes{g}": DIGITAL for g in range(self.q.groups)})

    def repair_digital(self, message, erased, counts) -> None:
        self.q.repair(message, erased, self.tokens, counts)

    def activation_schema(self, B, N, D) -> Schema:
        return Schema(self.q.schema("B", N))

    def grad_schema(self, sent) -> Schema:
        return Schema(self.q.schema(sent.shape[0], sent.shape[1]))

    def target_ratio(self) -> float:
        return self.q.mean_bits() / 32

    def nominal_ratio(self, B, N, D) -> float:
        return self.q.mean_bits() / 32
