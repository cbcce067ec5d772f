"""The several-clients table from ``experiments/clients.sh``'s runs (docs: "Several clients").

    python experiments/clients_report.py results/cpu_protocol/clients

Writes ``report.md`` (the table) into the same folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = {"none": "none", "adc0.1": "ADC, xi = 0.1", "topk0.1": "Top-K, 0.1"}
DATA = {"iid": "IID", "dirichlet": "Dirichlet"}


def row(name: str, s: dict) -> str:
    method, data = name.rsplit("_", 1)
    label = DATA[data] + (f" {s['alpha']:g}" if data == "dirichlet" else "")
    per_client = [(c["bytes_up"] + c["bytes_down"]) / 1e6 for c in s["per_client"]]
    cells = [label, METHODS[method], f"{s['final_val_acc']:.4f}", f"{s['final_val_acc_compressed']:.4f}", str(s["rounds"]),
             f"{s['steps']:,}", f"{(s['bytes_up'] + s['bytes_down']) / 1e6:.1f}", f"{min(per_client):.1f}-{max(per_client):.1f}",
             f"{(s['weights_bytes_up'] + s['weights_bytes_down']) / 1e6:.1f}", f"{s['total_bytes'] / 1e6:.1f}",
             f"{s['compression_measured']:.3f}", f"{s['wall_s']:,.0f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/cpu_protocol/clients")
    runs = {s.parent.name: json.loads(s.read_text()) for s in root.glob("*/summary.json")}
    lines = ["| data | method | final acc | acc, eval through the method | rounds | steps | training MB (all) | "
             "training MB per client | weights + control MB | total MB | measured compression | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for data in DATA:
        for method in METHODS:
            if f"{method}_{data}" in runs:
                lines.append(row(f"{method}_{data}", runs[f"{method}_{data}"]))
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
