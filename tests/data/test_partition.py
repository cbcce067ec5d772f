"""Partitions across clients: every sample once, sizes, seeding, and what alpha does."""

import numpy as np
import pytest
import torch

from splitvit.data.partition import histograms, partition

LABELS = torch.arange(10).repeat_interleave(100)  # 10 classes x 100 samples, sorted by class


def covers_once(parts, n):
    allidx = torch.cat(parts).sort().values
    return torch.equal(allidx, torch.arange(n))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_every_sample_goes_to_exactly_one_client_and_the_seed_decides(scheme):
    a = partition(LABELS, 7, scheme, alpha=0.5, seed=3)
    assert len(a) == 7 and covers_once(a, 1000)
    b = partition(LABELS, 7, scheme, alpha=0.5, seed=3)
    c = partition(LABELS, 7, scheme, alpha=0.5, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_near_equal_and_classes_mixed():
    parts = partition(LABELS, 7, "iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(sum(1 for h in hist if h) == 10 for hist in histograms(LABELS, parts, 10))


def label_entropy(parts):
    """Mean entropy (bits) of the clients' class distributions: log2(10) = 3.32 for IID."""
    out = []
    for hist in histograms(LABELS, parts, 10):
        p = np.array(hist, dtype=float) / sum(hist)
        p = p[p > 0]
        out.append(-(p * np.log2(p)).sum())
    return float(np.mean(out))


def test_smaller_alpha_gives_clients_fewer_classes():
    ent = {a: np.mean([label_entropy(partition(LABELS, 5, "dirichlet", alpha=a, seed=s)) for s in range(5)])
           for a in (0.05, 0.3, 100.0)}
    assert ent[0.05] < ent[0.3] < ent[100.0]
    assert ent[100.0] > 3.2 and ent[0.05] < 1.5


def test_dirichlet_meets_the_minimum_size():
    parts = partition(LABELS, 10, "dirichlet", alpha=0.1, min_samples=40, seed=0)
    assert min(len(p) for p in parts) >= 40 and covers_once(parts, 1000)
    with pytest.raises(ValueError, match="raise clients.alpha"):
        partition(LABELS, 10, "dirichlet", alpha=0.01, min_samples=99, seed=0)


def test_shards_give_each_client_few_classes():
    parts = partition(LABELS, 5, "shards", shards_per_client=2, seed=0)
    assert [len(p) for p in parts] == [200] * 5
    assert all(sum(1 for h in hist if h) <= 2 for hist in histograms(LABELS, parts, 10))


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_clients=0), "clients.num"), (dict(num_clients=5, scheme="random"), "choose one of"),
    (dict(num_clients=5, scheme="dirichlet", alpha=0), "alpha"), (dict(num_clients=600, min_samples=2), "need 1200"),
])
def test_impossible_partitions_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        partition(LABELS, **kwargs)
