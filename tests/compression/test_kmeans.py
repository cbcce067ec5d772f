import torch

from splitvit.compression.kmeans import kmeans


def test_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centers])
    r = kmeans(x, 3, torch.Generator().manual_seed(1))
    for i in range(3):  # each blob is one cluster
        assert r.assignment[20 * i : 20 * (i + 1)].unique().numel() == 1
    assert r.assignment.unique().numel() == 3


def test_exactly_k_nonempty_clusters_even_with_identical_rows():
    x = torch.ones(32, 5)
    x[:3] = 2.0  # two distinct values only, eight clusters asked for
    r = kmeans(x, 8, torch.Generator().manual_seed(0))
    assert torch.bincount(r.assignment, minlength=8).min() >= 1
    assert torch.isfinite(r.centroids).all()


def test_seeded_and_deterministic():
    x = torch.randn(64, 10)
    a = kmeans(x, 7, torch.Generator().manual_seed(3)).assignment
    b = kmeans(x, 7, torch.Generator().manual_seed(3)).assignment
    assert torch.equal(a, b)


def test_centroids_are_member_means_and_limits():
    x = torch.randn(40, 4)
    r = kmeans(x, 5, torch.Generator().manual_seed(0), max_iter=100)
    for t in range(5):
        torch.testing.assert_close(r.centroids[t], x[r.assignment == t].mean(0))
    assert torch.equal(kmeans(x, 40).assignment, torch.arange(40))
    assert torch.equal(kmeans(x, 1).assignment, torch.zeros(40, dtype=torch.long))


def test_batched_problems_each_get_k_nonempty_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blobs = torch.cat([c + 0.1 * torch.randn(10, 2, generator=g) for c in centers])
    x = torch.stack([blobs, blobs + 5, torch.ones(30, 2)])  # the last problem: all rows identical
    r = kmeans(x, 3, torch.Generator().manual_seed(1))
    assert r.assignment.shape == (3, 30) and r.centroids.shape == (3, 3, 2)
    for p in range(3):
        assert torch.bincount(r.assignment[p], minlength=3).min() >= 1
    for p in range(2):
        for i in range(3):
            assert r.assignment[p, 10 * i : 10 * (i + 1)].unique().numel() == 1
    assert torch.isfinite(r.centroids).all()


def _reference_seeding(x, k, generator):
    """k-means++ over P problems at once with torch.multinomial, as written before the draws were inlined."""
    P, n, _ = x.shape
    rows = torch.arange(P)
    idx = torch.empty(P, k, dtype=torch.long)
    idx[:, 0] = torch.randint(n, (P,), generator=generator)
    d2 = (x - x[rows, idx[:, 0]][:, None]).pow(2).sum(-1)
    for i in range(1, k):
        idx[:, i] = torch.multinomial(d2 + 1e-30, 1, generator=generator).squeeze(1)
        d2 = torch.minimum(d2, (x - x[rows, idx[:, i]][:, None]).pow(2).sum(-1))
    return idx


def test_seeding_draws_exactly_what_multinomial_draws():
    from splitvit.compression.kmeans import kmeans_pp

    for seed, (P, n, d, k) in enumerate([(1, 128, 17, 40), (3, 300, 2, 64), (2, 7, 3, 7), (1, 1, 4, 1)] * 3):
        x = torch.randn(P, n, d, generator=torch.Generator().manual_seed(seed)).softmax(-1)
        x[:, n // 3 : n // 2] = x[:, :1]  # duplicate rows
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(kmeans_pp(x, k, g1), _reference_seeding(x, k, g2))
        assert torch.equal(g1.get_state(), g2.get_state())  # and the generator moves on identically
