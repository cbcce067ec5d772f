"""The client half: the images, blocks 1..l, the method's client side, and every byte it sends."""

from __future__ import annotations

import torch

from ..channel import ChannelSpec, Receiver
from ..compression import ClientCodec
from ..compression.schedule import CompressionSchedule
from ..link import Exchange
from ..models import ClientModel
from ..profiling import timed
from ..wire import Header, Schema, TensorSpec, WireError
from .evaluation import score
from .mods import Step, StepMod, through
from .precision import autocast


class SplitClient:
    """One client: its blocks, its own instance of the method (its client side: nothing is shared with
    another client or with the server) and its optimizer. Every message goes through ``exchange``,
    whose mods count the bytes; the client counts nothing itself. Each training step goes through
    ``mods`` (:mod:`.mods`: the profiler, the inspector, ALaST), the first outermost.

    Under a compression ``schedule`` the client encodes at ``target``, which each training reply sets
    for the next step (the server's count says how far the run is: :mod:`splitvit.compression.schedule`)."""

    def __init__(self, model: ClientModel, codec: ClientCodec, optimizer: torch.optim.Optimizer,
                 exchange: Exchange | None, num_classes: int, bf16: bool = False, client_id: int = 0,
                 channel: ChannelSpec | None = None, mods: list[StepMod] = (), schedule: CompressionSchedule | None = None):
        self.model = model
        self.client_id = client_id
        self.codec = codec  # the method's client side, this client's own
        self.method = codec.method  # as the config gives it; the one in force is ``codec.method``
        self.optimizer = optimizer
        self.exchange = exchange
        self.num_classes = num_classes
        self.bf16 = bf16  # the ViT under bfloat16 autocast; messages keep wire.dtype
        self.schedule = None if schedule is None or schedule.constant else schedule
        self.target: float | None = None if self.schedule is None else self.schedule.at(0.0)
        # what the channel may do to the replies: they are repaired (by the method in force), not refused
        self.receive = Receiver(channel, "down", self.method.role, lambda m, erased: self.codec.method.repair(m, erased))
        self.mods = list(mods)

    @property
    def compression_target(self) -> float:
        """The compression target in force: the schedule's, else the method's own."""
        return self.target if self.target is not None else self.method.target_ratio()

    def _at_target(self) -> None:
        if self.target is not None:
            self.codec.use(self.method.at(self.target))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[float, bool]:
        """One split-learning step through the client's mods. Returns the server's loss, and whether the
        server's reply says a cap was reached at this step (its round ends here)."""
        return through(self.mods, Step(step), lambda s: self._step(images, labels, s))

    def _step(self, images: torch.Tensor, labels: torch.Tensor, step: Step) -> tuple[float, bool]:
        """The step, top to bottom: client forward, compress, send, the server's step, gradient back, client step."""
        self.model.train()
        with timed("forward"), autocast(images.device, self.bf16):
            h, cls_attn = self.model(images)  # client forward, blocks 1..l
        with timed("compress"):
            self._at_target()
            sent = self.codec.encode(h, cls_attn, labels)
        if h.requires_grad:  # what a mod wants of dL/dh (not when ALaST froze every client block)
            for hook in step.cut_grad_hooks:
                h.register_hook(hook)
        reply, header = self.exchange(  # serialise, the server's forward, loss, backward and step, deserialise
            Header("train", client=self.client_id, step=step.index, target=self.target), sent.message,
            self.receive.schema("train", self.codec.method.grad_schema(sent.tensor)), "grad")
        with timed("decompress"):
            grad = sent.decode(self.receive("train", header, reply))  # gradient back
        with timed("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            if sent.tensor.requires_grad:  # not when ALaST froze every client parameter this step
                sent.tensor.backward(grad.to(sent.tensor.device))
        with timed("step"):
            self.optimizer.step()  # client step
        step.message, step.cls_attn, step.grad = sent.message, cls_attn, grad
        if self.schedule is not None:  # the target of the next step
            if header.target is None or not self.schedule.admits(header.target):
                raise WireError(f"the server's reply sets compression target {header.target!r}, which the run's schedule "
                                f"({self.schedule.kind}, {self.schedule.start} to {self.schedule.end}) never reaches")
            self.target = header.target
        return header.loss, header.mode == "stop"

    @torch.no_grad()
    def evaluate(self, batches, mode: str) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches``; the server only runs its blocks and the head."""
        self.model.eval()
        return score(self._logits(images, labels, mode) for images, labels in batches)

    def _logits(self, images: torch.Tensor, labels: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(images.device, self.bf16):
            h, cls_attn = self.model(images)
        schema = Schema({"logits": TensorSpec(torch.float32, (labels.shape[0], self.num_classes))})
        self._at_target()
        reply, header = self.exchange(Header("eval", client=self.client_id, mode=mode, target=self.target),
                                      self.codec.eval_encode(h, cls_attn, mode), self.receive.schema("eval", schema), "logits")
        return self.receive("eval", header, reply)["logits"].to(labels.device), labels
