"""Batched K-means: k-means++ seeding, Lloyd iterations as whole-tensor ops, exactly k non-empty clusters.

Research code for ADC loops over clusters in Python at every iteration; here every iteration is a
handful of tensor ops over all points and clusters at once (``cdist``, ``argmin``, ``index_add_``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class KMeansResult(NamedTuple):
    assignment: torch.Tensor  # [n] long, cluster id in [0, k), every id used
    centroids: torch.Tensor  # [k, d] float32, mean of each cluster's members
    iterations: int


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``x [n, d]`` -> indices of ``k`` seeds ``[k]``.

    Each seed is drawn with probability proportional to its squared distance to the nearest seed
    so far. The draws are sequential by definition; each one is a vectorised op over all points.
    """
    n = x.shape[0]
    idx = torch.empty(k, dtype=torch.long, device=x.device)
    idx[0] = torch.randint(n, (1,), generator=generator, device=x.device)
    d2 = (x - x[idx[0]]).pow(2).sum(1)
    for i in range(1, k):
        # + 1e-30: when every point coincides with a seed (duplicate rows) draw uniformly, never NaN
        idx[i] = torch.multinomial(d2 + 1e-30, 1, generator=generator)
        d2 = torch.minimum(d2, (x - x[idx[i]]).pow(2).sum(1))
    return idx


def _ensure_nonempty(assignment: torch.Tensor, dist: torch.Tensor, k: int) -> torch.Tensor:
    """Give every empty cluster one point, taken from clusters that keep at least one member.

    Lloyd's argmin can leave a cluster empty (identical rows tie to the first centroid). Each
    cluster keeps its member nearest the centroid; of the other points, those farthest from their
    centroid move, one to each empty cluster. Needs ``k <= n``.
    """
    counts = torch.bincount(assignment, minlength=k)
    empty = (counts == 0).nonzero().squeeze(1)
    if empty.numel() == 0:
        return assignment
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(assignment[order], stable=True)]  # grouped by cluster, nearest first
    grouped = assignment[order]
    nearest = torch.ones_like(grouped, dtype=torch.bool)
    nearest[1:] = grouped[1:] != grouped[:-1]
    movable = order[~nearest]
    moved = movable[dist[movable].topk(empty.numel()).indices]
    assignment = assignment.clone()
    assignment[moved] = empty
    return assignment


def kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    max_iter: int = 50,
) -> KMeansResult:
    """Euclidean K-means of ``x [n, d]`` into exactly ``k`` non-empty clusters, ``1 <= k <= n``.

    Seeded by ``generator`` (k-means++), at most ``max_iter`` Lloyd iterations, stops early when the
    assignment no longer changes. Runs in float32 whatever the input dtype.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters cannot be formed from n={n} points; need 1 <= k <= n")
    x = x.detach().float()
    if k == n:  # every point its own cluster
        return KMeansResult(torch.arange(n, device=x.device), x.clone(), 0)
    centroids = x[kmeans_pp(x, k, generator)]
    assignment = None
    it = 0
    for it in range(1, max_iter + 1):
        dist = torch.cdist(x, centroids)  # [n, k]
        new = dist.argmin(1)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        counts = torch.bincount(assignment, minlength=k)
        centroids = torch.zeros_like(centroids).index_add_(0, assignment, x) / counts.clamp(min=1)[:, None].float()
        empty = counts == 0
        if empty.any():
            # an empty cluster would average nothing: reseed it at the points worst served now
            far = dist.gather(1, assignment[:, None]).squeeze(1)
            centroids[empty] = x[far.topk(int(empty.sum())).indices]
    own = torch.cdist(x, centroids).gather(1, assignment[:, None]).squeeze(1)
    assignment = _ensure_nonempty(assignment, own, k)
    counts = torch.bincount(assignment, minlength=k).float()
    centroids = torch.zeros_like(centroids).index_add_(0, assignment, x) / counts[:, None]
    return KMeansResult(assignment, centroids, it)
