"""``splitvit report DIR...``: compare runs. A table (Markdown and CSV) and the paper's plots.

Runs are found by their ``summary.json`` anywhere under the given directories (a multirun sweep, a
folder of single runs, or both). Runs that differ only in ``seed`` are one row: mean and spread.
Where the paper reports the same setting (``reference/paper_2509.15058.csv``: method, model,
dataset, compression, accuracy), its accuracy is shown beside ours, in the table and the figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


PAPER_CSV = Path(__file__).parent / "reference" / "paper_2509.15058.csv"


def paper_reference(path: Path = PAPER_CSV) -> list[dict]:
    """The paper's accuracies: ``[{method, model, dataset, compression, accuracy}]``."""
    with path.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [{**r, "compression": float(r["compression"]), "accuracy": float(r["accuracy"])} for r in rows]


def paper_accuracy(row: dict, reference: list[dict]) -> float | None:
    """The paper's accuracy for the setting of ``row`` (same method, model, dataset, compression target)."""
    for p in reference:
        if (p["method"], p["model"], p["dataset"]) == (row["method"], row["model"], row["dataset"]) and \
                abs(p["compression"] - row["target"]) <= 1e-3 * max(p["compression"], 1e-3):
            return p["accuracy"]
    return None


def find_runs(dirs: list[str]) -> list[dict]:
    runs = []
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        for summary in sorted(root.rglob("summary.json")):
            run = json.loads(summary.read_text())
            metrics = summary.parent / "metrics.jsonl"
            run["curve"] = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            run["run_dir"] = str(summary.parent)
            runs.append(run)
    return runs


def setting(run: dict) -> tuple:
    """What makes two runs the same experiment: everything but the seed."""
    opts = tuple(sorted((k, str(v)) for k, v in run.get("method_options", {}).items()))
    return (run["method"], opts, run.get("dataset"), run.get("model"), run.get("split_index"), run.get("eval_mode"))


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[setting(r)].append(r)
    rows = []
    for key, rs in groups.items():
        final, final_sd = _mean_sd([r["final_val_acc"] for r in rs])
        best, best_sd = _mean_sd([r["best_val_acc"] for r in rs])
        rows.append({
            "method": key[0],
            "options": " ".join(f"{k}={v}" for k, v in key[1]),
            "dataset": key[2],
            "model": key[3],
            "seeds": len(rs),
            "target": statistics.fmean(r["compression_target"] for r in rs),
            "nominal": statistics.fmean(r["compression_nominal"] for r in rs),
            "measured": statistics.fmean(r["compression_measured"] for r in rs),
            "bytes_up": statistics.fmean(r["bytes_up"] for r in rs),
            "bytes_down": statistics.fmean(r["bytes_down"] for r in rs),
            "steps": statistics.fmean(r["steps"] for r in rs),
            "final_acc": final,
            "final_acc_sd": final_sd,
            "best_acc": best,
            "best_acc_sd": best_sd,
            "runs": rs,
        })
    reference = paper_reference()
    for row in rows:
        row["paper_acc"] = paper_accuracy(row, reference)
    rows.sort(key=lambda r: (r["dataset"] or "", r["method"], -r["measured"]))
    return rows


COLUMNS = ["method", "options", "dataset", "model", "seeds", "target", "nominal", "measured", "bytes_up",
           "bytes_down", "steps", "final_acc", "final_acc_sd", "best_acc", "best_acc_sd", "paper_acc"]


def markdown(rows: list[dict]) -> str:
    head = "| method | options | target | measured | MB up | MB down | final acc | best acc | paper | seeds |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        paper = "-" if r.get("paper_acc") is None else f"{r['paper_acc']:.3f}"
        lines.append(
            f"| {r['method']} | {r['options'] or '-'} | {r['target']:.3f} | {r['measured']:.3f} | "
            f"{r['bytes_up'] / 1e6:,.1f} | {r['bytes_down'] / 1e6:,.1f} | "
            f"{r['final_acc']:.4f} ± {r['final_acc_sd']:.4f} | {r['best_acc']:.4f} ± {r['best_acc_sd']:.4f} | {paper} | {r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})


def plots(rows: list[dict], out: Path, reference: list[dict] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)

    # the paper's main figure: final accuracy against measured compression, one line per method
    # with the paper's values for the same model and dataset beside ours: hollow markers, dotted lines
    reference = paper_reference() if reference is None else reference
    shown = {(r["model"], r["dataset"]) for r in rows}
    paper: dict[str, list[dict]] = defaultdict(list)
    for p in reference:
        if (p["model"], p["dataset"]) in shown:
            paper[p["method"]].append(p)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for method, rs in sorted(by_method.items()):
        rs = sorted(rs, key=lambda r: r["measured"])
        if method == "none":  # the uncompressed reference, as the paper's "Base"
            ax.axhline(rs[0]["final_acc"], color="k", ls="--", lw=1, label="none (uncompressed)")
            continue
        line = ax.errorbar([r["measured"] for r in rs], [r["final_acc"] for r in rs], yerr=[r["final_acc_sd"] for r in rs],
                           marker="o", capsize=3, label=method)
        colors[method] = line[0].get_color()
    for method, ps in sorted(paper.items()):
        ps = sorted(ps, key=lambda p: p["compression"])
        if method == "none":
            ax.axhline(ps[0]["accuracy"], color="k", ls=":", lw=1, label="paper: base")
            continue
        ax.plot([p["compression"] for p in ps], [p["accuracy"] for p in ps], ls=":", marker="o", mfc="none",
                color=colors.get(method), label=f"paper: {method}")
    ax.set_xscale("log")
    ax.set_xlabel("compression, measured on the wire (bytes sent / uncompressed)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "accuracy_vs_compression.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # accuracy against cumulative bytes, every run's curve (first seed of each setting)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        curve = r["runs"][0]["curve"]
        if curve:
            ax.plot([(c["bytes_up"] + c["bytes_down"]) / 1e6 for c in curve], [c["val_acc"] for c in curve],
                    label=f"{r['method']} {r['measured']:.3f}", alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("MB sent, both directions")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written.append(out / "accuracy_vs_bytes.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    # time to accuracy: compute plus the modelled link (link.bandwidth_mbps), when the runs modelled one
    timed = [r for r in rows if r["runs"] and any(c.get("link_s") for c in r["runs"][0]["curve"])]
    if timed:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in timed:
            curve = r["runs"][0]["curve"]
            ax.plot([c["time_s"] for c in curve], [c["val_acc"] for c in curve], label=f"{r['method']} {r['measured']:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel("seconds: compute + modelled link")
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        written.append(out / "accuracy_vs_time.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # ADC's batch-ratio x token-ratio grid, when the runs hold one
    grid = {}
    for r in by_method.get("adc", []):
        run = r["runs"][0]
        br, tr = run.get("batch_ratio"), run.get("token_ratio")
        if br is not None and tr is not None:
            grid[(br, tr)] = r["final_acc"]
    brs, trs = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
    if len(brs) > 1 and len(trs) > 1 and len(grid) > max(len(brs), len(trs)):  # a grid, not one diagonal
        fig, ax = plt.subplots(figsize=(6, 5))
        data = [[grid.get((b, t), float("nan")) for t in trs] for b in brs]
        im = ax.imshow(data, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(trs)), [f"{t:.2g}" for t in trs])
        ax.set_yticks(range(len(brs)), [f"{b:.2g}" for b in brs])
        ax.set_xlabel("token ratio k/N")
        ax.set_ylabel("batch ratio T/B")
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, label="final test accuracy")
        fig.tight_layout()
        written.append(out / "adc_grid.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitvit report", description=__doc__)
    ap.add_argument("dirs", nargs="+", help="run or sweep directories")
    ap.add_argument("--out", default=None, help="where report.md, report.csv and the plots go (default: the first DIR)")
    args = ap.parse_args(argv)
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as e:
        print(f"splitvit report: error: {e}")
        return 2
    if not runs:
        print(f"splitvit report: no summary.json under {', '.join(args.dirs)}; point it at run or sweep directories")
        return 2
    rows = aggregate(runs)
    out = Path(args.out or args.dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    (out / "report.md").write_text(table)
    write_csv(rows, out / "report.csv")
    written = plots(rows, out)
    print(table)
    print(f"{len(runs)} runs, {len(rows)} settings; wrote {out / 'report.md'}, {out / 'report.csv'}, "
          + ", ".join(str(p) for p in written))
    return 0
