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
from .base import Compressor, check_ratio, register_method


class SubspaceCompressor:
    """State of one direction: the warm-start basis and the error memory."""

    def __init__(self, N: int, D: int, compression: float, energy: float, iters: int, error_feedback: bool, seed: int):
        self.N, self.D = N, D
        self.r_max = max(1, int(compression * N * D / (N + D)))
        self.energy, self.iters, self.error_feedback = energy, iters, error_feedback
        self.generator = torch.Generator().manual_seed(seed)
        self.basis: torch.Tensor | None = None  # [B, D, r_max]
        self.error: torch.Tensor | None = None  # [B, N, D]

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
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
        return m["P"].float() @ m["Q"].float().transpose(1, 2)

    def schema(self, batch, dtype) -> dict[str, TensorSpec]:
        return {"P": TensorSpec(dtype, (batch, self.N, "r")), "Q": TensorSpec(dtype, (batch, self.D, "r"))}

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "basis": self.basis, "error": self.error}

    def load(self, s: dict) -> None:
        self.generator.set_state(s["generator"])
        self.basis, self.error = s["basis"], s["error"]


@register_method
class LowRank(Compressor):
    """Low-rank compression of each sample's ``[N, D]`` activations (and gradient) by subspace iteration,
    at the rank that keeps ``energy`` under the byte cap ``compression`` (module docstring)."""

    name = "lowrank"
    grad_of_tokens = True

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
        args = (self.tokens, self.dim, self.compression, energy, iters, bool(error_feedback))
        self.up = SubspaceCompressor(*args, seed=self.seed)
        self.down = SubspaceCompressor(*args, seed=self.seed + 1)
        if rank is not None:  # a fixed cap instead of the one the byte budget gives
            self.up.r_max = self.down.r_max = min(rank, self.tokens, self.dim)

    def _wire(self, m):
        return {k: self.to_wire(v) for k, v in m.items()}

    def compress(self, h, cls_attn, training):
        if not training:  # compressed evaluation: no error memory, no change of the training basis
            saved = self.up.state()
            self.up.error = None
            m = self.up.encode(h)
            self.up.load(saved)
            return self._wire(m), h
        return self._wire(self.up.encode(h)), h

    def decompress(self, message):
        received = SubspaceCompressor.decode(message).requires_grad_()
        return received, received

    def activation_schema(self, B, N, D) -> Schema:
        return Schema(self.up.schema("B", self.wire_dtype), dims={"r": (1, self.up.r_max)})

    def encode_grad(self, grad):
        return self._wire(self.down.encode(grad))

    def decode_grad(self, message, sent):
        return SubspaceCompressor.decode(message).to(sent.dtype)

    def grad_schema(self, sent) -> Schema:
        return Schema(self.down.schema(sent.shape[0], self.wire_dtype), dims={"r": (1, self.down.r_max)})

    def target_ratio(self) -> float:
        return self.compression

    def nominal_ratio(self, B, N, D) -> float:
        return (N + D) * self.up.r_max / (N * D) * self.value_ratio

    def client_state(self) -> dict:
        return {**super().client_state(), "up": self.up.state()}

    def load_client_state(self, state: dict) -> None:
        super().load_client_state(state)
        self.up.load(state["up"])

    def server_state(self) -> dict:
        return {**super().server_state(), "down": self.down.state()}

    def load_server_state(self, state: dict) -> None:
        super().load_server_state(state)
        self.down.load(state["down"])
