"""The server half of a split-learning step: blocks l+1..L, the loss, and the gradient back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..compression import EVAL_MODES, Compressor
from ..models import ServerModel
from ..wire import Schema, WireError, decode, encode


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets ``[T, C]`` (ADC's merged labels are means of one-hots)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class SplitServer:
    """Answers the bytes of one message with the bytes of the reply.

    Training messages (``kind=train``) get one optimizer step and ``dL/d(received)`` back with the
    loss in the metadata; evaluation messages (``kind=eval``) get logits back and change nothing.
    A message that fails its schema raises :class:`~splitvit.wire.WireError` before any use.
    """

    def __init__(self, model: ServerModel, compressor: Compressor, optimizer: torch.optim.Optimizer,
                 max_batch: int, num_tokens: int, dim: int, max_eval_batch: int | None = None):
        self.model = model
        self.compressor = compressor
        self.optimizer = optimizer
        eval_batch = max_eval_batch or max_batch
        self.schemas: dict[str, Schema] = {"train": compressor.up_schema(max_batch, num_tokens, dim)}
        for mode in EVAL_MODES:
            self.schemas[f"eval/{mode}"] = compressor.eval_schema(eval_batch, num_tokens, dim, mode)
        self.device = next(model.parameters()).device

    def schema_for(self, meta: dict[str, str]) -> Schema:
        kind = meta.get("kind")
        if kind == "eval":
            kind = f"eval/{meta.get('mode')}"
        if kind not in self.schemas:
            raise WireError(f"message kind {kind!r} is not served; expected one of {sorted(self.schemas)}")
        return self.schemas[kind]

    def handle(self, payload: bytes) -> bytes:
        message, meta = decode(payload, self.schema_for)
        message = {k: v.to(self.device, non_blocking=True) for k, v in message.items()}
        if meta["kind"] == "train":
            return self.train_step(message, meta)
        return self.eval_step(message, meta["mode"])

    def train_step(self, message: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
        self.model.train()
        packet = self.compressor.server_decode(message)
        loss = soft_cross_entropy(self.model(packet.z), packet.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        reply = self.compressor.server_encode_grad(packet)
        return encode(reply, {"kind": "grad", "step": meta.get("step", ""), "loss": repr(loss.item())})

    @torch.no_grad()
    def eval_step(self, message: dict[str, torch.Tensor], mode: str) -> bytes:
        self.model.eval()
        logits = self.model(self.compressor.eval_decode(message, mode))
        return encode({"logits": logits.float()}, {"kind": "logits"})
