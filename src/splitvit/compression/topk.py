"""Top-K and Randomized Top-K sparsification of the activations, per sample.

Each sample ``h[b]`` (``N*D`` values) keeps ``K = round(compression * N * D)`` of them. On the wire:
the values, in increasing position order, and the positions, as an index list (``uint16`` when
``N*D <= 65536``, else ``int32``) or as a bitmap of ``N*D`` bits, whichever is smaller for this
``K``. The gradient comes back at the kept positions only (``[B, K]``), in the same order.

Nominal vs measured: the nominal ratio counts the values alone (``K / (N*D)``); the measured one
adds the positions (up to ``min(index bytes, N*D/8)`` per sample) and the labels, so uplink bytes
are above nominal, downlink bytes at nominal.
"""

from __future__ import annotations

import torch

from ..channel import ANALOG, DIGITAL
from ..wire import Schema, TensorSpec, WireError
from ..wire.bits import pack_rows, row_bytes, unpack_rows
from .base import ClientCodec, Decoded, Encoded, Method, Seeded, ServerCodec, check_ratio, register_method


class TopKClient(ClientCodec):
    """Sends the kept values and their positions; their gradient comes back at those positions."""

    def select(self, flat: torch.Tensor, K: int, training: bool) -> torch.Tensor:
        """Positions ``[B, K]`` to keep of ``flat [B, N*D]``."""
        return flat.detach().abs().topk(K, dim=1, sorted=False).indices

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        m = self.method
        B, N, D = h.shape
        flat = h.reshape(B, N * D)
        idx = self.select(flat, m.kept, labels is not None).sort(dim=1).values
        values = flat.gather(1, idx)
        fmt, dtype = m.position_format
        if fmt == "bitmap":
            positions = pack_rows(torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True), 1)
        else:
            positions = idx.to(dtype)
        return self.encoded({"values": m.to_wire(values), fmt: positions}, values, labels)


class TopKServer(ServerCodec):
    """Places the values at their positions in zeros; sends back the gradient of the values."""

    def decode(self, message) -> Decoded:
        m = self.method
        n = m.tokens * m.dim
        values = m.from_wire(message["values"])
        B, K = values.shape
        if "_keep" in message:  # repaired after a damaging channel: positions may repeat; dropped values add nothing
            idx, keep = message["index"].to(torch.int64), message["_keep"].to(values.device)
            dense = torch.zeros(B, n, dtype=values.dtype, device=values.device).scatter_add(1, idx, values * keep)
            return self.decoded(values, dense.view(B, m.tokens, m.dim), message)
        if "bitmap" in message:
            mask = unpack_rows(message["bitmap"], 1, n).bool()
            counts = mask.sum(1)
            if not torch.all(counts == K):
                raise WireError(f"bitmap marks {counts.tolist()} positions per sample, expected {K}")
            idx = mask.nonzero()[:, 1].view(B, K)  # row-major: increasing positions, as sent
        else:
            idx = message["index"].to(torch.int64)
            if K > 1 and not torch.all(idx[:, 1:] > idx[:, :-1]):
                raise WireError("positions must be strictly increasing within each sample")
        dense = torch.zeros(B, n, dtype=values.dtype, device=values.device).scatter(1, idx, values)
        return self.decoded(values, dense.view(B, m.tokens, m.dim), message)


@register_method
class TopK(Method):
    """Top-K sparsification per sample: the ``compression`` share of the largest ``|h|`` values and
    their positions (index list or bitmap, the smaller); the gradient comes back at those positions."""

    name = "topk"
    Client, Server = TopKClient, TopKServer

    def __init__(self, compression: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.compression = check_ratio("method.compression", compression)
        self.roles.update(values=ANALOG, index=DIGITAL, bitmap=DIGITAL)

    @property
    def kept(self) -> int:
        """``K``: values kept per sample."""
        return min(max(round(self.compression * self.tokens * self.dim), 1), self.tokens * self.dim)

    @property
    def position_format(self) -> tuple[str, torch.dtype]:
        """``("index", dtype)`` or ``("bitmap", uint8)``: whichever costs fewer bytes per sample."""
        n = self.tokens * self.dim
        dtype = torch.uint16 if n <= 1 << 16 else torch.int32
        index_bytes = self.kept * torch.empty((), dtype=dtype).element_size()
        return ("bitmap", torch.uint8) if row_bytes(n, 1) < index_bytes else ("index", dtype)

    def repair_digital(self, message, erased, counts) -> None:
        """Positions that a channel damaged: an index out of range, or lost, drops its value; a bitmap
        places the values on its first ``K`` set bits, and from its first lost byte on, the order of the
        values is unknown, so the rest of that sample's values are dropped. ``index`` (int64) and
        ``_keep`` replace what was sent."""
        n = self.tokens * self.dim
        K = self.kept  # (the values may travel coded: a codec's codes, not a [B, K] tensor)
        if "bitmap" in message:
            bits = unpack_rows(message.pop("bitmap"), 1, n).bool()
            if "bitmap" in erased:
                lost = erased["bitmap"]
                first = torch.where(lost.any(1), lost.to(torch.int8).argmax(1), lost.shape[1])  # first lost byte
                bits &= torch.arange(n, device=bits.device) < first[:, None] * 8
            use = bits & (bits.cumsum(1) <= K)  # the first K set bits
            key = torch.where(use, torch.arange(n, device=bits.device), n)
            idx = key.topk(K, dim=1, largest=False).values.sort(dim=1).values
            keep = idx < n
        else:
            idx = message["index"].to(torch.int64)
            keep = (idx >= 0) & (idx < n)
            counts["dropped"] += int((~keep).sum())
            if "index" in erased:
                counts["erased"] += int(erased["index"].sum())
                keep &= ~erased["index"]
            message["index"], message["_keep"] = torch.where(keep, idx, 0), keep
            return
        counts["dropped"] += int((~keep).sum())
        message["index"], message["_keep"] = torch.where(keep, idx, 0), keep

    def activation_schema(self, B, N, D) -> Schema:
        fmt, dtype = self.position_format
        if fmt == "bitmap":
            positions = TensorSpec(dtype, ("B", row_bytes(N * D, 1)))
        else:
            positions = TensorSpec(dtype, ("B", self.kept), low=0, high=N * D - 1)
        return Schema({"values": TensorSpec(self.wire_dtype, ("B", self.kept)), fmt: positions})

    def target_ratio(self) -> float:
        return self.compression

    def nominal_ratio(self, B, N, D) -> float:
        return self.kept / (N * D) * self.value_ratio


class RandTopKClient(Seeded, TopKClient):
    """Draws the kept positions (module docstring) from its own generator when training."""

    def select(self, flat, K, training):
        top = super().select(flat, K, training)
        n, alpha = flat.shape[1], self.method.alpha
        if not training or K == n or alpha == 0.0:
            return top
        weights = torch.full_like(flat, alpha / (n - K), dtype=torch.float32)
        weights.scatter_(1, top, (1 - alpha) / K)
        return torch.multinomial(weights, K, replacement=False, generator=self.draw_on(flat.device))


@register_method
class RandTopK(TopK):
    """Randomized Top-K (Zheng et al. 2023): ``K`` positions drawn without replacement, the top-K
    set holding probability mass ``1 - alpha`` and the rest ``alpha``; plain Top-K when evaluating."""

    name = "randtopk"
    Client = RandTopKClient

    def __init__(self, compression: float = 0.1, alpha: float = 0.1, **kwargs):
        super().__init__(compression=compression, **kwargs)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"method.alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
