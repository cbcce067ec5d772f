"""How a training set is split across clients: IID, Dirichlet over clients per class, or label shards.

``partition(labels, num_clients, "dirichlet", alpha=0.3, seed=0)`` returns one index tensor per
client. Every scheme is a pure function of its arguments and the seed, so every process of a run
(the simulation, each gRPC client) computes the same split without exchanging it.

- ``iid``: a seeded permutation cut into near-equal parts.
- ``dirichlet`` (Hsu et al. 2019, "Measuring the effects of non-identical data distribution"): for
  each class, the shares of the clients are drawn from Dir(alpha); small alpha gives each client few
  classes, large alpha approaches IID. Drawn again (with the next draw of the same generator) until
  every client holds at least ``min_samples``.
- ``shards`` (McMahan et al. 2017, FedAvg's pathological non-IID split): the set sorted by label, cut
  into ``num_clients * shards_per_client`` shards, each client given ``shards_per_client`` at random.
"""

from __future__ import annotations

import numpy as np
import torch

PARTITIONS = ("iid", "dirichlet", "shards")
MAX_DRAWS = 1000  # Dirichlet draws before a min_samples that cannot be met is reported


def partition(labels: torch.Tensor, num_clients: int, scheme: str = "iid", alpha: float = 0.5,
              shards_per_client: int = 2, min_samples: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Indices ``[n_i]`` (sorted) of each client's samples; together they are every sample once.

    ``labels``: ``[n]`` class ids. ``alpha``: the Dirichlet concentration (``dirichlet``).
    """
    labels = torch.as_tensor(labels).long().cpu()
    n = labels.shape[0]
    if scheme not in PARTITIONS:
        raise ValueError(f"clients.partition={scheme!r} is not allowed; choose one of: {', '.join(PARTITIONS)}")
    if not 1 <= num_clients <= n:
        raise ValueError(f"clients.num={num_clients} must be in [1, {n}] for a training set of {n} samples")
    if num_clients == 1:  # a client alone holds the whole set, however small
        min_samples = 1
    if num_clients * min_samples > n:
        raise ValueError(f"{num_clients} clients of at least {min_samples} samples need {num_clients * min_samples}; "
                         f"the training set has {n}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"clients.alpha={alpha} must be > 0")
        parts = _dirichlet(labels.numpy(), num_clients, alpha, min_samples, rng)
    else:
        shards = num_clients * shards_per_client
        if shards_per_client < 1 or shards > n:
            raise ValueError(f"{num_clients} clients x {shards_per_client} shards need at least {shards} samples "
                             f"and shards_per_client >= 1; the training set has {n}")
        by_label = np.argsort(labels.numpy(), kind="stable")
        pieces = np.array_split(by_label, shards)
        owner = rng.permutation(shards)
        parts = [np.concatenate([pieces[s] for s in owner[c::num_clients]]) for c in range(num_clients)]
    out = [torch.from_numpy(np.sort(p)).long() for p in parts]
    small = [i for i, p in enumerate(out) if len(p) < min_samples]
    if small:
        raise ValueError(f"clients {small} hold fewer than {min_samples} samples; use fewer clients or another partition")
    return out


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, min_samples: int, rng) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_samples:
            return merged
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw in {MAX_DRAWS} gave each of {num_clients} clients "
                     f"{min_samples} samples; raise clients.alpha or lower the minimum")


def histograms(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> list[list[int]]:
    """Each client's class histogram ``[num_classes]``: what a run records about its split."""
    labels = torch.as_tensor(labels).long()
    return [torch.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
