import csv
import subprocess
import sys

from conftest import SMALL, make_cfg
from splitvit.report import main as report
from splitvit.train import fit


def test_report_aggregates_seeds_and_draws_the_plots(tmp_path):
    runs = tmp_path / "sweep"
    for i, (method, extra, seed) in enumerate([
        ("adc", ["method.batch_ratio=0.5", "method.token_ratio=0.5"], 0),
        ("adc", ["method.batch_ratio=0.5", "method.token_ratio=0.5"], 1),
        ("adc", ["method.batch_ratio=0.25", "method.token_ratio=0.5"], 0),
        ("adc", ["method.batch_ratio=0.5", "method.token_ratio=0.25"], 0),
        ("adc", ["method.batch_ratio=0.25", "method.token_ratio=0.25"], 0),
        ("none", [], 0),
    ]):
        fit(make_cfg(*SMALL, f"method={method}", *extra, f"seed={seed}", "train.max_steps=2", "link.bandwidth_mbps=20"),
            runs / str(i))
    assert report([str(runs), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "report.csv").open()))
    assert len(rows) == 5  # the two seeds of one setting are one row
    seeded = [r for r in rows if r["seeds"] == "2"]
    assert len(seeded) == 1 and float(seeded[0]["final_acc_sd"]) >= 0
    for png in ("accuracy_vs_compression.png", "accuracy_vs_bytes.png", "adc_grid.png", "accuracy_vs_time.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    assert "| adc |" in (tmp_path / "out" / "report.md").read_text()


def test_multirun_sweep_then_report_from_the_command_line(tmp_path):
    sweep = tmp_path / "multi"
    cmd = [sys.executable, "-m", "splitvit.cli", "train", "--multirun", *SMALL, "train.max_steps=2",
           "method=adc,none", f"hydra.sweep.dir={sweep}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (sweep / "0" / "summary.json").exists() and (sweep / "1" / "summary.json").exists()
    r = subprocess.run([sys.executable, "-m", "splitvit.cli", "report", str(sweep)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "| none |" in r.stdout


def test_report_of_nothing_says_what_to_do(tmp_path):
    assert report([str(tmp_path)]) == 2


def test_report_shows_the_paper_beside_ours(tmp_path):
    from splitvit.report import aggregate, paper_reference, plots

    reference = paper_reference()
    assert {"none", "adc", "bottlenet", "topk", "randtopk", "c3sl"} == {p["method"] for p in reference}
    assert len(reference) == 1 + 7 + 7 + 5 + 5 + 5
    run = {"method": "adc", "method_options": {"compression": 0.1}, "dataset": "cifar100", "model": "deit_tiny_patch16_224",
           "split_index": 3, "eval_mode": "uncompressed", "final_val_acc": 0.70, "best_val_acc": 0.71,
           "compression_target": 0.1, "compression_nominal": 0.098, "compression_measured": 0.1, "bytes_up": 1,
           "bytes_down": 1, "steps": 10, "curve": [], "runs": []}
    other = {**run, "dataset": "digits"}
    rows = aggregate([run, other])
    assert [r["paper_acc"] for r in rows] == [0.772, None]  # cifar100 row first
    from splitvit.report import markdown

    assert "| 0.772 |" in markdown(rows)
    assert (tmp_path / "accuracy_vs_compression.png") in plots(rows, tmp_path)
