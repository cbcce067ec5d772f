"""The energy model's arithmetic, its profiles, and splitvit report --energy on a tiny run."""

from __future__ import annotations

import pytest
import yaml

from conftest import SMALL, make_cfg
from splitvit import energy
from splitvit.energy import DEVICES, RADIOS, Device, Radio, crossover_mbps, device, radio
from splitvit.report import main as report
from splitvit.train import fit


def test_compute_and_radio_energy_by_hand():
    d = Device(10.0, 250.0, "test")
    assert d.joules_per_flop == pytest.approx(10 / 250e9)  # 40 pJ/FLOP
    r = Radio(alpha_up=300.0, alpha_down=100.0, beta=200.0, source="test")
    # 1 MB up at 8 Mbit/s: 1 s at 300 * 8 + 200 = 2600 mW -> 2.6 J; 0.5 MB down at 4 Mbit/s: 1 s at 600 mW
    assert r.joules(1e6, 0.5e6, 8.0, 4.0) == pytest.approx(2.6 + 0.6)
    assert r.joules_per_bit(8.0) == pytest.approx((300 + 200 / 8) * 1e-9)


def test_crossover_rate_by_hand():
    r = Radio(300.0, 100.0, 200.0, "test")
    saved_up, saved_down = 1e6, 0.0  # bytes a step saves
    floor = 8e-9 * 300 * 1e6  # 2.4 mJ: the saved bytes' cost as the rate grows without bound
    assert crossover_mbps(floor / 2, saved_up, saved_down, r) is None  # cheaper than the floor: pays at every rate
    extra = floor + 8e-9 * 200 * 1e6 / 50  # pays exactly at 50 Mbit/s
    rate = crossover_mbps(extra, saved_up, saved_down, r)
    assert rate == pytest.approx(50.0)
    assert r.joules(saved_up, 0, rate, rate) == pytest.approx(extra)  # at the crossover, the two costs meet
    assert crossover_mbps(1.0, 0.0, 0.0, r) == 0.0  # saves nothing: never pays


def test_profiles_and_custom_values():
    assert {"jetson_nano_10w", "jetson_nano_5w", "jetson_orin_nano_7w", "jetson_orin_nano_15w", "raspberry_pi_4"} <= set(DEVICES)
    assert DEVICES["jetson_nano_10w"].gflops == pytest.approx(128 * 2 * 0.9216, rel=1e-3)
    assert {"wifi", "lte"} <= set(RADIOS)
    assert device("custom", watts=5, gflops=100).joules_per_flop == pytest.approx(5e-11)
    assert device("custom", joules_per_flop=3e-11).joules_per_flop == pytest.approx(3e-11)
    assert radio("custom", alpha_up=1, alpha_down=2, beta=3).beta == 3
    with pytest.raises(ValueError, match="energy.device"):
        device("jetson_xavier")
    with pytest.raises(ValueError, match="energy.watts"):
        device("custom", watts=5)
    mine = energy.this_machine()
    assert mine.estimated and mine.gflops > 0


def test_report_energy_on_tiny_runs(tmp_path, capsys):
    base = (*SMALL, "train.max_steps=3", "eval.max_batches=1")
    fit(make_cfg(*base, "method=none"), tmp_path / "runs" / "none")
    fit(make_cfg(*base, "method=adc", "train.profile=true"), tmp_path / "runs" / "adc")  # FLOPs from its profile
    # the none run as an older splitvit saved it, before channels and split.grad_center: its FLOPs are
    # counted from its config, with those keys at their defaults
    saved = tmp_path / "runs" / "none" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["channel"], old["split"]["grad_center"]
    saved.write_text(yaml.safe_dump(old))
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--energy", "jetson_nano_10w", "--mbps", "20"]) == 0
    text = (tmp_path / "out" / "energy.md").read_text()
    assert "20 Mbit/s" in text and "pays at every rate" in text and (tmp_path / "out" / "energy.png").is_file()
    # the FLOPs counted from the none run's config equal what a profile counts for the same step
    flops = energy.client_step_flops(make_cfg(*base, "method=none"), 10)
    assert f"{flops / 1e9:.2f}" in text


def test_report_takes_energy_keys_and_custom_profiles(tmp_path):
    fit(make_cfg(*SMALL, "train.max_steps=2", "eval.max_batches=1", "method=none"), tmp_path / "runs" / "none")
    out = tmp_path / "out"
    assert report([str(tmp_path / "runs"), "--out", str(out), "energy.device=custom", "energy.watts=4", "energy.gflops=100",
                   "energy.radio=custom", "energy.alpha_up=100", "energy.alpha_down=50", "energy.beta=10", "energy.mbps=5"]) == 0
    text = (out / "energy.md").read_text()
    assert "custom: 4 W at 100 GFLOP/s" in text and "40.0 pJ/FLOP" in text and "5 Mbit/s" in text
    assert report([str(tmp_path / "runs"), "--out", str(out), "energy.device=custom", "energy.watts=4"]) == 2
    assert report([str(tmp_path / "runs"), "--out", str(out), "energy.devise=jetson_nano_10w"]) == 2
