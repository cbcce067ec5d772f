"""``fit``: one experiment, with one client (:mod:`.loop`) or several (:mod:`.clients`: all of them
simulated here, or this process as one client of a ``splitvit serve``, :mod:`.remote`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from . import clients, loop, remote


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the experiment ``cfg`` into ``run_dir``; returns the summary also written to ``summary.json``."""
    prepared = loop.prepare(cfg, run_dir)
    if loop.num_clients(cfg) > 1:
        make = remote.RemoteClient if cfg.link.kind == "grpc" else clients.Simulation
        return clients.fit_clients(cfg, *prepared, make_clients=make)
    return loop.fit(cfg, run_dir, prepared)
