"""``splitvit report DIR...``: compare runs. A table (Markdown and CSV) and the paper's plots.

Runs are found by their ``summary.json`` anywhere under the given directories (a multirun sweep, a
folder of single runs, or both). Two runs are the same experiment when every key of their resolved
``config.yaml`` is the same except the seed and the keys that cannot change a result
(:data:`IGNORED`); such runs are one row, with the mean and spread over their seeds. Where the paper
reports the same setting (``reference/paper_2509.15058.csv``: method, model, dataset, compression,
accuracy), its accuracy is shown beside ours, in the table and the figure; runs on another model or
dataset are shown alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from .argv import KeyValueParser, plain
from .config_keys import leaves, load_run_config

PAPER_CSV = Path(__file__).parent / "reference" / "paper_2509.15058.csv"

# keys that cannot change what a run computes: where it is, how it shows progress, where its data lie
IGNORED = ("seed", "run_dir", "train.progress", "train.resume", "train.checkpoint", "train.profile", "train.inspect",
           "eval.also", "dataset.root", "dataset.download", "dataset.workers", "logger", "link.token_file", "link.tls",
           "link.server", "link.listen", "link.insecure", "link.once", "link.chunk_kb", "link.timeout_s", "link.retries",
           "link.connect_timeout_s", "link.idle_timeout_s")
# the knobs that place a run along the compression axis, not on a line of its own
RATIO_KNOBS = {"method.compression", "method.R", "method.bits", "method.q", "method.rank"}

METHOD_COLORS = {  # one colour per method, the same in every figure
    "none": "#000000", "adc": "#d62728", "c3sl": "#1f77b4", "bottlenet": "#2ca02c", "topk": "#9467bd",
    "randtopk": "#8c564b", "quant": "#e377c2", "fedlite": "#17becf", "lowrank": "#bcbd22", "slacc": "#ff7f0e",
    "whole": "#7f7f7f",
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]


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


def _config_of(run_dir: Path, summary: dict) -> dict:
    """The run's resolved config as flat dotted keys; from the summary alone for runs without config.yaml."""
    path = run_dir / "config.yaml"
    if path.is_file():
        # runs made by an older splitvit lack the keys added since: they ran with those keys' defaults
        flat = leaves(load_run_config(path))
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, list) else v for k, v in flat.items()}
    flat = {"method.name": summary["method"], "dataset.name": summary.get("dataset"), "model.name": summary.get("model"),
            "split.index": summary.get("split_index"), "eval.mode": summary.get("eval_mode"), "seed": summary.get("seed")}
    flat.update({f"method.{k}": v for k, v in summary.get("method_options", {}).items()})
    return flat


def find_runs(dirs: list[str]) -> list[dict]:
    """Every run under ``dirs``. Runs made by an older splitvit lack the keys added since; they count
    as those keys' defaults (what the code did before the key existed), so that runs of one setting
    made by two versions are one row."""
    runs = []
    for d in dirs:
        root = Path(d)
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        for summary in sorted(root.rglob("summary.json")):
            run = json.loads(summary.read_text())
            if "method" not in run or "final_val_acc" not in run:
                continue  # not a run's summary: a server's federation/summary.json (its rounds and bytes)
            metrics = summary.parent / "metrics.jsonl"
            run["curve"] = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
            run["run_dir"] = str(summary.parent)
            run["config"] = _config_of(summary.parent, run)
            runs.append(run)
    return runs


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


def setting(run: dict) -> tuple:
    """What makes two runs the same experiment: every config key but the seed and :data:`IGNORED`."""
    return tuple(sorted((k, str(v)) for k, v in run["config"].items() if not _ignored(k)))


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _also(rs: list[dict]) -> dict:
    """The final model's accuracy in more evaluation modes (``eval.also``), where every run of the row has it."""
    out = {}
    for mode in ("uncompressed", "tokens", "compressed"):
        values = [r.get(f"final_val_acc_{mode}") for r in rs]
        if values and all(v is not None for v in values):
            out[f"acc_{mode}"], out[f"acc_{mode}_sd"] = _mean_sd(values)
    return out


def _label(key: tuple, varying: set[str]) -> str:
    """The keys that tell this setting from the others, ``method.`` dropped: ``compression=0.1 train.batch_size=16``."""
    parts = []
    parts_set = any(k in ("method.batch_ratio", "method.token_ratio") and v != "None" for k, v in key)
    flat = dict(key)
    rank = {"method": 0, "codec": 2}  # the method's options, then the codec (its name first), then the rest
    for k, v in sorted(key, key=lambda kv: (1 if kv[0] == "codec.name" else rank.get(kv[0].split(".")[0], 3), kv[0])):
        if parts_set and k == "method.compression":
            continue  # ADC: batch_ratio / token_ratio, when set, replace the balanced target
        if k.startswith("compression_schedule."):  # one part: schedule=linear(0.02→1)
            if k == "compression_schedule.name" and v not in ("constant", "None"):
                ends = "→".join(f"{float(flat.get(f'compression_schedule.{e}')):g}" for e in ("start", "end")
                                if flat.get(f"compression_schedule.{e}") not in (None, "None"))
                stages = flat.get("compression_schedule.stages")
                parts.append(f"schedule={v}({ends}{f', {stages} stages' if v == 'steps' else ''})")
            continue
        if flat.get("compression_schedule.name") not in (None, "None", "constant") and k == "method.compression":
            continue  # the schedule's ends replace it
        if k in varying and k != "method.name" and not (k.startswith(("method.", "codec.")) and v == "None"):
            parts.append("codec=" + v if k == "codec.name" else f"{k.removeprefix('method.')}={_short(v)}")
    return " ".join(parts)


def _short(value: str) -> str:
    """A long float at 4 significant digits (``0.1176`` for 2/17); anything else as it is."""
    try:
        return f"{float(value):.4g}" if "." in value and len(value) > 6 else value
    except ValueError:
        return value


def aggregate(runs: list[dict], warn=None) -> list[dict]:
    """One row per setting; ``warn(message)`` is told about runs that repeat a seed of a setting."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[setting(r)].append(r)
    all_keys = {k for key in groups for k, _ in key}
    # what tells settings apart: a method's (a codec's) options among that method's (codec's) runs, any other
    # key among all runs
    def option(k: str) -> bool:
        return k.startswith(("method.", "codec.")) and k not in ("method.name", "codec.name")

    varying = {k for k in all_keys if not option(k) and len({dict(key).get(k) for key in groups}) > 1}
    for group in ("method", "codec"):
        for name in {dict(key).get(f"{group}.name") for key in groups}:
            same = [dict(key) for key in groups if dict(key).get(f"{group}.name") == name]
            varying |= {k for k in all_keys if k.startswith(group + ".") and option(k) and len({d.get(k) for d in same}) > 1}
    rows = []
    for key, rs in groups.items():
        seeds = [r["config"].get("seed", r.get("seed")) for r in rs]
        repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if repeated and warn is not None:
            dirs = ", ".join(r["run_dir"] for r in rs if str(r["config"].get("seed", r.get("seed"))) in repeated)
            warn(f"{len(rs)} runs of one setting share seed {', '.join(repeated)}: {dirs}; their mean counts each run")
        final, final_sd = _mean_sd([r["final_val_acc"] for r in rs])
        best, best_sd = _mean_sd([r["best_val_acc"] for r in rs])
        measured = [r["compression_measured"] for r in rs if r.get("compression_measured") is not None]
        rows.append({
            "method": rs[0]["method"],
            "options": _label(key, varying),
            "dataset": rs[0].get("dataset"),
            "model": rs[0].get("model"),
            "seeds": len(set(map(str, seeds))),
            "runs_n": len(rs),
            "target": statistics.fmean(r["compression_target"] or 1.0 for r in rs),
            "nominal": statistics.fmean(r["compression_nominal"] or 1.0 for r in rs),
            "measured": statistics.fmean(measured) if measured else 1.0,
            "bytes_up": statistics.fmean(r["bytes_up"] for r in rs),
            "bytes_down": statistics.fmean(r["bytes_down"] for r in rs),
            "steps": statistics.fmean(r["steps"] for r in rs),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs),
            "final_acc": final,
            "final_acc_sd": final_sd,
            "best_acc": best,
            "best_acc_sd": best_sd,
            **_also(rs),
            "key": key,
            "runs": rs,
        })
    reference = paper_reference()
    for row in rows:
        row["paper_acc"] = paper_accuracy(row, reference)
    # most bytes first; rows the table shows at the same ratio (headers differ by a few bytes) by their options
    rows.sort(key=lambda r: (r["dataset"] or "", r["method"], -round(r["measured"], 3), r["options"]))
    return rows


COLUMNS = ["method", "options", "dataset", "model", "seeds", "target", "nominal", "measured", "bytes_up",
           "bytes_down", "steps", "wall_s", "final_acc", "final_acc_sd", "best_acc", "best_acc_sd", "acc_compressed",
           "acc_compressed_sd", "paper_acc"]


def markdown(rows: list[dict]) -> str:
    """The report's table as markdown: a row per setting, means and standard deviations over seeds."""
    modes = [m for m in ("uncompressed", "tokens", "compressed") if any(f"acc_{m}" in r for r in rows)]
    with_paper = any(r.get("paper_acc") is not None for r in rows)  # a column of dashes says nothing
    head = ("| method | options | target | measured | MB up | MB down | steps | wall s | final acc | best acc | "
            + "".join(f"final acc, {m} eval | " for m in modes) + ("paper | " if with_paper else "") + "seeds |")
    lines = [head, "|---|---|" + "--:|" * (9 + len(modes) + with_paper)]
    for r in rows:
        paper = ("-" if r.get("paper_acc") is None else f"{r['paper_acc']:.3f}") + " | " if with_paper else ""
        def acc(v, sd):  # the spread over seeds, where there are seeds to spread over
            return f"{v:.4f} ± {sd:.4f}" if r["runs_n"] > 1 else f"{v:.4f}"

        also = "".join(f"{acc(r[f'acc_{m}'], r[f'acc_{m}_sd'])} | " if f"acc_{m}" in r else "- | " for m in modes)
        lines.append(
            f"| {r['method']} | {r['options'] or '-'} | {r['target']:.3f} | {r['measured']:.3f} | "
            f"{r['bytes_up'] / 1e6:,.1f} | {r['bytes_down'] / 1e6:,.1f} | {r['steps']:,.0f} | {r['wall_s']:,.0f} | "
            f"{acc(r['final_acc'], r['final_acc_sd'])} | {acc(r['best_acc'], r['best_acc_sd'])} | {also}{paper}{r['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def mean_curve(row: dict) -> list[tuple[float, float]]:
    """A setting's evaluations as (MB sent for training, both ways; test accuracy), each the mean over its
    seeds at the same evaluation (the first ``n`` evaluations, ``n`` the fewest any seed has)."""
    curves = [run["curve"] for run in row["runs"] if run["curve"]]
    if not curves:
        return []
    n = min(len(c) for c in curves)
    return [(statistics.fmean((c[i]["bytes_up"] + c[i]["bytes_down"]) / 1e6 for c in curves),
             statistics.fmean(c[i]["val_acc"] for c in curves)) for i in range(n)]


def frontier(rows: list[dict]) -> list[tuple[float, float, dict]]:
    """The upper envelope of accuracy against bytes sent: ``(MB, accuracy, row)`` where some setting's
    evaluation beats every evaluation, of any setting, that sent fewer bytes. From the fewest bytes up:
    for a budget of ``x`` MB, the best a setting has reached is the last entry at or below ``x``.
    (A run's evaluations on the way stand for runs with smaller budgets, which holds with a constant
    learning rate and compression; a schedule's and a cosine rate's depend on the budget.)"""
    points = sorted(((x, y, r) for r in rows for x, y in mean_curve(r) if x > 0), key=lambda p: (p[0], -p[1]))
    out, best = [], float("-inf")
    for x, y, r in points:
        if y > best:
            out.append((x, y, r))
            best = y
    return out


def frontier_markdown(rows: list[dict]) -> str:
    """The envelope as a table: one line for each stretch of bytes over which one setting leads."""
    lines = ["| from MB sent (both ways) | to MB | best acc reached | method | options | seeds |",
             "|--:|--:|--:|---|---|--:|"]
    env = frontier(rows)
    stretches: list[list] = []
    for x, y, r in env:
        if stretches and stretches[-1][3] is r:
            stretches[-1][1], stretches[-1][2] = x, y
        else:
            stretches.append([x, x, y, r])
    for x0, x1, y, r in stretches:
        lines.append(f"| {x0:,.1f} | {x1:,.1f} | {y:.4f} | {r['method']} | {r['options'] or '-'} | {r['seeds']} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    """The report's rows as CSV, one per run."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})


def variants(rows: list[dict]) -> dict[int, str]:
    """Each row's line (by ``id``): the method options that vary between its method's rows, except the
    knob that sets its compression. ``adc feature=cls`` is a line of its own; ``compression=0.1`` a point."""
    varying: dict[str, set[str]] = {}
    for method in {r["method"] for r in rows}:
        keys = [dict(r["key"]) for r in rows if r["method"] == method]
        # any key but the one that sets the compression: a method's other options, and the run's own keys
        # (train.max_steps, a codec): settings that differ in them are lines of their own, never joined
        varying[method] = {k for k in set().union(*keys) if k != "method.name" and k not in RATIO_KNOBS
                           and not k.startswith("compression_schedule.") and len({str(kk.get(k)) for kk in keys}) > 1}
    return {id(r): " ".join(f"{k.removeprefix('method.')}={v}" for k, v in r["key"]
                            if k in varying[r["method"]] and v != "None") for r in rows}


def styles_for(rows: list[dict], variant: dict[int, str]) -> dict[tuple[str, str], dict]:
    """One colour per method; each variant of a method its own marker and line style."""
    styles = {}
    for method in sorted({r["method"] for r in rows}):
        names = sorted({variant[id(r)] for r in rows if r["method"] == method}, key=lambda v: (v != "", v))
        for i, v in enumerate(names):
            styles[(method, v)] = dict(color=METHOD_COLORS.get(method, f"C{len(styles) % 10}"),
                                       marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[i % len(LINESTYLES)])
    return styles


def _shade(color: str, i: int, n: int) -> str:
    """The ``i``-th of ``n`` shades of a method's colour, from the colour itself towards white."""
    from matplotlib.colors import to_hex, to_rgb

    t = 0.55 * i / max(1, n - 1) if n > 1 else 0.0
    return to_hex(tuple(c + (1 - c) * t for c in to_rgb(color)))


def _title(rows: list[dict]) -> str:
    """What every run shares: dataset (and classes), model, split, byte budget."""
    configs = [r["runs"][0]["config"] for r in rows]

    def common(key):
        values = {str(c.get(key)) for c in configs}
        return values.pop() if len(values) == 1 else None

    parts = [common("dataset.name") or "several datasets"]
    classes = common("dataset.classes")
    if classes not in (None, "None"):
        parts[0] += f" classes {classes.strip(chr(34))}"
    parts.append(common("model.name") or "several models")
    split = common("split.index")
    if split not in (None, "None"):
        parts.append(f"split after block {split}")
    budget = common("train.budget_epochs")
    if budget not in (None, "None"):
        parts.append(f"budget: bytes of {budget} uncompressed epochs")
    fewest, most = min(r["seeds"] for r in rows), max(r["seeds"] for r in rows)
    parts.append(f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} seeds a setting")
    return ", ".join(parts)


def _log_axis(ax, values: list[float], axis: str = "x") -> None:
    """A log axis with plain, non-overlapping labels at 1-2-5 steps."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(values), max(values)
    ticks = [m * 10.0 ** e for e in range(-4, 5) for m in (1, 2, 5) if lo / 1.5 <= m * 10.0 ** e <= hi * 1.5]
    if len(ticks) < 2:  # a narrow range between two 1-2-5 steps: its ends, to 2 significant digits
        ticks = sorted({float(f"{v:.2g}") for v in (lo, (lo * hi) ** 0.5, hi)})
    getattr(ax, f"set_{axis}scale")("log")
    a = ax.xaxis if axis == "x" else ax.yaxis
    a.set_major_locator(FixedLocator(ticks))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def _legend_outside(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)


def plots(rows: list[dict], out: Path, reference: list[dict] | None = None) -> list[Path]:
    """The report's figures: accuracy against compression and against bytes sent, the frontier, and
    energy where asked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    variant = variants(rows)
    styles = styles_for(rows, variant)
    title = _title(rows)
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        lines[(r["method"], variant[id(r)])].append(r)

    # the paper's main figure: final accuracy against measured compression, one line per method variant;
    # the paper's values on the same axes where it reports our model and dataset (nowhere else)
    reference = paper_reference() if reference is None else reference
    shown = {(r["model"], r["dataset"]) for r in rows}
    same = [p for p in reference if (p["model"], p["dataset"]) in shown]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    xs = [r["measured"] for r in rows] + [p["compression"] for p in same]
    for (method, name), rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["measured"])
        st = styles[(method, name)]
        label = f"{method} {name}".strip()
        if method in ("none", "whole") and len(rs) == 1:  # the uncompressed reference, as the paper's "Base"
            ax.axhline(rs[0]["final_acc"], color=st["color"], ls="--", lw=1, label=f"{label} (uncompressed)")
            continue
        ax.errorbar([r["measured"] for r in rs], [r["final_acc"] for r in rs], yerr=[r["final_acc_sd"] for r in rs],
                    color=st["color"], marker=st["marker"], ls=st["ls"], capsize=3, ms=5, label=label)
    by: dict[str, list[dict]] = defaultdict(list)
    for p in same:
        by[p["method"]].append(p)
    for method, ps in sorted(by.items()):
        ps = sorted(ps, key=lambda p: p["compression"])
        color = METHOD_COLORS.get(method, "k")
        if method == "none":
            ax.axhline(ps[0]["accuracy"], color=color, ls=":", lw=1, label="paper: base")
            continue
        ax.plot([p["compression"] for p in ps], [p["accuracy"] for p in ps], ls=":", marker="o", mfc="none",
                color=color, label=f"paper: {method}")
    _log_axis(ax, xs)
    ax.set_xlabel("compression, measured on the wire (bytes sent / uncompressed)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    _legend_outside(fig, ax)
    fig.tight_layout()
    written.append(out / "accuracy_vs_compression.png")
    fig.savefig(written[-1], dpi=130, bbox_inches="tight")
    plt.close(fig)

    # accuracy against cumulative bytes: the mean over seeds, with a band from the lowest to the highest;
    # each setting of a method its own marker and line style, in the method's colour
    order: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (variant[id(r)], -r["measured"], r["options"])):
        order[r["method"]].append(r)
    curve_style = {id(r): dict(color=_shade(METHOD_COLORS.get(m, "#1f77b4"), i, len(rs)), marker=MARKERS[i % len(MARKERS)],
                               ls=LINESTYLES[(i // len(MARKERS) + i) % len(LINESTYLES)])
                   for m, rs in order.items() for i, r in enumerate(rs)}
    # many settings: one panel per method (the uncompressed baseline drawn in each), else one panel
    methods = sorted((m for m in order if m not in ("none", "whole")), key=lambda m: (m != "adc", m))
    panels = methods if len(rows) > 12 and len(methods) > 1 else [None]
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols + (2.5 if panels == [None] else 0), 3.3 * nrows + 0.6),
                             sharex=True, sharey=True, squeeze=False)
    all_x = []
    for k, method in enumerate(panels):
        ax = axes[k // cols][k % cols]
        shown_rows = rows if method is None else [r for r in rows if r["method"] in (method, "none")]
        for r in shown_rows:
            curves = [run["curve"] for run in r["runs"] if run["curve"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            x = [statistics.fmean((c[i]["bytes_up"] + c[i]["bytes_down"]) / 1e6 for c in curves) for i in range(n)]
            ys = [[c[i]["val_acc"] for c in curves] for i in range(n)]
            if min(x) <= 0:
                continue  # nothing sent (a model trained in one piece): no place on a log axis of bytes
            st = curve_style[id(r)]
            label = f"{r['method']} {r['options']}".strip() if method is None else (r["options"] or r["method"])
            ax.plot(x, [statistics.fmean(y) for y in ys], color=st["color"], ls=st["ls"], marker=st["marker"], ms=3,
                    label=label)
            if len(curves) > 1:
                ax.fill_between(x, [min(y) for y in ys], [max(y) for y in ys], color=st["color"], alpha=0.15, lw=0)
            all_x += x
        ax.grid(True, alpha=0.3)
        if method is not None:
            ax.set_title(method, fontsize=9, color=METHOD_COLORS.get(method, "k"))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper left", framealpha=0.8)  # curves rise to the right
        if k % cols == 0:
            ax.set_ylabel("test accuracy")
        if k // cols == nrows - 1 or k + cols >= len(panels):
            ax.set_xlabel("MB sent, both directions")
            ax.xaxis.set_tick_params(labelbottom=True)
    for k in range(len(panels), nrows * cols):
        axes[k // cols][k % cols].set_visible(False)
    if all_x:
        _log_axis(axes[0][0], all_x)
    if panels == [None]:
        axes[0][0].set_title(title, fontsize=9)
        _legend_outside(fig, axes[0][0])
    else:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    written.append(out / "accuracy_vs_bytes.png")
    fig.savefig(written[-1], dpi=130, bbox_inches="tight")
    plt.close(fig)

    written.append(frontier_plot(rows, out / "accuracy_frontier.png", title))

    # time to accuracy: compute plus the modelled link (link.bandwidth_mbps), when the runs modelled one
    timed = [r for r in rows if r["runs"] and any(c.get("link_s") for c in r["runs"][0]["curve"])]
    if timed:
        fig, ax = plt.subplots(figsize=(8, 4.6))
        times = []
        for r in timed:
            curve = r["runs"][0]["curve"]
            st = styles[(r["method"], variant[id(r)])]
            ax.plot([c["time_s"] for c in curve], [c["val_acc"] for c in curve], color=st["color"], ls=st["ls"],
                    marker=st["marker"], ms=3, label=f"{r['method']} {r['options']}".strip())
            times += [c["time_s"] for c in curve]
        _log_axis(ax, times)
        ax.set_xlabel("seconds: compute + modelled link (first seed)")
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        _legend_outside(fig, ax)
        fig.tight_layout()
        written.append(out / "accuracy_vs_time.png")
        fig.savefig(written[-1], dpi=130, bbox_inches="tight")
        plt.close(fig)

    # ADC's batch-ratio x token-ratio grid, when the runs hold one
    grid = {}
    for r in rows:
        if r["method"] != "adc":
            continue
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
        ax.set_title(title, fontsize=8)
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, label="final test accuracy")
        fig.tight_layout()
        written.append(out / "adc_grid.png")
        fig.savefig(written[-1], dpi=130)
        plt.close(fig)
    return written


CODEC_MARKERS = {"none": "o", "fp16": "s", "bf16": "P", "int8": "^", "int4": "D", "int2": "v"}


def frontier_plot(rows: list[dict], path: Path, title: str) -> Path:
    """Best accuracy against bytes sent: every setting a point (its mean over seeds, the bar their
    spread), in its method's colour, its marker its codec's, hollow under a compression schedule; the
    upper envelope over every setting's evaluations (:func:`frontier`) as a step line, the setting
    that leads each stretch of it named."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    def config(r, key, default):
        return str(r["runs"][0]["config"].get(key, default))

    def scheduled(r):
        return config(r, "compression_schedule.name", "constant") not in ("constant", "None")

    fig, ax = plt.subplots(figsize=(9.5, 5.4))
    shown = [r for r in rows if r["bytes_up"] + r["bytes_down"] > 0]
    xs = [(r["bytes_up"] + r["bytes_down"]) / 1e6 for r in shown]
    for r, x in zip(shown, xs):
        color = METHOD_COLORS.get(r["method"], "#1f77b4")
        ax.errorbar([x], [r["best_acc"]], yerr=[r["best_acc_sd"]] if r["runs_n"] > 1 else None, color=color,
                    marker=CODEC_MARKERS.get(config(r, "codec.name", "none"), "X"), mfc="none" if scheduled(r) else color,
                    ms=6, capsize=2, ls="none", alpha=0.85)
    env = frontier(shown)
    if env:
        ex, ey = [p[0] for p in env], [p[1] for p in env]
        ax.step(ex + [max(xs + ex) * 1.2], ey + ey[-1:], where="post", color="k", lw=1.2, alpha=0.7, zorder=0)
        ax.plot(ex, ey, ls="none", marker=".", ms=3, color="k", alpha=0.7)
    leader, leaders, labels = None, [], []  # each setting numbered where it takes the lead, and named in the legend
    for x, y, r in env:
        if r is not leader:
            if not any(r is l for l in leaders):
                leaders.append(r)
            labels.append((x, y, next(i for i, l in enumerate(leaders) if l is r) + 1, r))
            leader = r
    _log_axis(ax, xs + [p[0] for p in env])
    ax.autoscale_view()
    placed: list[tuple[float, float]] = []  # labels' anchors in points; one that would cover another goes above it
    for x, y, n, r in labels:
        px, py = ax.transData.transform((x, y)) * 72 / fig.dpi
        lift = 4
        while any(abs(px - qx) < 8 and abs(py + lift - qy) < 8 for qx, qy in placed):
            lift += 8
        placed.append((px, py + lift))
        ax.annotate(str(n), (x, y), xytext=(-2, lift), textcoords="offset points", fontsize=7, ha="right",
                    color=METHOD_COLORS.get(r["method"], "k"), fontweight="bold")
    # each leader's own point (where its budget ended) carries its number too, on its left: two settings of
    # one method and codec (ADC with soft labels or members) share colour and marker
    for n, r in enumerate(leaders, 1):
        x, y = (r["bytes_up"] + r["bytes_down"]) / 1e6, r["best_acc"]
        px, py = ax.transData.transform((x, y)) * 72 / fig.dpi
        # beside the point if free, else the nearest free place above or below it
        drop = next(d for d in (-3 + 8 * ((k + 1) // 2) * (1 if k % 2 else -1) for k in range(64))
                    if not any(abs(px - 8 - qx) < 8 and abs(py + d - qy) < 8 for qx, qy in placed))
        placed.append((px - 8, py + drop))
        ax.annotate(str(n), (x, y), xytext=(-6, drop), textcoords="offset points", fontsize=7, ha="right",
                    color=METHOD_COLORS.get(r["method"], "k"), fontweight="bold")
    ax.set_xlabel("MB sent for training, both directions (mean over seeds)")
    ax.set_ylabel("best test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    methods = sorted({r["method"] for r in shown})
    codecs = sorted({config(r, "codec.name", "none") for r in shown}, key=lambda c: (list(CODEC_MARKERS) + [c]).index(c))
    handles = [Line2D([], [], color=METHOD_COLORS.get(m, "#1f77b4"), marker="o", ls="none", label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", marker=CODEC_MARKERS.get(c, "X"), ls="none", label=f"codec={c}") for c in codecs]
    if any(scheduled(r) for r in shown):
        handles.append(Line2D([], [], color="0.3", marker="o", mfc="none", ls="none", label="compression schedule"))
    handles.append(Line2D([], [], color="k", lw=1.2, alpha=0.7, label="upper envelope: the best accuracy\nany setting reached for the bytes"))
    if env:
        handles += [Line2D([], [], ls="none", marker=f"${i}$", color=METHOD_COLORS.get(r["method"], "k"),
                           label=f"{r['method']} {r['options']}".strip()) for i, r in enumerate(leaders, 1)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``splitvit report RUNS... [out=DIR] [energy.device=...]``: tables and figures from run directories."""
    ap = KeyValueParser(prog="splitvit report", description=plain(__doc__))
    ap.add_argument("dirs", nargs="+", help="run or sweep directories")
    ap.add_argument("--out", default=None, help="where report.md, report.csv and the plots go (default: the first DIR)")
    ap.add_argument("--plots", choices=("true", "false"), default="true",
                    help="false: the tables only (report.md, report.csv, energy.md), no figures")
    ap.epilog = ("a device of your own: energy.device=custom energy.watts=W energy.gflops=G (or energy.joules_per_flop=J); "
                 "a radio of your own: energy.radio=custom energy.alpha_up=A energy.alpha_down=A energy.beta=B (mW per "
                 "Mbit/s, mW)")
    ap.add_argument("--energy.device", dest="energy", default=None, metavar="DEVICE",
                    help="also energy.md/energy.png: the client's energy per step, run and accuracy point on DEVICE "
                         "(jetson_nano_10w, jetson_nano_5w, jetson_orin_nano_7w, jetson_orin_nano_15w, raspberry_pi_4, "
                         "this_machine, custom)")
    ap.add_argument("--energy.radio", dest="radio", default="wifi,lte", metavar="RADIOS",
                    help="radio power models, comma-separated (default: wifi,lte; custom)")
    ap.add_argument("--energy.mbps", dest="mbps", type=float, default=None, metavar="MBPS",
                    help="link rate, Mbit/s both ways (default: the runs' link.bandwidth_mbps, else 10)")
    for old, dest in (("--energy", "energy"), ("--radio", "radio"), ("--mbps", "mbps")):  # the earlier spellings
        ap.add_argument(old, dest=dest, type=float if dest == "mbps" else str, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    custom = {"energy." + k for k in ENERGY_KEYS - {"device", "radio", "mbps"}}
    energy_keys = {a.split("=", 1)[0].removeprefix("energy."): a.split("=", 1)[1] for a in argv
                   if a.startswith("energy.") and "=" in a and a.split("=", 1)[0] not in ("energy.device", "energy.radio", "energy.mbps")}
    unknown = {f"energy.{k}" for k in energy_keys} - custom
    if unknown:
        print(f"splitvit report: error: unknown key {sorted(unknown)[0]}; the energy keys: "
              + ", ".join(f"energy.{k}" for k in sorted(ENERGY_KEYS)), file=sys.stderr)
        return 2
    args = ap.parse_args([a for a in argv if not (a.startswith("energy.") and a.split("=", 1)[0] in custom)])
    args.radio = args.radio.strip("[]")
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as e:
        print(f"splitvit report: error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"splitvit report: error: no summary.json under {', '.join(args.dirs)}; point it at run or sweep directories",
              file=sys.stderr)
        return 2
    warnings: list[str] = []
    rows = aggregate(runs, warn=warnings.append)
    for w in warnings:
        print(f"splitvit report: warning: {w}", file=sys.stderr)
    out = Path(args.out or args.dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    envelope = ("\nThe upper envelope of accuracy against bytes sent (accuracy_frontier.png): over each stretch of "
                "bytes, the setting whose evaluations beat every evaluation that sent fewer bytes.\n\n"
                + frontier_markdown(rows))
    (out / "report.md").write_text(table + envelope + "".join(f"\nwarning: {w}\n" for w in warnings))
    write_csv(rows, out / "report.csv")
    written = plots(rows, out) if args.plots == "true" else []
    if args.energy:
        try:
            written += energy_report(rows, out, args.energy, args.radio.split(","), args.mbps,
                                     {k: float(v) for k, v in energy_keys.items()}, figure=args.plots == "true")
        except ValueError as e:
            print(f"splitvit report: error: {e}", file=sys.stderr)
            return 2
    print(table)
    print(f"{len(runs)} runs, {len(rows)} settings; wrote {out / 'report.md'}, {out / 'report.csv'}, "
          + ", ".join(str(p) for p in written))
    return 0


ENERGY_KEYS = {"device", "radio", "mbps", "watts", "gflops", "joules_per_flop", "alpha_up", "alpha_down", "beta"}


def energy_report(rows: list[dict], out: Path, device_name: str, radio_names: list[str], mbps: float | None,
                  custom: dict | None = None, figure: bool = True) -> list[Path]:
    """``energy.md`` and (with ``figure``) ``energy.png``: what each setting's steps cost the client
    (:mod:`splitvit.energy`). ``custom``: ``watts``/``gflops``/``joules_per_flop`` for ``energy.device=custom``,
    ``alpha_up``/``alpha_down``/``beta`` for ``energy.radio=custom``."""
    from .energy import device, energy_markdown, energy_rows, radio

    c = custom or {}
    dev = device(device_name, c.get("watts"), c.get("gflops"), c.get("joules_per_flop"))
    radios = {n: radio(n, c.get("alpha_up"), c.get("alpha_down"), c.get("beta")) for n in radio_names}
    if mbps is None:
        rates = {r["config"].get("link.bandwidth_mbps") for row in rows for r in row["runs"]}
        mbps = rates.pop() if len(rates) == 1 and None not in rates else 10.0
    split_rows = [r for r in rows if r["method"] != "whole"]
    erows = energy_rows(split_rows, dev, radios, mbps, mbps)
    variant = variants(split_rows)  # one line per method variant, as in accuracy_vs_compression.png
    styles = styles_for(split_rows, variant)
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r, e in zip(split_rows, erows):
        lines[(r["method"], variant[id(r)])].append(e)
    text = energy_markdown(erows, dev, radios, mbps, mbps)
    (out / "energy.md").write_text(text)
    print(text)
    if not figure:
        return [out / "energy.md"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({e["method"] for e in erows})
    colors = {m: st["color"] for (m, _), st in styles.items()}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    first = next(iter(radios))
    for (method, var), es in sorted(lines.items()):  # per step, and per accuracy point, against compression
        pts = sorted((e["measured"], e[first]["step_j"], e[first]["per_point_j"]) for e in es)
        st = styles[(method, var)]
        for ax, k in ((axes[0], 1), (axes[1], 2)):
            ax.plot([p[0] for p in pts], [p[k] for p in pts], marker=st["marker"], ls=st["ls"], color=st["color"],
                    label=f"{method} {var}".strip())
    axes[0].set_ylabel(f"client J per step ({first}, {mbps:g} Mbit/s)")
    axes[1].set_ylabel(f"client J per accuracy point over the run ({first})")
    for ax in axes[:2]:
        _log_axis(ax, [e["measured"] for e in erows])
        ax.set_xlabel("compression measured (bytes / uncompressed bytes)")
    _log_axis(axes[0], [e[first]["step_j"] for e in erows], "y")
    _log_axis(axes[1], [e[first]["per_point_j"] for e in erows], "y")
    # the crossover question: energy per step against the link rate, for each method's most compressed setting
    rates = [10 ** (i / 10) for i in range(0, 31)]  # 1 to 1000 Mbit/s
    for i, (name, r) in enumerate(radios.items()):
        for method in methods:
            e = min((e for e in erows if e["method"] == method), key=lambda e: e["measured"])
            axes[2].plot(rates, [e["compute_j"] + r.joules(e["up"], e["down"], x, x) for x in rates],
                         ls=("-", "--", ":")[i % 3], color=colors[method],
                         label=f"{method} {e['measured']:.2g} ({name})" if i == 0 or len(methods) < 4 else None)
    _log_axis(axes[2], rates)
    _log_axis(axes[2], [y for line in axes[2].get_lines() for y in line.get_ydata()], "y")
    axes[2].set_xlabel("link rate, both ways (Mbit/s)")
    axes[2].set_ylabel("client J per step: compute + radio")
    axes[2].set_title("line style: " + ", ".join(f"{n} {('solid', 'dashed', 'dotted')[i % 3]}" for i, n in enumerate(radios)),
                      fontsize=8)
    axes[0].set_title(f"{device_name}: {dev.joules_per_flop * 1e12:.0f} pJ/FLOP", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")  # the diagonal leaves that corner empty
    axes[2].legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "energy.png", dpi=120)
    plt.close(fig)
    return [out / "energy.md", out / "energy.png"]
