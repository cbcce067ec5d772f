"""Batched K-means: k-means++ seeding, Lloyd iterations as whole-tensor ops, exactly k non-empty clusters.

Research code for ADC loops over clusters in Python at every iteration; here every iteration is a
handful of tensor ops over all points and clusters at once (``cdist``, ``argmin``, ``index_add_``),
and over several independent problems at once (``P`` problems of ``n`` points: FedLite's ``q``
sub-vector codebooks are one call).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..profiling import timed


class KMeansResult(NamedTuple):
    """What :func:`kmeans` returns: each point's cluster, the clusters' means and the Lloyd iterations run."""
    assignment: torch.Tensor  # [n] (or [P, n]) long, cluster id in [0, k), every id used
    centroids: torch.Tensor  # [k, d] (or [P, k, d]) float32, mean of each cluster's members
    iterations: int


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``x [P, n, d]`` -> seed indices ``[P, k]``.

    Each seed is drawn with probability proportional to its squared distance to the nearest seed
    so far. The draws are sequential by definition; each one is a vectorised op over all points
    of all problems.
    """
    P, n, _ = x.shape
    seeds = torch.empty(k, P, dtype=torch.long, device=x.device)
    seeds[0] = torch.randint(n, (P,), generator=generator, device=x.device)
    flat = x.reshape(P * n, -1)
    offsets = torch.arange(P, device=x.device) * n
    diff = x - flat.index_select(0, seeds[0] + offsets)[:, None]
    d2 = diff.mul_(diff).sum(-1)  # [P, n]
    q = torch.empty_like(d2)  # the draws' exponential variates, then the scores
    for i in range(1, k):
        # exactly torch.multinomial(d2 + 1e-30, 1, generator=generator) (same draws, same generator state):
        # for one sample it is argmax(p / q) with q ~ Exp(1); this skips its input checks (d2 is a finite
        # squared distance by construction) and its allocations, since k-means++ makes k of these draws in
        # sequence. tests/compression/test_kmeans.py holds it to torch.multinomial. The + 1e-30: when every
        # point coincides with a seed (duplicate rows), draw uniformly, never NaN.
        q.exponential_(generator=generator)
        torch.div(d2 + 1e-30, q, out=q)
        seeds[i] = s = q.argmax(-1)
        torch.sub(x, flat.index_select(0, s + offsets)[:, None], out=diff)
        torch.minimum(d2, diff.mul_(diff).sum(-1), out=d2)
    return seeds.T.contiguous()


def _rank_within(group: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order of elements grouped by ``group`` (ascending), ``key`` ascending inside each group,
    and each element's rank inside its group (in that order)."""
    order = torch.argsort(key, stable=True)
    order = order[torch.argsort(group[order], stable=True)]
    g = group[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    first = torch.cummax(torch.where(start, torch.arange(g.numel(), device=g.device), 0), 0).values
    return order, torch.arange(g.numel(), device=g.device) - first


def _fill_empty(assignment: torch.Tensor, dist: torch.Tensor, k: int, keep_nearest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick, in every problem, one point for each empty cluster: the points farthest from their
    centroid, never the nearest member of a cluster when ``keep_nearest`` (so no donor empties).

    ``assignment``/``dist`` are ``[P, n]``. Returns flat point indices and flat cluster ids
    (``p * k + c``) to pair up; both empty when no cluster is empty.
    """
    P, n = assignment.shape
    flat = assignment + k * torch.arange(P, device=assignment.device)[:, None]  # global cluster ids
    counts = torch.bincount(flat.reshape(-1), minlength=P * k)
    empty = (counts == 0).nonzero().squeeze(1)  # global ids, grouped by problem
    if empty.numel() == 0:
        return empty, empty
    problem = torch.arange(P, device=assignment.device).repeat_interleave(n)
    d = dist.reshape(-1)
    candidates = torch.ones_like(d, dtype=torch.bool)
    if keep_nearest:  # each cluster keeps its member nearest the centroid
        order, rank = _rank_within(flat.reshape(-1), d)
        candidates[order[rank == 0]] = False
    # rank candidates by distance, farthest first, inside their problem
    cand = candidates.nonzero().squeeze(1)
    order, rank = _rank_within(problem[cand], -d[cand])
    cand, cand_problem = cand[order], problem[cand][order]
    # rank the empty clusters inside their problem; the r-th empty cluster takes the r-th candidate
    e_problem = empty // k
    e_rank = torch.arange(empty.numel(), device=empty.device) - torch.searchsorted(e_problem, e_problem)
    c_start = torch.searchsorted(cand_problem, e_problem)
    return cand[c_start + e_rank], empty


def kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator | None = None,
    max_iter: int = 50,
) -> KMeansResult:
    """Euclidean K-means of ``x [n, d]`` (or ``P`` problems, ``[P, n, d]``) into exactly ``k``
    non-empty clusters, ``1 <= k <= n``.

    Seeded by ``generator`` (k-means++), at most ``max_iter`` Lloyd iterations, stops early when no
    assignment changes. Runs in float32 whatever the input dtype.
    """
    with timed("kmeans"):  # its share of the client's step (train.profile=true)
        return _kmeans(x, k, generator, max_iter)


def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator | None, max_iter: int) -> KMeansResult:
    single = x.dim() == 2
    x = x.detach().float()
    if single:
        x = x[None]
    P, n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters cannot be formed from n={n} points; need 1 <= k <= n")
    rows = torch.arange(P, device=x.device)
    offsets = (rows * k)[:, None]

    def means(assignment: torch.Tensor) -> torch.Tensor:
        flat = (assignment + offsets).reshape(-1)
        sums = torch.zeros(P * k, d, device=x.device).index_add_(0, flat, x.reshape(-1, d))
        counts = torch.bincount(flat, minlength=P * k).clamp_(min=1)
        return (sums / counts[:, None]).view(P, k, d)

    if k == n:  # every point its own cluster
        assignment = torch.arange(n, device=x.device).expand(P, n).clone()
        return KMeansResult(assignment[0] if single else assignment, x[0].clone() if single else x.clone(), 0)
    centroids = x[rows[:, None], kmeans_pp(x, k, generator)]  # [P, k, d]
    assignment = None
    it = 0
    for it in range(1, max_iter + 1):
        dist = torch.cdist(x, centroids)  # [P, n, k]
        new = dist.argmin(-1)
        if assignment is not None and torch.equal(new, assignment):
            break
        assignment = new
        centroids = means(assignment)
        # an empty cluster would average nothing: reseed it at the points worst served now
        points, clusters = _fill_empty(assignment, dist.gather(-1, assignment[..., None]).squeeze(-1), k, keep_nearest=False)
        if points.numel():
            centroids.view(P * k, d)[clusters] = x.reshape(-1, d)[points]
    if bool((torch.bincount((assignment + offsets).reshape(-1), minlength=P * k) == 0).any()):
        # Lloyd's argmin can leave a cluster empty (identical rows tie): give it a point
        own = torch.cdist(x, centroids).gather(-1, assignment[..., None]).squeeze(-1)
        points, clusters = _fill_empty(assignment, own, k, keep_nearest=True)
        assignment = assignment.clone()
        assignment.view(-1)[points] = clusters % k
    centroids = means(assignment)
    return KMeansResult(assignment[0] if single else assignment, centroids[0] if single else centroids, it)
