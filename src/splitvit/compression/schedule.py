"""A compression schedule: the method's ``compression`` target as a function of how far the run is.

``compression_schedule=`` (named apart from ``train.schedule``, the learning rate's) moves the target
from ``start`` to ``end`` over the run, whose progress is the share of its first cap that has been
spent: the byte budget (``train.budget_epochs``) when there is one, else the steps, epochs or rounds
(:func:`splitvit.train.federation.progress`). With ``p`` that share, in [0, 1]:

- ``constant``: ``start`` throughout (the default; ``start`` is then ``method.compression``);
- ``linear``: ``start + (end - start) * p``;
- ``cosine``: ``end + (start - end) * (1 + cos(pi * p)) / 2``, slow at both ends;
- ``steps``: ``stages`` equal stretches of the run, the target of stretch ``i`` (from 0)
  ``start + (end - start) * i / (stages - 1)``.

Targets are rounded to 4 significant digits, so that a method is re-derived (its sizes, its schemas)
only when the target has moved by that much, and so that a target written in a message header
reads back as the same number.

Who decides: the server, whose count of the training messages says how far the run is (with several
clients, all of theirs). Each training reply carries the target of the client's next step; each
message a client sends under a schedule says the target it was encoded with, so both sides of a
step use the same sizes, in one process or over gRPC (see :mod:`splitvit.wire.protocol`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine", "steps")


def rounded(target: float) -> float:
    """``target`` to 4 significant digits: what a schedule hands out and a header carries."""
    return float(f"{target:.4g}")


@dataclass(frozen=True)
class CompressionSchedule:
    """A method's compression target over the run (``compression_schedule=``): ``constant``, or from
    ``start`` to ``end`` by ``linear``, ``cosine`` or ``steps`` (``stages`` equal steps), as a function of
    the share of the run's first cap spent (:meth:`at`). Targets are rounded to 4 significant digits."""
    kind: str = "constant"
    start: float = 1.0
    end: float = 1.0
    stages: int = 4

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"compression_schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for key in ("start", "end"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"compression_schedule.{key}={value!r} must be a compression target in (0, 1]")
        if self.kind == "steps" and (isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 2):
            raise ValueError(f"compression_schedule.stages={self.stages!r} must be an integer >= 2")

    @property
    def constant(self) -> bool:
        """Whether the target never moves (the default)."""
        return self.kind == "constant" or self.start == self.end

    @property
    def bounds(self) -> tuple[float, float]:
        """The least and the greatest target the schedule hands out."""
        return rounded(min(self.start, self.end)), rounded(max(self.start, self.end))

    def at(self, progress: float) -> float:
        """The target when ``progress`` (in [0, 1]; clipped) of the run is spent."""
        p = min(max(float(progress), 0.0), 1.0)
        a, b = self.start, self.end
        if self.kind == "constant":
            return rounded(a)
        if self.kind == "linear":
            return rounded(a + (b - a) * p)
        if self.kind == "cosine":
            return rounded(b + (a - b) * (1 + math.cos(math.pi * p)) / 2)
        stage = min(int(p * self.stages), self.stages - 1)
        return rounded(a + (b - a) * stage / (self.stages - 1))

    def admits(self, target: float) -> bool:
        """Whether ``target`` is one this schedule may hand out (what a server checks a header against)."""
        lo, hi = self.bounds
        return lo <= target <= hi

    @classmethod
    def from_config(cls, cfg) -> "CompressionSchedule":
        """``compression_schedule=`` of a run's config; ``start`` and ``end`` default to ``method.compression``.
        A config without the group (saved before it existed) is a constant schedule."""
        s = cfg.get("compression_schedule")
        base = cfg.method.get("compression")
        if s is None or s.get("name", "constant") == "constant":
            return cls("constant", base or 1.0, base or 1.0)
        start = s.get("start") if s.get("start") is not None else base
        end = s.get("end") if s.get("end") is not None else base
        return cls(s.name, start, end, int(s.get("stages") or 4))
