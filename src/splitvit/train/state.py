"""Where a run stands: its step, its epoch, the bytes it has sent, its history of evaluations.
Saved with every checkpoint; the loop, the checkpoints and the remote client share it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

CAPS = ("epochs", "max_steps", "budget_epochs")  # train.* keys that end a run


@dataclass
class Progress:
    """Everything about where a run stands; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    bytes_up: int = 0  # bytes, training messages client -> server
    bytes_down: int = 0  # bytes, server -> client
    baseline_up: int = 0  # what uncompressed float32 split learning would have sent for the same steps
    baseline_down: int = 0
    eval_bytes_up: int = 0
    eval_bytes_down: int = 0
    wall_s: float = 0.0
    link_s: float = 0.0  # seconds on the modelled link (link.bandwidth_mbps), both directions
    framing_up: int = 0  # bytes the transport (gRPC) added around the messages
    framing_down: int = 0
    best_val_acc: float = 0.0
    done: bool = False
    stopped_by: str | None = None  # epochs, max_steps or budget, once done
    caps: dict = field(default_factory=dict)  # the train.* caps the run was stopped under
    history: list[dict] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run to a remote server
