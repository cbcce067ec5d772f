"""FedLite (Wang et al. 2022): product quantization of the activations, with gradient correction.

Each token vector (``D`` values) is cut into ``q`` sub-vectors of ``D/q``; for each of the ``q``
positions, K-means over the batch's sub-vectors (at most ``fit_points`` of them, drawn at random,
to bound its cost; every sub-vector is then coded) gives ``L`` centroids. On the wire: the codebook
(``[q, L, D/q]``) and each token's ``q`` codes, ``ceil(log2 L)`` bits each, packed per sample. The
gradient returns product-quantized the same way (the server runs its own K-means on it).

FedLite's correction: the client back-propagates ``g + lam * (h - h_q)`` instead of the gradient ``g``
of the quantized activations ``h_q``, which pulls the activations towards their codewords.

Nominal vs measured: nominal is ``q * ceil(log2 L) / (32 D)`` (the codes); measured adds the
codebook, ``4 L D`` bytes a message, large for small batches, and the labels.
"""

from __future__ import annotations

import math

import torch

from ..channel import ANALOG, DIGITAL
from ..wire import Schema, TensorSpec
from ..wire.bits import erased_codes, pack_rows, row_bytes, unpack_rows
from .base import ClientCodec, Decoded, Encoded, Method, Seeded, ServerCodec, register_method
from .kmeans import kmeans


class _Corrected(torch.autograd.Function):
    """Forward: ``h_q``. Backward: ``g + lam * (h - h_q)`` into ``h`` (FedLite, Sec. 4)."""

    @staticmethod
    def forward(ctx, h, hq, lam):
        ctx.save_for_backward(h, hq)
        ctx.lam = lam
        return hq.clone()

    @staticmethod
    def backward(ctx, g):
        h, hq = ctx.saved_tensors
        return g + ctx.lam * (h - hq), None, None


class ProductQuantizer:
    """Product quantization of ``[B, N, D]`` with ``q`` codebooks of ``L`` centroids, fitted per message;
    the caller's generator draws the fitting sample and the K-means seeds."""

    def __init__(self, dim: int, q: int, L: int, max_iter: int, fit_points: int = 2048):
        if not isinstance(q, int) or q < 1 or dim % q:
            raise ValueError(f"method.q must be a positive divisor of the width {dim}, got {q}")
        if not isinstance(L, int) or not 2 <= L <= 256:
            raise ValueError(f"method.L must be an integer in [2, 256] (codes are at most 8 bits), got {L}")
        self.q, self.L, self.sub = q, L, dim // q
        self.bits = math.ceil(math.log2(L))
        self.max_iter = max_iter
        if not isinstance(fit_points, int) or fit_points < L:
            raise ValueError(f"method.fit_points must be an integer >= L={L}, got {fit_points}")
        self.fit_points = fit_points

    def encode(self, x: torch.Tensor, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``x [B, N, D]`` -> (message, the reconstruction ``[B, N, D]``)."""
        B, N, D = x.shape
        sub = x.detach().float().reshape(B * N, self.q, self.sub).transpose(0, 1)  # q problems of B*N points
        fit = sub
        if B * N > self.fit_points:  # fit the codebooks on a random sample, then code every sub-vector
            pick = torch.randperm(B * N, generator=generator, device=x.device)[: self.fit_points]
            fit = sub[:, pick]
        L = min(self.L, fit.shape[1])
        centroids = kmeans(fit, L, generator, self.max_iter).centroids  # all q codebooks in one call
        codes = torch.cdist(sub, centroids).argmin(-1)  # [q, B*N]
        codebook = torch.zeros(self.q, self.L, self.sub, device=x.device)
        codebook[:, :L] = centroids
        codes = codes.transpose(0, 1).reshape(B, N * self.q)
        message = {"codebook": codebook, "codes": pack_rows(codes, self.bits)}
        return message, self.decode(message, N)

    def decode(self, m: dict[str, torch.Tensor], N: int) -> torch.Tensor:
        """A message's codebook and packed codes -> the reconstruction ``[B, N, D]`` (erased
        sub-vectors zero)."""
        codebook = m["codebook"].float()
        B = m["codes"].shape[0]
        codes = unpack_rows(m["codes"], self.bits, N * self.q).reshape(B * N, self.q)
        parts = codebook[torch.arange(self.q, device=codes.device), codes]  # [B*N, q, D/q]
        if "_erased" in m:  # sub-vectors a lossy channel never delivered (see repair): zero
            parts = parts.masked_fill(m["_erased"].reshape(B * N, self.q, 1), 0.0)
        return parts.reshape(B, N, self.q * self.sub)

    def repair(self, m: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], N: int, counts: dict[str, int]) -> None:
        """A code flipped past the codebook's last entry (``L`` not a power of two) is clamped to it;
        lost bytes mark their sub-vectors erased."""
        n = N * self.q
        codes = unpack_rows(m["codes"], self.bits, n)
        over = codes >= self.L
        if over.any():
            counts["clamped"] += int(over.sum())
            m["codes"] = pack_rows(codes.clamp(max=self.L - 1), self.bits)
        if "codes" in erased:
            m["_erased"] = erased_codes(erased["codes"], self.bits, n)
            counts["erased"] += int(m["_erased"].sum())

    def schema(self, batch, N: int, dtype: torch.dtype) -> dict[str, TensorSpec]:
        """The message's tensors for a batch of ``batch`` samples of ``N`` tokens."""
        return {
            "codebook": TensorSpec(dtype, (self.q, self.L, self.sub)),
            "codes": TensorSpec(torch.uint8, (batch, row_bytes(N * self.q, self.bits))),
        }


class _Quantizing(Seeded):
    """What both sides of FedLite do: product-quantize with K-means that draws from the side's own generator."""

    def quantize(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        message, xq = self.method.pq.encode(x, self.draw_on(x.device))
        return {"codebook": self.method.to_wire(message["codebook"]), "codes": message["codes"]}, xq


class FedLiteClient(_Quantizing, ClientCodec):
    """Product-quantizes the activations; back-propagates the decoded gradient with FedLite's correction."""

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        m = self.method
        message, hq = self.quantize(h)
        sent = _Corrected.apply(h, hq.to(h.dtype), m.lam)
        return self.encoded(message, sent, labels, lambda reply: m.pq.decode(reply, h.shape[1]))


class FedLiteServer(_Quantizing, ServerCodec):
    """Decodes the activations; product-quantizes their gradient with K-means of its own."""

    state_key = "grad_generator"

    def __init__(self, method: "FedLite"):
        super().__init__(method, method.seed + 1)

    def decode(self, message) -> Decoded:
        received = self.method.pq.decode(message, self.method.tokens).requires_grad_()
        return self.decoded(received, received, message, lambda grad: self.quantize(grad)[0])


@register_method
class FedLite(Method):
    """FedLite as a method: product quantization of each token into ``q`` sub-vectors of ``L`` centroids
    each, both ways, with the gradient correction of strength ``lam`` (module docstring)."""

    name = "fedlite"
    grad_of_tokens = True
    Client, Server = FedLiteClient, FedLiteServer

    def __init__(self, q: int = 8, L: int = 64, lam: float = 0.1, max_iter: int = 10, fit_points: int = 2048, **kwargs):
        super().__init__(**kwargs)
        if lam < 0:
            raise ValueError(f"method.lam (FedLite's lambda) must be >= 0, got {lam}")
        self.lam = float(lam)
        self.pq = ProductQuantizer(self.dim, q, L, max_iter, fit_points)  # both directions: the same shapes
        self.roles.update(codebook=ANALOG, codes=DIGITAL)

    def repair_digital(self, message, erased, counts) -> None:
        self.pq.repair(message, erased, self.tokens, counts)

    def activation_schema(self, B, N, D) -> Schema:
        return Schema(self.pq.schema("B", N, self.wire_dtype))

    def grad_schema(self, sent) -> Schema:
        return Schema(self.pq.schema(sent.shape[0], sent.shape[1], self.wire_dtype))

    def target_ratio(self) -> float:
        return self.pq.q * self.pq.bits / (32 * self.dim)

    def nominal_ratio(self, B, N, D) -> float:
        return self.target_ratio()
