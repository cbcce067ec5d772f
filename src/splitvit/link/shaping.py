"""A model of a slower link, for experiments: how long the measured bytes would take to cross it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkModel:
    """Bandwidth in Mbit/s (10^6 bits) each way and a one-way latency in milliseconds.

    A request-reply exchange costs two latencies plus each message's bytes at its direction's rate.
    The time is added to the run's clock (``link_s`` in ``metrics.jsonl``), not slept, so a 20 Mbit/s
    experiment does not take 20 Mbit/s long to run.
    """

    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float = 0.0

    def __post_init__(self):
        if not self.uplink_mbps > 0 or not self.downlink_mbps > 0:
            raise ValueError(f"link bandwidth must be > 0 Mbit/s, got up {self.uplink_mbps}, down {self.downlink_mbps}")
        if self.latency_ms < 0:
            raise ValueError(f"link.latency_ms must be >= 0, got {self.latency_ms}")

    def seconds(self, up: int, down: int) -> float:
        """Seconds for one exchange of ``up`` bytes to the server and ``down`` bytes back."""
        return 2e-3 * self.latency_ms + 8 * up / (self.uplink_mbps * 1e6) + 8 * down / (self.downlink_mbps * 1e6)

    @classmethod
    def from_config(cls, link) -> "LinkModel | None":
        """``link.bandwidth_mbps`` (uplink), ``link.downlink_mbps`` (default: the same), ``link.latency_ms``."""
        if link.get("bandwidth_mbps") is None:
            if link.get("latency_ms") or link.get("downlink_mbps") is not None:
                raise ValueError("link.latency_ms / link.downlink_mbps need link.bandwidth_mbps (the uplink rate) as well")
            return None
        down = link.get("downlink_mbps")
        return cls(float(link.bandwidth_mbps), float(down if down is not None else link.bandwidth_mbps), float(link.get("latency_ms") or 0.0))
