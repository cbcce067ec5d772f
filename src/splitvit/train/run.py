"""``fit``: one experiment, with one client (:mod:`.loop`) or several (:mod:`.clients`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from . import clients, loop


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the experiment ``cfg`` into ``run_dir``; returns the summary also written to ``summary.json``."""
    prepared = loop.prepare(cfg, run_dir)
    if loop.num_clients(cfg) > 1:
        return clients.fit_clients(cfg, *prepared)
    return loop.fit(cfg, run_dir, prepared)
