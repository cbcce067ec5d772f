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
    """k-means++ as written in the textbook, one problem, with torch.multinomial."""
    idx = [int(torch.randint(x.shape[0], (1,), generator=generator))]
    d2 = (x - x[idx[0]]).pow(2).sum(-1)
    for _ in range(1, k):
        idx.append(int(torch.multinomial(d2 + 1e-30, 1, generator=generator)))
        d2 = torch.minimum(d2, (x - x[idx[-1]]).pow(2).sum(-1))
    return torch.tensor(idx)


def test_seeding_draws_exactly_what_multinomial_draws():
    from splitvit.compression.kmeans import _draw, kmeans_pp

    for seed, (P, n) in enumerate([(1, 128), (32, 300), (3, 7), (2, 1)] * 10):
        p = torch.rand(P, n, generator=torch.Generator().manual_seed(seed)) ** 4
        if seed % 3 == 0:
            p[:, : n // 2] = 0.0
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(_draw(p, g1), torch.multinomial(p + 1e-30, 1, generator=g2).squeeze(1))
        assert torch.equal(g1.get_state(), g2.get_state())  # and the generator moves on identically
    x = torch.randn(1, 128, 17, generator=torch.Generator().manual_seed(0)).softmax(-1)
    x[0, 40:60] = x[0, 0]  # duplicate rows
    for seed in range(5):
        got = kmeans_pp(x, 40, torch.Generator().manual_seed(seed))[0]
        assert torch.equal(got, _reference_seeding(x[0], 40, torch.Generator().manual_seed(seed)))
