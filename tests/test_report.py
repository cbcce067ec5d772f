import csv
import json
import subprocess
import sys

import pytest

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
    assert report([str(runs), f"out={tmp_path / 'tables'}", "plots=false", "energy.device=raspberry_pi_4"]) == 0
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["energy.md", "report.csv", "report.md"]
    assert (tmp_path / "tables" / "report.md").read_text() == (tmp_path / "out" / "report.md").read_text()


def test_multirun_sweep_then_report_from_the_command_line(tmp_path):
    sweep = tmp_path / "multi"
    cmd = [sys.executable, "-m", "splitvit.cli", "train", "--multirun", *SMALL, "train.max_steps=2",
           "method=adc,none", f"hydra.sweep.dir={sweep}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (sweep / "0_method=adc" / "summary.json").exists() and (sweep / "1_method=none" / "summary.json").exists()
    r = subprocess.run([sys.executable, "-m", "splitvit.cli", "report", str(sweep)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and "| none |" in r.stdout


def test_report_of_nothing_says_what_to_do(tmp_path, capsys):
    assert report([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "no summary.json" in err and out == ""  # errors go to stderr


def fake_run(root, name, seed=0, acc=0.5, **config):
    """A run directory as fit writes it: summary.json and the resolved config.yaml."""
    from omegaconf import OmegaConf

    cfg = make_cfg(*SMALL, *(f"{k}={v}" for k, v in config.items()), f"seed={seed}", f"run_dir={root / name}")
    d = root / name
    d.mkdir(parents=True)
    OmegaConf.save(cfg, d / "config.yaml", resolve=True)
    summary = {"method": cfg.method.name, "method_options": {}, "dataset": cfg.dataset.name, "model": cfg.model.name,
               "split_index": cfg.split.index, "eval_mode": "uncompressed", "seed": seed, "final_val_acc": acc,
               "best_val_acc": acc, "compression_target": 0.1, "compression_nominal": 0.1, "compression_measured": 0.1,
               "bytes_up": 1, "bytes_down": 1, "steps": 1, "wall_s": 1.0}
    (d / "summary.json").write_text(json.dumps(summary))


def test_a_run_made_before_a_key_existed_counts_as_its_default(tmp_path):
    """An older splitvit wrote no channel section and no quant grids: its run is the same setting as a
    newer run at those keys' defaults, and a newer run away from them is another setting."""
    import yaml

    from splitvit.report import aggregate, find_runs

    fake_run(tmp_path, "old", seed=0, method="quant")
    fake_run(tmp_path, "new", seed=1, method="quant")
    fake_run(tmp_path, "zero", seed=0, method="quant", **{"method.grad_grid": "zero"})
    old = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del old["channel"], old["method"]["grid"], old["method"]["grad_grid"], old["train"]["profile"]
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(old))
    rows = aggregate(find_runs([str(tmp_path)]))
    assert sorted(r["seeds"] for r in rows) == [1, 2]
    assert [r["options"] for r in rows if r["seeds"] == 1] == ["grad_grid=zero"]
    from splitvit.config_keys import with_defaults

    own = with_defaults({"method.name": "mine", "method.k": 3, "seed": 0})  # a method splitvit does not ship
    assert not any(k.startswith("method.") and k not in ("method.name", "method.k") for k in own)
    assert own["channel.name"] == "ideal"  # the other groups' defaults still apply


@pytest.mark.parametrize("key, a, b", [
    ("train.batch_size", 16, 32),            # a training key: the bug that averaged two batch sizes
    ("method.compression", 0.1, 0.2),        # a method option
    ("dataset.classes", "0:5", "5:10"),      # a dataset key
    ("model.depth", 2, 3),                   # a model key
    ("split.index", 1, 2),
    ("eval.mode", "uncompressed", "tokens"),
    ("wire.dtype", "float32", "bfloat16"),
    ("link.bandwidth_mbps", 10, 20),
])
def test_runs_that_differ_in_any_key_are_separate_rows(tmp_path, key, a, b):
    from splitvit.report import aggregate, find_runs

    fake_run(tmp_path, "a", acc=0.1211, **{key: a})
    fake_run(tmp_path, "b", acc=0.0977, **{key: b})
    fake_run(tmp_path, "c", seed=1, acc=0.2, **{key: b})
    rows = aggregate(find_runs([str(tmp_path)]))
    assert sorted((r["seeds"], r["final_acc"]) for r in rows) == [(1, 0.1211), (2, pytest.approx(0.14885))]
    short = key.removeprefix("method.")
    assert {r["options"] for r in rows} == {f"{short}={a}", f"{short}={b}"}


def test_runs_that_differ_in_their_codec_are_separate_rows_named_by_it(tmp_path):
    """A codec's options tell rows apart among that codec's runs only (``none`` has none)."""
    from splitvit.report import aggregate, find_runs

    fake_run(tmp_path, "a", acc=0.12, codec="none")
    fake_run(tmp_path, "b", acc=0.11, **{"codec": "int4", "codec.grid": "minmax"})
    fake_run(tmp_path, "c", acc=0.10, **{"codec": "int4", "codec.grid": "zero"})
    rows = aggregate(find_runs([str(tmp_path)]))
    assert {r["options"] for r in rows} == {"codec=none", "codec=int4 codec.grid=minmax", "codec=int4 codec.grid=zero"}


def test_keys_that_cannot_change_a_result_do_not_split_rows(tmp_path):
    from splitvit.report import aggregate, find_runs

    fake_run(tmp_path, "a", seed=0, **{"train.progress": "true", "dataset.workers": 0})
    fake_run(tmp_path, "b", seed=1, **{"train.progress": "false", "dataset.workers": 2})
    (row,) = aggregate(find_runs([str(tmp_path)]))
    assert row["seeds"] == 2


def test_a_repeated_seed_is_warned_about(tmp_path, capsys):
    fake_run(tmp_path, "a", seed=0, acc=0.1)
    fake_run(tmp_path, "b", seed=0, acc=0.3)
    assert report([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "share seed 0" in err and "warning" in (tmp_path / "out" / "report.md").read_text()


def test_report_shows_the_paper_beside_ours(tmp_path):
    from splitvit.report import aggregate, paper_reference, plots

    reference = paper_reference()
    assert {"none", "adc", "bottlenet", "topk", "randtopk", "c3sl"} == {p["method"] for p in reference}
    assert len(reference) == 1 + 7 + 7 + 5 + 5 + 5
    run = {"method": "adc", "method_options": {"compression": 0.1}, "dataset": "cifar100", "model": "deit_tiny_patch16_224",
           "split_index": 3, "eval_mode": "uncompressed", "final_val_acc": 0.70, "best_val_acc": 0.71,
           "compression_target": 0.1, "compression_nominal": 0.098, "compression_measured": 0.1, "bytes_up": 1,
           "bytes_down": 1, "steps": 10, "wall_s": 1.0, "curve": [], "run_dir": "r",
           "config": {"method.name": "adc", "dataset.name": "cifar100", "seed": 0}}
    other = {**run, "dataset": "digits", "config": {"method.name": "adc", "dataset.name": "digits", "seed": 0}}
    rows = aggregate([run, other])
    assert [r["paper_acc"] for r in rows] == [0.772, None]  # cifar100 row first
    from splitvit.report import markdown

    assert "| 0.772 |" in markdown(rows) and "| paper |" in markdown(rows)
    assert "paper" not in markdown(rows[1:])  # no row the paper reports: no column of dashes
    assert (tmp_path / "accuracy_vs_compression.png") in plots(rows, tmp_path)


def test_many_settings_get_one_panel_per_method(tmp_path):
    from splitvit.report import aggregate, find_runs, plots

    for method, ratios in (("adc", (0.05, 0.1, 0.2, 0.5)), ("topk", (0.05, 0.1, 0.2, 0.5)), ("c3sl", (0.1, 0.2, 0.5)),
                           ("quant", (0.125, 0.25)), ("none", (None,))):
        for ratio in ratios:
            name = f"{method}{ratio}"
            fake_run(tmp_path / "runs", name, method=method, **({"method.compression": ratio} if ratio else {}))
            curve = [{"bytes_up": b, "bytes_down": b, "val_acc": a} for b, a in ((1e6, 0.1), (2e6, 0.2))]
            (tmp_path / "runs" / name / "metrics.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve))
    rows = aggregate(find_runs([str(tmp_path / "runs")]))
    assert len(rows) == 14
    written = plots(rows, tmp_path)
    assert (tmp_path / "accuracy_vs_bytes.png") in written
    from PIL import Image

    w, h = Image.open(tmp_path / "accuracy_vs_bytes.png").size
    assert h > 500  # two rows of panels (four methods, three to a row), not one crowded axis


def curve_run(root, name, points, seed=0, **config):
    """A fake run whose evaluations are ``points``: (MB sent, accuracy)."""
    fake_run(root, name, seed=seed, acc=max(a for _, a in points), **config)
    d = root / name
    rows = [{"step": i + 1, "bytes_up": int(mb * 1e6 / 2), "bytes_down": int(mb * 1e6 / 2), "val_acc": a}
            for i, (mb, a) in enumerate(points)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((d / "summary.json").read_text())
    summary.update(bytes_up=rows[-1]["bytes_up"], bytes_down=rows[-1]["bytes_down"], best_val_acc=max(a for _, a in points))
    (d / "summary.json").write_text(json.dumps(summary))


def test_the_frontier_is_the_upper_envelope_over_seeds_and_schedules(tmp_path):
    from splitvit.report import aggregate, find_runs, frontier

    # adc at 0.1 leads while bytes are few; quant catches up and leads from 40 MB; none never leads
    curve_run(tmp_path, "adc0", [(10, 0.20), (20, 0.25), (40, 0.26)], seed=0, **{"method": "adc", "method.compression": 0.1})
    curve_run(tmp_path, "adc1", [(10, 0.22), (20, 0.27), (40, 0.28)], seed=1, **{"method": "adc", "method.compression": 0.1})
    curve_run(tmp_path, "quant", [(20, 0.15), (40, 0.30), (80, 0.38)], **{"method": "quant"})
    curve_run(tmp_path, "none", [(40, 0.10), (80, 0.20)], **{"method": "none"})
    curve_run(tmp_path, "sched", [(15, 0.05), (30, 0.24)], **{"method": "adc", "compression_schedule": "linear",
                                                                   "compression_schedule.start": 0.02, "compression_schedule.end": 1.0})
    rows = aggregate(find_runs([str(tmp_path)]))
    env = [(x, round(y, 4), r["method"], r["options"]) for x, y, r in frontier(rows)]
    assert env == [(10, 0.21, "adc", ""), (20, 0.26, "adc", ""),
                   (40, 0.30, "quant", ""), (80, 0.38, "quant", "")]  # adc's mean over its seeds; the schedule never leads
    labels = {r["options"] for r in rows}
    assert "schedule=linear(0.02→1)" in labels  # the schedule's ends name it, not method.compression
    assert report([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 10.0 | 20.0 | 0.2600 | adc | - | 2 |" in text and "| 40.0 | 80.0 | 0.3800 | quant |" in text
    assert (tmp_path / "out" / "accuracy_frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_a_server_s_federation_summary_is_not_taken_for_a_run(tmp_path):
    fake_run(tmp_path, "client0")
    (tmp_path / "server" / "federation").mkdir(parents=True)
    (tmp_path / "server" / "federation" / "summary.json").write_text(json.dumps({"rounds": 2, "steps": 12, "bytes_up": 5}))
    assert report([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert len(list(csv.DictReader((tmp_path / "out" / "report.csv").open()))) == 1


def test_every_subcommand_takes_key_value_and_its_help_says_so(tmp_path, capsys):
    fake_run(tmp_path, "a")
    assert report([str(tmp_path), f"out={tmp_path / 'kv'}"]) == 0 and (tmp_path / "kv" / "report.md").is_file()
    with pytest.raises(SystemExit):
        report(["--help"])
    text = capsys.readouterr().out
    assert "out=OUT" in text and "energy.device=DEVICE" in text and "``" not in text and ":data:" not in text
    from splitvit.plan import main as plan

    assert plan(["--multirun", *SMALL, "method.compression=0.1,0.2"]) == 0  # as given to train: accepted
    assert "2 jobs" in capsys.readouterr().out


def test_keys_that_change_nothing_computed_do_not_split_settings_and_those_that_do_are_lines(tmp_path):
    from splitvit.report import aggregate, find_runs, variants

    fake_run(tmp_path, "a", **{"method.compression": 0.1, "train.profile": "true"})
    fake_run(tmp_path, "b", seed=1, **{"method.compression": 0.1})
    fake_run(tmp_path, "c", **{"method.compression": 0.2, "train.max_steps": 5})
    fake_run(tmp_path, "d", **{"method.compression": 0.1, "train.max_steps": 5})
    rows = aggregate(find_runs([str(tmp_path)]))
    assert sorted(r["runs_n"] for r in rows) == [1, 1, 2]  # train.profile split nothing
    lines = variants(rows)
    assert {lines[id(r)] for r in rows} == {"train.max_steps=5", ""}  # two lines: 5 steps, and the cap unset
