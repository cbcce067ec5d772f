"""Optional experiment tracking (``logger=tensorboard``): the run's curves, live while it trains.

The run files (``metrics.jsonl``, ``summary.json``) stay the record; a tracker shows the same numbers as
they come. A tracker is told every training step and every evaluation and decides what to write.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from .config import ConfigError

LOGGERS = ("none", "tensorboard")


class NoTracker:
    """``logger=none``: nothing is tracked beyond the run files."""
    def step(self, step: int, loss: float, bytes_sent: int) -> None:
        """Nothing."""
        pass

    def evaluation(self, record: dict) -> None:
        """Nothing."""
        pass

    def close(self) -> None:
        """Nothing."""
        pass


class TensorBoard(NoTracker):
    """``logger=tensorboard``: the loss and bytes of each step and every evaluation, as live curves."""
    def __init__(self, log_dir: Path, every_steps: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install 'splitvit[tensorboard]'") from None
        self.writer = SummaryWriter(str(log_dir))
        self.every = max(1, every_steps)

    def step(self, step: int, loss: float, bytes_sent: int) -> None:
        """The step's loss and cumulative bytes."""
        if step % self.every == 0:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/MB_sent", bytes_sent / 1e6, step)

    def evaluation(self, record: dict) -> None:
        """An evaluation's metrics."""
        step = record["step"]
        for key in ("val_acc", "val_loss", "train_loss"):
            if record.get(key) is not None:
                self.writer.add_scalar(f"eval/{key}", record[key], step)
        sent = record["bytes_up"] + record["bytes_down"]
        self.writer.add_scalar("eval/MB_sent", sent / 1e6, step)
        if record.get("baseline_bytes"):
            self.writer.add_scalar("eval/compression_measured", sent / record["baseline_bytes"], step)
        self.writer.add_scalar("eval/time_s", record["time_s"], step)
        self.writer.flush()  # live: TensorBoard shows each evaluation as it lands

    def close(self) -> None:
        """Flush and close the writer."""
        self.writer.close()


def make_tracker(cfg: DictConfig, run_dir: Path) -> NoTracker:
    """The tracker of ``logger=``."""
    logger = cfg.get("logger") or {"name": "none"}
    if logger["name"] == "none":
        return NoTracker()
    if logger["name"] == "tensorboard":
        return TensorBoard(Path(logger.get("dir") or run_dir / "tensorboard"), logger.get("every_steps", 10))
    raise ConfigError(f"logger={logger['name']!r} is not allowed; choose one of: {', '.join(LOGGERS)}")
