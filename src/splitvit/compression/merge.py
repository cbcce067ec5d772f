"""ADC's kernels (Alvetreti et al., arXiv 2509.15058; docs/architecture.md, "ADC, exactly"): pure functions of
tensors, batched, no loop over samples or clusters. :class:`~splitvit.compression.adc.ADC` wires
them into a split model; :meth:`~splitvit.compression.base.ClientCodec.eval_encode` uses
:func:`select_tokens` for the ``tokens`` evaluation mode of every method.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .kmeans import kmeans


def check_ratio(name: str, value: float) -> float:
    """``value`` as a float in ``(0, 1]``, or ``ValueError`` naming ``name``."""
    if value is None or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return float(value)


FEATURES = ("attention", "cls", "mean")


ROUNDINGS = ("round", "floor")
# how a target xi splits into (samples, tokens): the paper's sqrt(xi) each, or the public research code's
# split until 2025-09-20 (two days after the paper): xi^(1/5) on samples, xi^(4/5) on tokens
SPLITS = {"sqrt": (0.5, 0.5), "fifth": (0.2, 0.8)}


def budgets(B: int, N: int, batch_ratio: float, token_ratio: float, rounding: str = "round") -> tuple[int, int]:
    """Merged samples ``T`` in ``[1, B]`` and kept tokens ``k`` in ``[1, N]``: ``round(batch_ratio * B)``
    and ``round(token_ratio * N)``, or with ``rounding="floor"`` (the research code's ``int()``)
    ``int(batch_ratio * B)``, at least 2 merged samples, and ``int(token_ratio * N)``."""
    if rounding == "floor":
        return min(max(int(batch_ratio * B), 2), B), min(max(int(token_ratio * N), 1), N)
    if rounding != "round":
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return min(max(round(batch_ratio * B), 1), B), min(max(round(token_ratio * N), 1), N)


def balanced_ratios(compression: float, split: str = "sqrt") -> tuple[float, float]:
    """A target ``xi`` split into (batch ratio, token ratio): the paper's ``sqrt(xi)`` on each (``split="sqrt"``),
    or ``xi^(1/5)`` on samples and ``xi^(4/5)`` on tokens (``"fifth"``, the research code's earlier split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    xi = check_ratio("compression", compression)
    a, b = SPLITS[split]
    return xi ** a, xi ** b


def cluster_mean(x: torch.Tensor, assignment: torch.Tensor, T: int) -> torch.Tensor:
    """Mean of ``x [B, ...]`` over each cluster: ``[T, ...]``. Differentiable in ``x``; clusters must be non-empty."""
    counts = torch.bincount(assignment, minlength=T).to(x.dtype)
    sums = torch.zeros((T, *x.shape[1:]), dtype=x.dtype, device=x.device).index_add(0, assignment, x)
    return sums / counts.view(T, *([1] * (x.dim() - 1)))



def merged_targets(labels: torch.Tensor, assignment: torch.Tensor, num_classes: int, T: int) -> torch.Tensor:
    """The soft labels ``[T, num_classes]`` of ``T`` merged samples: the mean of their members' one-hot
    labels (``labels``, ``assignment``: ``[B]`` each). Sums of ones divided by a count, so the same bits
    wherever they are computed (client, server, inspector)."""
    return cluster_mean(F.one_hot(labels.long(), num_classes).float(), assignment.long(), T)


def merge_and_select(
    h: torch.Tensor,
    cls_attn: torch.Tensor,
    batch_ratio: float,
    token_ratio: float,
    feature: str = "attention",
    generator: torch.Generator | None = None,
    rounding: str = "round",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ADC's double compression of one batch (docs/architecture.md, "ADC, exactly", steps 2-3).

    Args:
        h: activations ``[B, N, D]`` after the last client block, token 0 is CLS.
        cls_attn: CLS attention row of that block, averaged over heads, ``[B, N]``.
        batch_ratio: ``T = round(batch_ratio * B)`` merged samples, clamped to ``[1, B]``.
        token_ratio: ``k = round(token_ratio * N)`` kept tokens (CLS included), clamped to ``[1, N]``.
        feature: what K-means clusters: ``attention`` (the CLS attention row, the paper's best),
            ``cls`` (the CLS token of ``h``) or ``mean`` (the mean token of ``h``).
        generator: seeds K-means++.
        rounding: ``round`` (the default) or ``floor``: how the budgets are made whole (:func:`budgets`).

    Returns:
        z: ``[T, k, D]``, ``z[t]`` = mean of the members' ``h`` at the cluster's kept tokens;
            differentiable in ``h``.
        assignment: ``[B]`` long, cluster of each sample; every id in ``[0, T)`` is used.
        token_index: ``[T, k]`` long, kept token positions in increasing order; column 0 is CLS.
            Scores are the cluster's mean CLS attention, whatever the clustering feature.
    """
    if h.dim() != 3:
        raise ValueError(f"h must be [B, N, D], got shape {tuple(h.shape)}")
    B, N, D = h.shape
    if cls_attn.shape != (B, N):
        raise ValueError(f"cls_attn must be [B, N] = [{B}, {N}] to match h, got {tuple(cls_attn.shape)}")
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {', '.join(FEATURES)}, got {feature!r}")
    T, k = budgets(B, N, check_ratio("batch_ratio", batch_ratio), check_ratio("token_ratio", token_ratio), rounding)

    attn = cls_attn.detach().float()
    if feature == "attention":
        x = attn
    elif feature == "cls":
        x = h.detach()[:, 0].float()
    else:
        x = h.detach().float().mean(1)
    with torch.autocast(h.device.type, enabled=False):  # K-means in float32 even under bf16 autocast
        assignment = kmeans(x, T, generator).assignment

    # token scores: the cluster's centroid in attention space; CLS is always kept
    scores = cluster_mean(attn, assignment, T)
    patches = scores[:, 1:].topk(k - 1, dim=1).indices.sort(dim=1).values + 1
    token_index = torch.cat([torch.zeros(T, 1, dtype=torch.long, device=h.device), patches], dim=1)

    # row b*N + n of h viewed as [B*N, D] is token n of sample b; member b's j-th kept token adds into
    # row t*k + j of the merged batch, t its cluster
    rows = (token_index[assignment] + (torch.arange(B, device=h.device) * N)[:, None]).reshape(-1)
    slots = (assignment[:, None] * k + torch.arange(k, device=h.device)).reshape(-1)
    counts = torch.bincount(assignment, minlength=T).to(h.dtype)
    return _MergeKept.apply(h, rows, slots, counts, k), assignment, token_index


class _MergeKept(torch.autograd.Function):
    """``z[t, j] = mean over the members b of cluster t of h[b, token_index[t, j]]``, as row operations on
    ``h`` viewed as ``[B*N, D]``: one ``index_select`` of the kept rows (``B*k*D`` work, not ``B*N*D``), one
    ``index_add_`` into the ``T*k`` merged rows. Autograd's own backward of a gather is a zero-filled
    ``[B, N, D]`` and a ``scatter_add_`` into it; here the gradient is one ``index_select`` that writes each
    of its ``B*N`` rows once, from the ``T*k`` rows of ``grad / counts`` or from one zero row (a dropped
    token). Every kept ``(b, token)`` row is distinct, so nothing needs adding. Same values as the
    gather-then-:func:`cluster_mean` it replaces, forward and backward (``tests/compression/test_adc.py``)."""

    @staticmethod
    def forward(ctx, h, rows, slots, counts, k):
        B, N, D = h.shape
        T = counts.numel()
        kept = h.reshape(B * N, D).index_select(0, rows)
        sums = torch.zeros(T * k, D, dtype=h.dtype, device=h.device).index_add_(0, slots, kept)
        ctx.save_for_backward(rows, slots, counts)
        ctx.shape = (B, N, D)
        return sums.view(T, k, D) / counts.view(T, 1, 1)

    @staticmethod
    def backward(ctx, grad):
        rows, slots, counts = ctx.saved_tensors
        B, N, D = ctx.shape
        merged = grad / counts.view(-1, 1, 1)
        source = torch.cat([merged.reshape(-1, D), merged.new_zeros(1, D)])  # the last row: a dropped token's
        pick = torch.full((B * N,), source.shape[0] - 1, dtype=torch.long, device=grad.device)
        pick[rows] = slots
        return source.index_select(0, pick).view(B, N, D), None, None, None, None


def select_tokens(h: torch.Tensor, cls_attn: torch.Tensor, token_ratio: float, rounding: str = "round") -> torch.Tensor:
    """Token selection alone, per sample by its own CLS attention: ``[B, N, D] -> [B, k, D]``."""
    z, _, _ = merge_and_select(h, cls_attn, 1.0, token_ratio, rounding=rounding)
    return z
