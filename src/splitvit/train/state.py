"""Where a run stands: its step, its epoch, every byte it has sent, its history of evaluations.
Saved with every checkpoint; the loop, the exchange path's mods and the checkpoints share this one
object, so no counter is ever copied from one place to another."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field

from ..link.exchange import Counts

CAPS = ("epochs", "max_steps", "budget_epochs")  # train.* keys that end a run


@dataclass
class Progress:
    """Everything about where a run stands; saved with every checkpoint.

    ``traffic`` is the run's ledger: ``"<client>/<kind>"`` -> :class:`Counts` as a dict, where kind is
    the request's (``train``: activations up, gradients down; ``eval``; ``weights``: client halves
    handed over or averaged). The byte properties below sum it.
    """

    step: int = 0  # training steps, all clients
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    baseline_up: int = 0  # what uncompressed float32 split learning would have sent for the same steps
    baseline_down: int = 0
    wall_s: float = 0.0
    best_val_acc: float = 0.0
    done: bool = False
    stopped_by: str | None = None  # epochs, max_steps, budget or rounds, once done
    caps: dict = field(default_factory=dict)  # the train.* caps the run was stopped under
    history: list[dict] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names this run to a remote server
    traffic: dict[str, dict] = field(default_factory=dict)
    round: int = 0  # completed rounds (several clients)
    samples: int = 0  # training samples seen by this process's clients
    global_steps: int = 0  # several clients: steps of all clients, after the last round
    client_steps: dict[str, int] = field(default_factory=dict)  # several clients: each one's steps, after the last round
    channel: dict = field(default_factory=dict)  # a noisy or lossy channel's counters per direction, and its generator's state
    losses: list[float] = field(default_factory=list)  # the training losses since the last evaluation (its train_loss)

    def record(self, client: int, kind: str, counts: Counts) -> None:
        """Add an exchange's counts under ``client`` and ``kind``."""
        key = f"{client}/{kind}"
        self.traffic[key] = asdict(Counts(**self.traffic.get(key, {})).add(counts))

    def counts(self, kind: str | None = None, client: int | None = None) -> Counts:
        """The sum over the ledger's entries of this kind and this client (``None``: all)."""
        total = Counts()
        for key, c in self.traffic.items():
            who, what = key.split("/")
            if (kind is None or what == kind) and (client is None or int(who) == client):
                total = total.add(Counts(**c))
        return total

    def clients(self) -> list[int]:
        """The clients with traffic, in order."""
        return sorted({int(key.split("/")[0]) for key in self.traffic})

    # the figures metrics.jsonl and summary.json have always had
    bytes_up = property(lambda self: self.counts("train").up, doc="Training bytes sent up, all clients.")
    bytes_down = property(lambda self: self.counts("train").down, doc="Training bytes sent down, all clients.")
    eval_bytes_up = property(lambda self: self.counts("eval").up, doc="Evaluation bytes sent up.")
    eval_bytes_down = property(lambda self: self.counts("eval").down, doc="Evaluation bytes sent down.")
    link_s = property(lambda self: self.counts().link_s, doc="Seconds on the modelled link.")
    framing_up = property(lambda self: self.counts().framing_up, doc="Bytes the transport added going up.")
    framing_down = property(lambda self: self.counts().framing_down, doc="Bytes the transport added going down.")

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        """A saved progress, including one saved before the ledger (its counters become client 0's)."""
        state = dict(state)
        old = {k: state.pop(k, 0) for k in ("bytes_up", "bytes_down", "eval_bytes_up", "eval_bytes_down",
                                               "link_s", "framing_up", "framing_down")}
        p = cls(**state)
        if not p.traffic and any(old.values()):
            p.record(0, "train", Counts(old["bytes_up"], old["bytes_down"], 0, old["link_s"], old["framing_up"], old["framing_down"]))
            p.record(0, "eval", Counts(old["eval_bytes_up"], old["eval_bytes_down"]))
        return p
