"""The channel models as pure functions of tensors and a generator.

An analog payload is a float tensor whose first dimension indexes *blocks* (a sample, a merged sample,
a codebook's sub-space): each block has its own power and, under fading, its own gain. Symbols are
real-valued: one float is one real channel use, so SNR = P / sigma^2 with sigma^2 the variance of the
real noise (no I/Q pairing, which is where 3 dB mistakes come from). A digital payload is a byte tensor
whose first dimension indexes blocks in the same way.
"""

from __future__ import annotations

import math

import torch


def snr_linear(snr_db: float) -> float:
    """A signal-to-noise ratio in dB as a power ratio: ``10 ** (db / 10)``."""
    return 10.0 ** (snr_db / 10.0)


def q_function(x: torch.Tensor) -> torch.Tensor:
    """The Gaussian tail ``Q(x) = P(N(0, 1) > x)``."""
    return 0.5 * torch.erfc(x / math.sqrt(2.0))


def signal_power(x: torch.Tensor, power: str) -> torch.Tensor:
    """P of ``x [R, ...]``, shaped to broadcast against it.

    ``sample``: the mean of x^2 over each block (row of the first dimension), the normalisation the
    SNR is defined by. ``token``: the mean of x^2 over the last dimension (per token for ``[B, N, D]``).
    ``research``: the research code's ``|x|_2 / d`` over the last dimension, a norm rather than a power,
    kept to reproduce its setting: its nominal SNR is not the SNR it applies.
    """
    x = x.float()
    if power == "sample":
        return x.pow(2).flatten(1).mean(1).view(-1, *([1] * (x.dim() - 1)))
    if power == "token":
        return x.pow(2).mean(-1, keepdim=True)
    if power == "research":
        return x.norm(dim=-1, keepdim=True) / x.shape[-1]
    raise ValueError(f"channel.power={power!r} is not one of sample, token, research")


def rayleigh_gains(rows: int, generator: torch.Generator) -> torch.Tensor:
    """``|h|`` for ``h ~ CN(0, 1)``, one per block: ``[rows]`` (so ``E|h|^2 = 1``)."""
    re_im = torch.randn(rows, 2, generator=generator) * math.sqrt(0.5)
    return re_im.pow(2).sum(1).sqrt()


def analog(x: torch.Tensor, snr_db: float, power: str, generator: torch.Generator,
           gains: torch.Tensor | None = None, equalise: bool = True) -> tuple[torch.Tensor, float, float]:
    """``x [R, ...]`` through AWGN, after block fading by ``gains [R]`` when given.

    ``y = g x + n``, ``n ~ N(0, sigma^2)`` with ``sigma^2 = P / 10^(snr_db / 10)`` and ``P`` the
    block's power before fading (so ``snr_db`` is the average SNR, ``E g^2 = 1``). With ``equalise``
    (perfect CSI) the receiver divides by ``g`` (zero forcing). Returns the received tensor (float32),
    and the energies of the received signal ``sum (g x)^2`` and of the noise ``sum n^2``: their ratio
    is the SNR that was applied.
    """
    x = x.float()
    sigma = (signal_power(x, power) / snr_linear(snr_db)).sqrt()
    noise = torch.randn(x.shape, generator=generator) * sigma
    g = gains.view(-1, *([1] * (x.dim() - 1))) if gains is not None else None
    faded = x * g if g is not None else x
    y = faded + noise
    if g is not None and equalise:
        y = y / g
    return y, faded.double().pow(2).sum().item(), noise.double().pow(2).sum().item()


def flip_bits(data: torch.Tensor, p: torch.Tensor | float, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Bytes ``data [R, n]`` (uint8) with each bit flipped independently with probability ``p`` (a number,
    or ``[R]``: one per block). Returns the received bytes and the number of flipped bits."""
    R, n = data.shape
    p = torch.as_tensor(p, dtype=torch.float32).reshape(-1, 1).expand(R, 1)
    flips = torch.rand(R, n * 8, generator=generator) < p
    weights = torch.tensor([1 << b for b in range(8)], dtype=torch.int32)
    mask = (flips.view(R, n, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)
    return data ^ mask, int(flips.sum())


def bpsk_error_rate(snr_db: float, gains: torch.Tensor | None = None) -> torch.Tensor:
    """Bit error rate of uncoded BPSK with real symbols at ``snr_db`` (per block, with fading gains):
    ``Q(sqrt(g^2 SNR))``. A sign decision, so equalisation does not change it."""
    g2 = gains.pow(2) if gains is not None else torch.ones(1)
    return q_function((g2 * snr_linear(snr_db)).sqrt())


def packet_losses(total: int, packet_bytes: int, loss: float, arq: bool,
                  generator: torch.Generator) -> tuple[list[tuple[int, int]], int, int]:
    """A payload of ``total`` bytes sent in packets of ``packet_bytes`` (the last one shorter), each
    transmission lost with probability ``loss``.

    With ``arq`` every lost transmission is repeated until it arrives. Returns the byte spans
    ``[start, end)`` that never arrived (none with ARQ), the transmissions lost, and the bytes
    retransmitted (each lost transmission of a packet costs that packet's size once more).
    """
    if total == 0 or loss == 0.0:
        return [], 0, 0
    n = -(-total // packet_bytes)
    sizes = torch.full((n,), packet_bytes, dtype=torch.int64)
    sizes[-1] = total - packet_bytes * (n - 1)
    lost = torch.rand(n, generator=generator) < loss
    if not arq:
        starts = torch.nonzero(lost).flatten() * packet_bytes
        spans = [(int(s), int(min(s + packet_bytes, total))) for s in starts]
        return _merge(spans), int(lost.sum()), 0
    lost_tx, resent = 0, 0
    pending = lost
    while pending.any():  # each round, the packets still missing are sent again; each is lost again w.p. loss
        lost_tx += int(pending.sum())
        resent += int(sizes[pending].sum())
        pending = pending & (torch.rand(n, generator=generator) < loss)
    return [], lost_tx, resent


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out
