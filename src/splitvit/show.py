"""``splitvit show RUN_DIR``: what ADC does to a batch, drawn as the paper's figure 8.

From the run's last checkpoint (both halves, joined as ``splitvit export`` joins them) and a fixed
batch of its test images: ADC merges the batch at the run's split (with the run's settings, or ADC at
0.1 for a run of another method), and two pictures are written:

- ``show_clusters.png``: a few clusters side by side, each a row of its member images, with the
  patches the cluster keeps shown bright and the dropped ones dimmed, and each image's class;
- ``show_attention.png``: for one image of each of those clusters, its CLS attention over the patches
  at several layers (the first, the split, and later ones).

It also prints the batch's cluster purity (the label entropy inside clusters, the share that mix classes).
"""

from __future__ import annotations

from collections import Counter
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .argv import KeyValueParser, plain
from .compression.merge import balanced_ratios, merge_and_select
from .export import ExportError, checkpoint_of, joined_state
from .train.inspect import entropy_bits


def attention_by_layer(model, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each block's output ``[B, N, D]`` and CLS-attention row ``[B, N]`` (head mean), first to last."""
    x = model.embed(images)
    hs, rows = [], []
    for blk in model.blocks:
        x, row = blk(x, cls_attn=True)
        hs.append(x)
        rows.append(row)
    return hs, rows


@torch.no_grad()
def figure8(model, images: torch.Tensor, raw: torch.Tensor, labels: torch.Tensor, split_index: int, batch_ratio: float,
            token_ratio: float, feature: str, out: Path, clusters: int = 4, per_cluster: int = 6, seed: int = 0,
            class_names: list[str] | None = None) -> dict:
    """Draw the two pictures for ``images`` (normalised, for the model) shown as ``raw`` ([0, 1]); returns
    the batch's purity and where the pictures went."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    hs, rows = attention_by_layer(model, images)
    h, cls_attn = hs[split_index - 1], rows[split_index - 1]
    _, assignment, token_index = merge_and_select(h, cls_attn, batch_ratio, token_ratio, feature,
                                                  torch.Generator().manual_seed(seed))
    T = int(assignment.max()) + 1
    C = int(labels.max()) + 1
    onehot = torch.nn.functional.one_hot(labels, C).float()
    mix = torch.zeros(T, C).index_add_(0, assignment, onehot)
    sizes = mix.sum(1)
    purity = {"clusters": T, "label_entropy_bits": entropy_bits(mix / sizes[:, None]).mean().item(),
              "clusters_mixed": (mix.gt(0).sum(1) > 1).float().mean().item()}

    grid = model.cfg.img_size // model.cfg.patch_size
    patch = raw.shape[-1] // grid
    shown = sizes.argsort(descending=True)[:clusters].tolist()
    name = (lambda c: class_names[c]) if class_names else str  # noqa: E731
    fig, axes = plt.subplots(len(shown), per_cluster, figsize=(1.6 * per_cluster, 1.8 * len(shown)), squeeze=False)
    firsts, drawn = [], {}
    for r, t in enumerate(shown):
        everyone = (assignment == t).nonzero().flatten()
        drawn[t] = [name(int(labels[i])) for i in everyone]
        members = everyone[:per_cluster].tolist()
        firsts.append(members[0])
        kept = torch.zeros(grid * grid, dtype=torch.bool)
        kept[token_index[t][token_index[t] > 0] - 1] = True  # token j + 1 is patch j; CLS is not a patch
        mask = kept.view(grid, grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        for c in range(per_cluster):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(members):
                continue
            img = raw[members[c]].permute(1, 2, 0).clamp(0, 1)
            if img.shape[-1] == 1:
                img = img.expand(-1, -1, 3)
            ax.imshow(torch.where(mask[..., None], img, 0.3 * img + 0.35).numpy())  # dropped patches greyed out
            ax.set_title(name(int(labels[members[c]])), fontsize=7)
        axes[r][0].text(-0.1, 0.5, f"cluster {t}\n{int(sizes[t])} images", transform=axes[r][0].transAxes,
                        ha="right", va="center", fontsize=7)
    fig.suptitle(f"ADC at the split after block {split_index}: clusters of one batch, kept patches bright "
                 f"(k = {token_index.shape[1] - 1} of {grid * grid} patches)", fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    clusters_png = out / "show_clusters.png"
    fig.savefig(clusters_png, dpi=130)
    plt.close(fig)

    depth = len(rows)
    layers = sorted({1, split_index, max(1, (split_index + depth) // 2), depth})
    fig, axes = plt.subplots(len(firsts), len(layers) + 1, figsize=(1.7 * (len(layers) + 1), 1.8 * len(firsts)), squeeze=False)
    for r, i in enumerate(firsts):
        img = raw[i].permute(1, 2, 0).clamp(0, 1)
        axes[r][0].imshow((img.expand(-1, -1, 3) if img.shape[-1] == 1 else img).numpy())
        axes[r][0].set_title(name(int(labels[i])), fontsize=7)
        for c, layer in enumerate(layers, start=1):
            axes[r][c].imshow(rows[layer - 1][i, 1:].view(grid, grid).numpy(), cmap="magma")
            axes[r][c].set_title(f"block {layer}" + (" (split)" if layer == split_index else ""), fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("CLS attention over the patches, mean of the heads", fontsize=8)
    fig.tight_layout()
    attention_png = out / "show_attention.png"
    fig.savefig(attention_png, dpi=130)
    plt.close(fig)
    return {**purity, "drawn": drawn, "pictures": [str(clusters_png), str(attention_png)]}


def show(run_dir: Path, out: Path | None = None, server: Path | None = None, batch: int | None = None,
         clusters: int = 4, data_root: str | None = None) -> dict:
    """Draw what ADC does to one batch of a run (the paper's figure 8): the clusters and the kept tokens."""
    from .data import load_dataset
    from .data.base import batches, eval_subset
    from .train.build import build_model

    weights, config, progress = joined_state(checkpoint_of(run_dir), server)
    cfg = OmegaConf.create(config)
    if data_root is not None:
        cfg.dataset.root = data_root
    if cfg.split.index is None:
        raise ExportError(f"{run_dir} trained its model in one piece: there is no split for ADC to act at")
    num_classes = weights["head.weight"].shape[0]
    cfg.model.checkpoint = None  # the run's own weights, below
    cfg.model.pretrained = False
    model = build_model(cfg, num_classes)
    model.load_state_dict(weights)
    d = cfg.dataset
    data = load_dataset(d.name, d.root, False, variant=d.get("variant"), normalize=d.get("normalize", "dataset"),
                        classes=d.get("classes"))
    vit = model.cfg
    B = batch or cfg.train.batch_size
    ids = eval_subset(data.test, B)
    images, labels = next(batches(data.test, B, vit.img_size, vit.in_chans, indices=ids))
    ds = data.test
    mean = torch.tensor(ds.mean).repeat(vit.in_chans // len(ds.mean)).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).repeat(vit.in_chans // len(ds.std)).view(1, -1, 1, 1)
    raw = images * std + mean
    m = cfg.method
    if m.name == "adc":
        br, tr = (m.batch_ratio, m.token_ratio) if m.get("batch_ratio") or m.get("token_ratio") else balanced_ratios(m.compression)
        br, tr, feature = br or 1.0, tr or 1.0, m.get("feature", "attention")
    else:
        (br, tr), feature = balanced_ratios(0.1), "attention"
    return figure8(model, images, raw, labels, cfg.split.index, br, tr, feature, out or run_dir, clusters=clusters,
                   seed=cfg.seed, class_names=data.test.classes)


def main(argv: list[str]) -> int:
    """``splitvit show RUN_DIR [out=DIR]``: the figure, from the run's last checkpoint."""
    ap = KeyValueParser(prog="splitvit show", description=plain(__doc__))
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="where the pictures go (default: RUN_DIR)")
    ap.add_argument("--server", type=Path, default=None, help="the server half's checkpoint (a run trained over gRPC)")
    ap.add_argument("--batch", type=int, default=None, help="images in the batch (default: the run's train.batch_size)")
    ap.add_argument("--clusters", type=int, default=4, help="clusters to draw")
    ap.add_argument("--data", default=None, help="dataset.root, when the data lives elsewhere than when the run was made")
    args = ap.parse_args(argv)
    try:
        result = show(args.run_dir, args.out, args.server, args.batch, args.clusters, args.data)
    except (ExportError, FileNotFoundError, ValueError) as e:
        print(f"splitvit show: error: {e}", file=sys.stderr)
        return 2
    print(f"{result['clusters']} clusters; label entropy inside a cluster {result['label_entropy_bits']:.3f} bits; "
          f"{result['clusters_mixed']:.1%} of clusters mix classes")
    for t, names in result["drawn"].items():
        counts = Counter(names).most_common()
        print(f"  cluster {t} ({len(names)} images): " + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts))
    print("wrote " + ", ".join(result["pictures"]))
    return 0
