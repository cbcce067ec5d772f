"""C3-SL (Hsieh et al. 2022): circular-convolution binding of ``R`` samples into one.

Both sides draw the same ``R`` random unit-norm keys of length ``N*D`` from the shared seed (no
bytes). Each group of ``R`` samples is sent as ``s = sum_r x_r (*) k_r`` (circular convolution, by
FFT); the server unbinds ``x_r ~ s (star) k_r`` (circular correlation). The gradient of ``s`` goes
back, and the client back-propagates through the binding exactly (autograd through the FFTs). A
batch that ``R`` does not divide gets a last, smaller group (its missing members are zeros).

``R`` may be given directly, or through ``compression`` as ``R = round(1 / compression)``.

Nominal vs measured: nominal is ``ceil(B/R) / B``; measured adds the labels and a 4-byte count.
"""

from __future__ import annotations

import torch

from ..channel import ANALOG, PROTECTED
from ..wire import Schema, TensorSpec
from .base import ClientCodec, Decoded, Encoded, Method, ServerCodec, check_ratio, register_method


class _Keys:
    """The keys' spectra on the device in use, computed once per side, device and key set (a
    compression schedule changes ``R``, and with it the keys)."""

    def __init__(self):
        self.keys, self.fft = None, None

    def __call__(self, keys: torch.Tensor, device) -> torch.Tensor:
        if self.keys is not keys or self.fft.device != torch.device(device):
            self.keys, self.fft = keys, torch.fft.rfft(keys.to(device), dim=-1)  # [R, n/2 + 1]
        return self.fft


class C3SLClient(ClientCodec):
    """Binds each group of ``R`` samples into one by circular convolution with the keys."""

    def __init__(self, method: "C3SL"):
        super().__init__(method)
        self.key_fft = _Keys()

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        R = self.method.R
        B, N, D = h.shape
        G = -(-B // R)
        x = h.reshape(B, N * D).float()
        x = torch.cat([x, x.new_zeros(G * R - B, N * D)]).view(G, R, N * D)
        s = torch.fft.irfft((torch.fft.rfft(x, dim=-1) * self.key_fft(self.method.keys, h.device)).sum(1), n=N * D, dim=-1)
        return self.encoded({"s": self.method.to_wire(s), "n": torch.tensor([B], dtype=torch.int32)}, s, labels)


class C3SLServer(ServerCodec):
    """Unbinds each sample by circular correlation with its key; the gradient of the bound sum goes back."""

    def __init__(self, method: "C3SL"):
        super().__init__(method)
        self.key_fft = _Keys()

    def decode(self, message) -> Decoded:
        m = self.method
        s = m.from_wire(message["s"])
        n = m.tokens * m.dim
        x = torch.fft.irfft(torch.fft.rfft(s, dim=-1)[:, None] * self.key_fft(m.keys, s.device).conj(), n=n, dim=-1)
        B = int(message["n"])
        return self.decoded(s, x.reshape(-1, m.tokens, m.dim)[:B], message)


@register_method
class C3SL(Method):
    """C3-SL as a method: ``R`` samples bound into one by circular convolution with seeded keys, unbound on
    the server; ``R`` directly, or ``round(1 / compression)`` (module docstring)."""

    name = "c3sl"
    sized_by = ("R",)
    Client, Server = C3SLClient, C3SLServer

    def __init__(self, R: int | None = None, compression: float | None = 0.125, **kwargs):
        super().__init__(**kwargs)
        self.roles.update(s=ANALOG, n=PROTECTED)
        if R is None:  # the common knob: R = round(1 / compression)
            R = max(1, round(1 / check_ratio("method.compression", compression)))
        if not isinstance(R, int) or R < 1:
            raise ValueError(f"method.R must be a positive integer, got {R}")
        self.R = R
        g = torch.Generator().manual_seed(self.seed)
        keys = torch.randn(R, self.tokens * self.dim, generator=g)
        self.keys = keys / keys.norm(dim=1, keepdim=True)  # both sides' keys, from the seed: no bytes

    def activation_schema(self, B, N, D) -> Schema:
        return Schema(
            {"s": TensorSpec(self.wire_dtype, ("G", N * D)), "n": TensorSpec(torch.int32, (1,), low=1, high=B)},
            dims={"G": (1, -(-B // self.R))},
        )

    def check_batch(self, batch_size: int) -> None:
        if self.R > batch_size:
            raise ValueError(f"method.R={self.R} is larger than train.batch_size={batch_size}: no group of R samples can form")

    def target_ratio(self) -> float:
        return 1 / self.R

    def nominal_ratio(self, B, N, D) -> float:
        return -(-B // self.R) / B * self.value_ratio
