"""The client half: the images, blocks 1..l, the compressor's client side, and every byte it sends."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compression import Compressor
from ..link import Link, LinkModel
from ..models import ClientModel
from ..wire import Header, Schema, TensorSpec, expect, pack, unpack
from .evaluation import score
from .precision import autocast


@dataclass
class Traffic:
    """Bytes on the wire, counted from the serialised messages themselves."""

    up: int = 0
    down: int = 0
    messages: int = 0
    link_s: float = 0.0  # seconds the messages would take on the modelled link (link.bandwidth_mbps)
    shaping: LinkModel | None = None

    def add(self, up: bytes, down: bytes) -> None:
        self.up += len(up)
        self.down += len(down)
        self.messages += 1
        if self.shaping is not None:
            self.link_s += self.shaping.seconds(len(up), len(down))


class SplitClient:
    def __init__(self, model: ClientModel, compressor: Compressor, optimizer: torch.optim.Optimizer,
                 link: Link | None, num_classes: int, shaping: LinkModel | None = None, bf16: bool = False,
                 client_id: int = 0):
        self.model = model
        self.client_id = client_id
        self.compressor = compressor
        self.optimizer = optimizer
        self.link = link
        self.num_classes = num_classes
        self.bf16 = bf16  # the ViT under bfloat16 autocast; messages keep wire.dtype
        self.train_traffic = Traffic(shaping=shaping)
        self.eval_traffic = Traffic()  # evaluation is a measurement, not training: not on the modelled link

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
        """One split-learning step, top to bottom. Returns the server's loss."""
        self.model.train()
        with autocast(images.device, self.bf16):
            h, cls_attn = self.model(images)  # client forward, blocks 1..l
        packet = self.compressor.client_encode(h, cls_attn, labels)  # compress
        up = pack(Header("train", client=self.client_id, step=step), packet.message)
        down = self.link.request(up)  # the server's forward, loss, backward and step happen there
        reply, header = unpack(down, self.compressor.grad_schema(packet.sent))
        expect(header, "grad", step)
        grad = self.compressor.client_decode_grad(reply, packet)  # gradient back
        self.optimizer.zero_grad(set_to_none=True)
        packet.sent.backward(grad.to(packet.sent.device))
        self.optimizer.step()  # client step
        self.train_traffic.add(up, down)
        return header.loss

    @torch.no_grad()
    def evaluate(self, batches, mode: str) -> tuple[float, float]:
        """Mean loss and accuracy over ``batches``; the server only runs its blocks and the head."""
        self.model.eval()
        return score(self._logits(images, labels, mode) for images, labels in batches)

    def _logits(self, images: torch.Tensor, labels: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(images.device, self.bf16):
            h, cls_attn = self.model(images)
        up = pack(Header("eval", client=self.client_id, mode=mode), self.compressor.eval_encode(h, cls_attn, mode))
        down = self.link.request(up)
        schema = Schema({"logits": TensorSpec(torch.float32, (labels.shape[0], self.num_classes))})
        reply, header = unpack(down, schema)
        expect(header, "logits")
        self.eval_traffic.add(up, down)
        return reply["logits"].to(labels.device), labels
