"""merge_and_select forward + backward against a straightforward loop implementation.

The loop version is how research code writes ADC: Lloyd's iterations and the merge each loop over
clusters in Python. Both use the same k-means++ seeding and iteration cap.

    python benchmarks/merge_and_select.py [--repeat 30] [--batches 32 64 128 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from splitvit.compression.adc import budgets, merge_and_select
from splitvit.compression.kmeans import kmeans_pp


def loop_kmeans(x, k, generator, max_iter=50):
    centroids = x[kmeans_pp(x[None], k, generator)[0]]
    for _ in range(max_iter):
        dists = torch.stack([((x - centroids[c]) ** 2).sum(1) for c in range(k)], dim=1)
        assignment = dists.argmin(1)
        new = torch.stack([x[assignment == c].mean(0) if (assignment == c).any() else centroids[c] for c in range(k)])
        if torch.equal(new, centroids):
            break
        centroids = new
    return assignment


def loop_merge_and_select(h, cls_attn, batch_ratio, token_ratio, generator):
    B, N, D = h.shape
    T, k = budgets(B, N, batch_ratio, token_ratio)
    assignment = loop_kmeans(cls_attn, T, generator)
    z, index = [], []
    for t in range(T):
        members = assignment == t
        scores = cls_attn[members].mean(0)
        keep = torch.cat([torch.zeros(1, dtype=torch.long), scores[1:].topk(k - 1).indices.sort().values + 1])
        z.append(h[members].mean(0)[keep])
        index.append(keep)
    return torch.stack(z), assignment, torch.stack(index)


def time_ms(fn, repeat):
    """Median milliseconds of ``fn`` repeated alone (steady state: its allocations reused, as in training)."""
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--compression", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI runs every benchmark so)")
    args = ap.parse_args()
    if args.smoke:
        args.batches, args.tokens, args.dim, args.repeat = [8], 17, 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    r = args.compression ** 0.5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={args.tokens} D={args.dim} xi={args.compression}; "
          "median ms")
    print(f"{'':>15} {'forward + backward':^34}   {'forward only':^30}")
    print(f"{'B':>5} {'T':>4} {'k':>4} {'splitvit ms':>12} {'loop ms':>10} {'speed-up':>9}   "
          f"{'splitvit':>9} {'loop':>9} {'speed-up':>9}")
    for B in args.batches:
        g = torch.Generator().manual_seed(0)
        h = torch.randn(B, args.tokens, args.dim, generator=g)
        a = torch.rand(B, args.tokens, generator=g).softmax(-1)
        grad = torch.randn(*budgets(B, args.tokens, r, r), args.dim, generator=g)

        x = h.detach().requires_grad_()

        def run(kernel):
            def step():  # forward, backward into h (a leaf: its .grad is the kernel's gradient, stored, not added)
                z = kernel(x, a, r, r, generator=torch.Generator().manual_seed(1))[0]
                z.backward(grad)
                x.grad = None
            return step

        def forward(kernel):
            return lambda: kernel(h, a, r, r, generator=torch.Generator().manual_seed(1))

        fast = time_ms(run(merge_and_select), args.repeat)
        slow = time_ms(run(loop_merge_and_select), max(3, args.repeat // 4))
        fast_f = time_ms(forward(merge_and_select), args.repeat)
        slow_f = time_ms(forward(loop_merge_and_select), max(3, args.repeat // 4))
        T, k = budgets(B, args.tokens, r, r)
        print(f"{B:>5} {T:>4} {k:>4} {fast:>12.2f} {slow:>10.2f} {slow / fast:>8.1f}x   "
              f"{fast_f:>9.2f} {slow_f:>9.2f} {slow_f / fast_f:>8.1f}x")


if __name__ == "__main__":
    main()
