"""Tables and a figure from ``experiments/channels.sh``'s runs (README, "Noisy and lossy channels").

    python experiments/channels_report.py results/cpu_protocol/channels

Writes ``report.md`` (the tables) and ``accuracy_vs_channel.png`` into the same folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = {"none": "none", "adc0.1": "ADC 0.1", "topk0.1": "Top-K 0.1", "quant4": "quant 4-bit"}
SNRS = (20, 10, 0, -10)
LOSSES = (0.05, 0.2)


def load(root: Path) -> dict[tuple[str, str], dict]:
    runs = {}
    for s in root.glob("*/*/summary.json"):
        runs[(s.parent.parent.name, s.parent.name)] = json.loads(s.read_text())
    return runs


def acc(runs, method, job) -> str:
    s = runs.get((method, job))
    return "" if s is None else f"{s['final_val_acc']:.4f}"


def snr_table(runs, channel: str) -> list[str]:
    head = "| method | ideal | " + " | ".join(f"{snr} dB" for snr in SNRS) + " | SNR measured up / down at 0 dB |"
    rows = [head, "| --- " * (len(SNRS) + 3) + "|"]
    for m, label in METHODS.items():
        s0 = runs.get((m, f"{channel}_0dB")) or {}
        up, down = s0.get("channel_snr_db_up"), s0.get("channel_snr_db_down")
        ber = s0.get("channel_ber_up")
        measured = (f"{up:.2f} / {down:.2f} dB" if up is not None else f"BER {ber:.3f}" if ber is not None else "")
        rows.append(f"| {label} | {acc(runs, m, 'ideal')} | " + " | ".join(acc(runs, m, f"{channel}_{snr}dB") for snr in SNRS)
                    + f" | {measured} |")
    return rows


def loss_table(runs) -> list[str]:
    rows = ["| method | ideal | " + " | ".join(f"{int(l * 100)} % {'ARQ' if a else 'no ARQ'}" for l in LOSSES for a in (False, True))
            + " | resent at 20 % (ARQ) |", "| --- " * 7 + "|"]
    for m, label in METHODS.items():
        cells = [acc(runs, m, f"loss{l}_arq-{str(a).lower()}") for l in LOSSES for a in (False, True)]
        s = runs.get((m, "loss0.2_arq-true"))
        resent = ""
        if s is not None:
            r = s["bytes_retransmitted_up"] + s["bytes_retransmitted_down"]
            resent = f"{r / 1e6:.1f} MB ({r / (s['bytes_up'] + s['bytes_down'] - r):.1%})"
        rows.append(f"| {label} | {acc(runs, m, 'ideal')} | " + " | ".join(cells) + f" | {resent} |")
    return rows


def research_table(runs) -> list[str]:
    rows = ["| method | ideal | research code's normalisation | corrected (P = mean x² per sample) |", "| --- " * 4 + "|"]
    for m in ("none", "adc0.1"):
        cells = []
        for job in ("research", "research_corrected"):
            s = runs.get((m, job))
            cells.append("" if s is None else f"{s['final_val_acc']:.4f} (SNR applied: up {s['channel_snr_db_up']:.1f}, "
                         f"down {s['channel_snr_db_down']:.1f} dB)")
        rows.append(f"| {METHODS[m]} | {acc(runs, m, 'ideal')} | " + " | ".join(cells) + " |")
    return rows


def figure(runs, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, channel in zip(axes[:2], ("awgn", "rayleigh")):
        for m, label in METHODS.items():
            pts = [(snr, runs[(m, f"{channel}_{snr}dB")]["final_val_acc"]) for snr in SNRS if (m, f"{channel}_{snr}dB") in runs]
            if pts:
                line, = ax.plot(*zip(*sorted(pts)), marker="o", label=label)
                if (m, "ideal") in runs:
                    ax.axhline(runs[(m, "ideal")]["final_val_acc"], color=line.get_color(), ls=":", lw=1)
        ax.set_title(f"{channel.upper() if channel == 'awgn' else 'Rayleigh (ZF)'}: dotted = ideal channel")
        ax.set_xlabel("SNR (dB), activations and gradients")
    axes[0].set_ylabel("top-1 accuracy, classes 50-99 (clean evaluation)")
    ax = axes[2]
    for m, label in METHODS.items():
        for arq, ls in ((False, "-"), (True, "--")):
            pts = [(0.0, runs[(m, "ideal")]["final_val_acc"])] if (m, "ideal") in runs else []
            pts += [(l * 100, runs[(m, f"loss{l}_arq-{str(arq).lower()}")]["final_val_acc"]) for l in LOSSES
                    if (m, f"loss{l}_arq-{str(arq).lower()}") in runs]
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", ls=ls, label=f"{label}{' ARQ' if arq else ''}",
                        color=f"C{list(METHODS).index(m)}")
    ax.set_title("packet loss (dashed: ARQ)")
    ax.set_xlabel("packets lost (%)")
    axes[0].legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu_protocol/channels")
    runs = load(root)
    if not runs:
        print(f"no finished runs under {root}", file=sys.stderr)
        return 1
    lines = ["# Channels on the CPU protocol", "", f"{len(runs)} runs, seed 0, 392 steps each.", "",
             "## AWGN", "", *snr_table(runs, "awgn"), "", "## Rayleigh block fading, zero forcing", "",
             *snr_table(runs, "rayleigh"), "", "## Packet loss", "", *loss_table(runs), "",
             "## The research code's setting (AWGN, SNR uniform in [-10, 10] dB, both ways)", "", *research_table(runs), ""]
    (root / "report.md").write_text("\n".join(lines))
    figure(runs, root / "accuracy_vs_channel.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
