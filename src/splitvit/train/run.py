"""``fit``: one experiment. A split run, with one client or several, all of them simulated here or this
process as one client of a ``splitvit serve``, trains in :mod:`.clients`; a model in one piece
(``split.index=null``) in :mod:`.whole`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .clients import Simulation, fit_clients
from .common import held, prepare
from .config import validate
from .whole import fit_whole
from .remote import RemoteClient


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run the experiment ``cfg`` into ``run_dir``; returns the summary also written to ``summary.json``.
    The config is checked before anything is made; the run directory is this process's while it runs."""
    validate(cfg)
    if cfg.split.index is not None and cfg.clients.get("engine", "splitvit") == "flower":
        from .flower import simulate  # Flower's simulation engine: the optional extra

        with held(run_dir):
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            return simulate(cfg, run_dir)
    with held(run_dir):
        run_dir, device, shaping, data = prepare(cfg, run_dir)
        if cfg.split.index is None:
            return fit_whole(cfg, run_dir, data, device)
        make = RemoteClient if cfg.link.kind == "grpc" else Simulation
        return fit_clients(cfg, run_dir, device, shaping, data, make_clients=make)
