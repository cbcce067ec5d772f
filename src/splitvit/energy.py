"""What a training step costs the edge device in energy: compute plus radio.

    E_step = FLOPs_client * J_per_FLOP(device)  +  P_up(r_up) * bits_up / r_up  +  P_down(r_down) * bits_down / r_down

Compute: the client's FLOPs per step (``train.profile=true`` counts them; :func:`client_step_flops`
counts them from a run's config) at the device's energy per FLOP, its power over its FP32 rate: a
device running flat out at its peak rate, so a lower bound on what a real kernel costs. Radio: the
power model of Huang et al. (MobiSys 2012), P = alpha * rate + beta while the radio is active,
for the bytes each step sends up and receives down, at the link model's rates
(``link.bandwidth_mbps``, ``link.downlink_mbps``).

Every number below carries its source. Those marked *unverified* come from secondary sources or
from memory and should be checked before they are quoted as facts.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    """An edge device's compute: its power while computing, its FP32 rate, and where the figures come from."""
    watts: float  # power while computing
    gflops: float  # FP32 rate the energy is computed at (GFLOP/s)
    source: str
    estimated: bool = False

    @property
    def joules_per_flop(self) -> float:
        """Energy of one FLOP at the device's rate and power."""
        return self.watts / (self.gflops * 1e9)


DEVICES: dict[str, Device] = {
    # NVIDIA Jetson Nano, MAXN 10 W: GPU 921.6 MHz, 128 CUDA cores x 2 FLOP (FMA) = 236 GFLOP/s FP32 (472 FP16,
    # NVIDIA's datasheet figure). Measured YOLOv5n at 0.55 J/frame ~ 6.8 W (arXiv 2207.06150): the 10 W is the mode's cap.
    "jetson_nano_10w": Device(10.0, 236.0, "Jetson Nano MAXN: 128 cores x 2 x 0.9216 GHz; 10 W mode cap"),
    # 5 W mode: GPU 640 MHz -> 128 x 2 x 0.64 = 164 GFLOP/s
    "jetson_nano_5w": Device(5.0, 164.0, "Jetson Nano 5 W mode: 128 cores x 2 x 0.640 GHz; 5 W mode cap"),
    # Jetson Orin Nano 8GB, 1024 CUDA cores; 7 W mode GPU 420 MHz, 15 W mode GPU 625 MHz (NVIDIA power-mode tables)
    "jetson_orin_nano_7w": Device(7.0, 860.0, "Jetson Orin Nano 8GB 7 W mode: 1024 cores x 2 x 0.420 GHz"),
    "jetson_orin_nano_15w": Device(15.0, 1280.0, "Jetson Orin Nano 8GB 15 W mode: 1024 cores x 2 x 0.625 GHz"),
    # Raspberry Pi 4: 4 Cortex-A72 at 1.5 GHz, 128-bit NEON FMA = 8 FLOP/cycle/core -> 48 GFLOP/s FP32 peak;
    # 4-core stress about 6.4 W at the wall (chipwired.com measurement; unverified here)
    "raspberry_pi_4": Device(6.4, 48.0, "Raspberry Pi 4: 4 x 1.5 GHz x 8 FLOP/cycle; 6.4 W under 4-core load (unverified)",
                             estimated=True),
}

# this machine: no RAPL counters are readable here (/sys/class/powercap is absent), so its power is an
# estimate: two cores' share of a server CPU's package power (about 7.5 W a core); its FP32 rate is measured
THIS_MACHINE_WATTS = 15.0


def this_machine() -> Device:
    """This machine, its FP32 rate measured now with a matrix product, its power estimated (no RAPL)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.5:
        a @ b
        n += 1
    gflops = 2 * 1024**3 * n / (time.perf_counter() - t0) / 1e9
    return Device(THIS_MACHINE_WATTS, round(gflops, 1), "this machine: FP32 rate measured (1024^3 matmul); power "
                  f"estimated at {THIS_MACHINE_WATTS:g} W (RAPL not readable)", estimated=True)


@dataclass(frozen=True)
class Radio:
    """A radio's power model ``P = alpha x rate + beta`` (Huang et al., MobiSys 2012), each way, with its source."""
    alpha_up: float  # mW per Mbit/s of uplink rate
    alpha_down: float  # mW per Mbit/s of downlink rate
    beta: float  # mW while the radio is active
    source: str

    def joules(self, bytes_up: float, bytes_down: float, mbps_up: float, mbps_down: float) -> float:
        """Energy to send ``bytes_up`` at ``mbps_up`` and receive ``bytes_down`` at ``mbps_down``."""
        up = (self.alpha_up * mbps_up + self.beta) * 1e-3 * (8 * bytes_up / (mbps_up * 1e6))
        down = (self.alpha_down * mbps_down + self.beta) * 1e-3 * (8 * bytes_down / (mbps_down * 1e6))
        return up + down

    def joules_per_bit(self, mbps: float, direction: str = "up") -> float:
        """Energy of one bit ``direction`` (``up``, ``down``) at ``mbps``: ``(alpha x rate + beta) / rate``."""
        alpha = self.alpha_up if direction == "up" else self.alpha_down
        return (alpha + self.beta / mbps) * 1e-9


# Huang et al., "A Close Examination of Performance and Power Characteristics of 4G LTE Networks", MobiSys
# 2012, Table of power model parameters (P = alpha_u * t_u + alpha_d * t_d + beta). Values as recalled from
# that table, *unverified* here: check them against the paper before quoting.
RADIOS: dict[str, Radio] = {
    "lte": Radio(438.39, 51.97, 1288.04, "Huang et al. MobiSys 2012, LTE (unverified)"),
    "wifi": Radio(283.17, 137.01, 132.86, "Huang et al. MobiSys 2012, Wi-Fi (unverified)"),
}


def device(name: str, watts: float | None = None, gflops: float | None = None, joules_per_flop: float | None = None) -> Device:
    """``energy.device``: a profile by name, ``this_machine``, or ``custom`` with ``watts`` and ``gflops``
    (or ``joules_per_flop``)."""
    if name == "this_machine":
        return this_machine()
    if name == "custom":
        if joules_per_flop is not None:
            return Device(joules_per_flop * 1e9, 1.0, f"custom: {joules_per_flop:g} J/FLOP")
        if watts is None or gflops is None or watts <= 0 or gflops <= 0:
            raise ValueError("energy.device=custom needs energy.watts and energy.gflops (> 0), or energy.joules_per_flop")
        return Device(watts, gflops, f"custom: {watts:g} W at {gflops:g} GFLOP/s")
    if name not in DEVICES:
        raise ValueError(f"energy.device={name!r} is not one of {', '.join([*DEVICES, 'this_machine', 'custom'])}")
    return DEVICES[name]


def radio(name: str, alpha_up: float | None = None, alpha_down: float | None = None, beta: float | None = None) -> Radio:
    """``energy.radio``: ``wifi``, ``lte``, or ``custom`` with alpha_up, alpha_down (mW per Mbit/s) and beta (mW)."""
    if name == "custom":
        if None in (alpha_up, alpha_down, beta):
            raise ValueError("energy.radio=custom needs alpha_up, alpha_down (mW per Mbit/s) and beta (mW)")
        return Radio(alpha_up, alpha_down, beta, "custom")
    if name not in RADIOS:
        raise ValueError(f"energy.radio={name!r} is not one of {', '.join([*RADIOS, 'custom'])}")
    return RADIOS[name]


def crossover_mbps(extra_joules: float, saved_up: float, saved_down: float, r: Radio) -> float | None:
    """The link rate (both ways, Mbit/s) above which a method that spends ``extra_joules`` more compute per
    step to send ``saved_up``/``saved_down`` fewer bytes stops paying for itself; ``None`` when it pays at
    every rate (its compute costs less than the bytes' rate-independent part, alpha * bits) and ``0.0``
    when it pays at none.

    Saved radio energy per step is ``8 * (saved_up * (alpha_u + beta/r) + saved_down * (alpha_d + beta/r)) * 1e-9``
    (J), which falls towards ``8e-9 * (alpha_u * saved_up + alpha_d * saved_down)`` as r grows.
    """
    floor = 8e-9 * (r.alpha_up * saved_up + r.alpha_down * saved_down)
    per_rate = 8e-9 * r.beta * (saved_up + saved_down)  # joules * Mbit/s
    if extra_joules <= floor:
        return None
    if per_rate <= 0:
        return 0.0
    return per_rate / (extra_joules - floor)


def client_step_flops(cfg, num_classes: int) -> int:
    """FLOPs of one client training step of the experiment ``cfg`` (forward, compression, backward of a
    gradient of the right shape; the optimizer's element-wise update is not counted), on random images."""
    from .profiling import Profiler
    from .train.build import build_halves

    client, _, method, vit = build_halves(cfg, num_classes, torch.device("cpu"))
    B = cfg.train.batch_size
    images = torch.randn(B, vit.in_chans, vit.img_size, vit.img_size)
    labels = torch.arange(B) % num_classes
    prof = Profiler()
    with prof.step(count_flops=True):
        h, cls_attn = client(images)
        sent = method.client().encode(h, cls_attn, labels)
        sent.tensor.backward(torch.randn_like(sent.tensor))
    return prof.flops["total"]


# -- splitvit report --energy ---------------------------------------------------------------------------
def run_flops(run: dict, cache: dict) -> int:
    """Client FLOPs per step of a run: its own profile's, else counted from its config (cached by setting)."""
    prof = (run.get("profile") or {}).get("client", {}).get("flops", {})
    if prof.get("total"):
        return prof["total"] - prof.get("wait", 0)  # in process the wait holds the server's step
    from omegaconf import OmegaConf

    from .config_keys import load_run_config

    cfg = OmegaConf.create(load_run_config(f"{run['run_dir']}/config.yaml"))  # an older run: today's keys at their defaults
    key = json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "method", "split", "wire")}
                     | {"batch": cfg.train.batch_size, "classes": run.get("num_classes")}, sort_keys=True, default=str)
    if key not in cache:
        cache[key] = client_step_flops(cfg, run.get("num_classes") or 10)
    return cache[key]


def energy_rows(rows: list[dict], dev: Device, radios: dict[str, Radio], mbps_up: float, mbps_down: float) -> list[dict]:
    """Per setting of a report: FLOPs and bytes per step, and per radio the energy per step (compute and
    radio, J), over the run, and per accuracy point (J per percentage point of final accuracy)."""
    cache: dict = {}
    out = []
    for r in rows:
        flops = statistics.fmean(run_flops(run, cache) for run in r["runs"])
        up, down = r["bytes_up"] / r["steps"], r["bytes_down"] / r["steps"]
        row = {"method": r["method"], "options": r["options"], "measured": r["measured"], "final_acc": r["final_acc"],
               "steps": r["steps"], "flops": flops, "up": up, "down": down, "compute_j": flops * dev.joules_per_flop}
        for name, radio_ in radios.items():
            radio_j = radio_.joules(up, down, mbps_up, mbps_down)
            total = (row["compute_j"] + radio_j) * r["steps"]
            row[name] = {"radio_j": radio_j, "step_j": row["compute_j"] + radio_j, "run_j": total,
                         "per_point_j": total / (100 * r["final_acc"]) if r["final_acc"] > 0 else float("inf")}
        out.append(row)
    return out


def energy_markdown(erows: list[dict], dev: Device, radios: dict[str, Radio], mbps_up: float, mbps_down: float) -> str:
    """The energy table of ``splitvit report ... energy.device=``: per setting, client FLOPs and bytes per
    step, compute and radio energy, joules per run and per accuracy point, and the crossover rate."""
    lines = [f"Device: {dev.source} ({dev.watts:g} W at {dev.gflops:g} GFLOP/s: {dev.joules_per_flop * 1e12:.1f} pJ/FLOP"
             f"{', estimated' if dev.estimated else ''}). Link: {mbps_up:g} Mbit/s up, {mbps_down:g} down. "
             + " ".join(f"{n}: {r.source}." for n, r in radios.items()), "",
             "| method | options | measured | final acc | client GFLOP/step | kB up/step | kB down/step | compute mJ/step | "
             + " | ".join(f"{n} radio mJ/step | {n} J/run | {n} J per acc. point" for n in radios) + " |",
             "|---|---|" + "--:|" * (6 + 3 * len(radios))]
    for e in erows:
        cells = " | ".join(f"{e[n]['radio_j'] * 1e3:,.1f} | {e[n]['run_j']:,.0f} | {e[n]['per_point_j']:,.1f}" for n in radios)
        lines.append(f"| {e['method']} | {e['options'] or '-'} | {e['measured']:.3f} | {e['final_acc']:.4f} | "
                     f"{e['flops'] / 1e9:.2f} | {e['up'] / 1e3:,.1f} | {e['down'] / 1e3:,.1f} | {e['compute_j'] * 1e3:.2f} | {cells} |")
    base = next((e for e in erows if e["method"] == "none"), None)
    if base is not None:
        lines += ["", "Where a method's extra client compute stops paying for the bytes it saves (against `none`, per step, "
                  "the same rate both ways):", ""]
        for e in erows:
            if e is base:
                continue
            extra = e["compute_j"] - base["compute_j"]
            parts = []
            for n, r in radios.items():
                saved_up, saved_down = base["up"] - e["up"], base["down"] - e["down"]
                rate = crossover_mbps(extra, saved_up, saved_down, r)
                floor = 8e-9 * (r.alpha_up * saved_up + r.alpha_down * saved_down)  # what the saved bytes cost at any rate
                parts.append(f"{n}: " + (f"pays at every rate (the saved bytes cost at least {floor * 1e3:,.0f} mJ)" if rate is None
                                         else "never pays" if rate == 0 else f"stops paying above {rate:,.0f} Mbit/s"))
            lines.append(f"- {e['method']} {e['options'] or ''}: {extra * 1e3:+.3f} mJ of compute per step for "
                         f"{(base['up'] + base['down'] - e['up'] - e['down']) / 1e3:,.0f} kB fewer: " + "; ".join(parts))
    return "\n".join(lines) + "\n"
