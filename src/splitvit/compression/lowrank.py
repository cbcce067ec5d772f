"""Low-rank activation and gradient compression by subspace iteration, in the spirit of NSC-SL.

Reconstructed from the NSC-SL paper's abstract (no public code): each sample's ``h[b]`` (``N x D``)
is sent as ``P[b] Q[b]^T`` with ``P [N, r]`` and ``Q [D, r]``. The rank ``r`` is the smallest that
keeps ``energy`` of the spectral energy (sum of squared singular values), capped so that
``(N + D) r`` values fit in ``compression * N * D`` (the byte cap), or at ``rank`` when given. The basis comes from a few
steps of subspace iteration, warm-started from the previous step's basis, with error feedback:
what the last message of a batch position left out is added to the next one before compressing
(as PowerSGD does for weight gradients). The gradient returns compressed the same way, with the
server's own basis and error memory.

Nominal vs measured: nominal is ``(N + D) r / (N D)`` at the cap; measured uses the rank actually
chosen each step (often lower) and adds the labels.
"""

from __future__ import annotations

import torch

from ..channel import ANALOG
from ..wire import Schema, TensorSpec
from .base import ClientCodec, Decoded, Encoded, Method, ServerCodec, check_ratio, register_method


class SubspaceCompressor:
    """State of one direction: the warm-start basis and the error memory."""

    def __init__(self, N: int, D: int, r_max: int, energy: float, iters: int, error_feedback: bool, seed: int):
        self.N, self.D = N, D
        self.r_max = r_max
        self.energy, self.iters, self.error_feedback = energy, iters, error_feedback
        self.generator = torch.Generator().manual_seed(seed)
        self.basis: torch.Tensor | None = None  # [B, D, r_max]
        self.error: torch.Tensor | None = None  # [B, N, D]

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, N, D]`` -> the factors ``P``, ``Q`` of each sample at the chosen rank, with error feedback."""
        x = x.detach().float()
        B = x.shape[0]
        if self.error_feedback and self.error is not None and self.error.shape == x.shape:
            x = x + self.error
        Q = self.basis if self.basis is not None and self.basis.shape[0] == B else None
        if Q is None:
            Q = torch.randn(B, self.D, self.r_max, generator=self.generator).to(x.device)
        for _ in range(self.iters):  # subspace iteration: range of x, then of x^T
            P = torch.linalg.qr(x @ Q).Q  # [B, N, r_max], orthonormal
            Q = x.transpose(1, 2) @ P  # [B, D, r_max]
        self.basis = torch.linalg.qr(Q).Q
        # rotate to singular directions, then keep the rank that holds `energy` in every sample
        U, S, Vh = torch.linalg.svd(Q.transpose(1, 2), full_matrices=False)  # Q^T = U S Vh, U [B, r, r]
        share = (S**2).cumsum(1) / (S**2).sum(1, keepdim=True).clamp_min(1e-30)
        r = int((share < self.energy).sum(1).max()) + 1
        r = min(r, self.r_max)
        P_r = (P @ U[:, :, :r]) * S[:, None, :r]  # [B, N, r]
        Q_r = Vh[:, :r].transpose(1, 2)  # [B, D, r]
        if self.error_feedback:
            self.error = x - P_r @ Q_r.transpose(1, 2)
        return {"P": P_r, "Q": Q_r}

    @staticmethod
    def decode(m: dict[str, torch.Tensor]) -> torch.Tensor:
        """The factors -> ``P Q^T`` for each sample."""
        return m["P"].float() @ m["Q"].float().transpose(1, 2)

    def state(self) -> dict:
        """Its generator, bases and error memory."""
        return {"generator": self.generator.get_state(), "basis": self.basis, "error": self.error}

    def load(self, s: dict) -> None:
        """Restore :meth:`state`."""
        self.generator.set_state(s["generator"])
        self.basis, self.error = s["basis"], s["error"]


class _Subspace:
    """What both sides of LowRank have: one direction's basis and error memory (saved under ``state_key``)."""

    state_key = "up"

    def __init__(self, method: "LowRank", seed: int):
        super().__init__(method)
        self.subspace = method.subspace(seed)

    def send(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: self.method.to_wire(v) for k, v in self.subspace.encode(x).items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), self.state_key: self.subspace.state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.subspace.load(state[self.state_key])


class LowRankClient(_Subspace, ClientCodec):
    """Sends each sample's low-rank factors, with error feedback; decodes the gradient's."""

    def __init__(self, method: "LowRank"):
        super().__init__(method, method.seed)

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        if labels is None:  # compressed evaluation: no error memory, no change of the training basis
            saved = self.subspace.state()
            self.subspace.error = None
            message = self.send(h)
            self.subspace.load(saved)
        else:
            message = self.send(h)
        return self.encoded(message, h, labels, SubspaceCompressor.decode)


class LowRankServer(_Subspace, ServerCodec):
    """Rebuilds the activations from their factors; sends the gradient's factors with its own basis and memory."""

    state_key = "down"

    def __init__(self, method: "LowRank"):
        super().__init__(method, method.seed + 1)

    def decode(self, message) -> Decoded:
        received = SubspaceCompressor.decode(message).requires_grad_()
        return self.decoded(received, received, message, self.send)


@register_method
class LowRank(Method):
    """Low-rank compression of each sample's ``[N, D]`` activations (and gradient) by subspace iteration,
    at the rank that keeps ``energy`` under the byte cap ``compression`` (module docstring)."""

    name = "lowrank"
    sized_by = ("rank",)
    unscheduled = "the bases and error memories it keeps from step to step have the rank that method.compression caps"
    grad_of_tokens = True
    Client, Server = LowRankClient, LowRankServer

    def __init__(self, compression: float = 0.1, energy: float = 0.95, iters: int = 2, error_feedback: bool = True,
                 rank: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.roles.update(P=ANALOG, Q=ANALOG)
        self.compression = check_ratio("method.compression", compression)
        if rank is not None and (not isinstance(rank, int) or rank < 1):
            raise ValueError(f"method.rank must be a positive integer (or null for the byte cap), got {rank}")
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"method.energy must be in (0, 1], got {energy}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"method.iters must be a positive integer, got {iters}")
        self.energy, self.iters, self.error_feedback = energy, iters, bool(error_feedback)
        # the rank cap: what the byte budget allows, or a fixed one
        budget = max(1, int(self.compression * self.tokens * self.dim / (self.tokens + self.dim)))
        self.r_max = budget if rank is None else min(rank, self.tokens, self.dim)

    def subspace(self, seed: int) -> SubspaceCompressor:
        """One direction's compressor, drawing its first basis from ``seed``."""
        return SubspaceCompressor(self.tokens, self.dim, self.r_max, self.energy, self.iters, self.error_feedback, seed)

    def factors_schema(self, batch: int | str) -> Schema:
        """``P [batch, N, r]`` and ``Q [batch, D, r]``, ``r`` at most the cap."""
        dtype = self.wire_dtype
        return Schema({"P": TensorSpec(dtype, (batch, self.tokens, "r")), "Q": TensorSpec(dtype, (batch, self.dim, "r"))},
                      dims={"r": (1, self.r_max)})

    def activation_schema(self, B, N, D) -> Schema:
        return self.factors_schema("B")

    def grad_schema(self, sent) -> Schema:
        return self.factors_schema(sent.shape[0])

    def target_ratio(self) -> float:
        return self.compression

    def nominal_ratio(self, B, N, D) -> float:
        return (N + D) * self.r_max / (N * D) * self.value_ratio
