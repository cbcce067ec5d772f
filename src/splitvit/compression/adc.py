"""Attention-based Double Compression (Alvetreti et al., arXiv 2509.15058) as a method.

The kernels (:func:`budgets`, :func:`cluster_mean`, :func:`merge_and_select`, :func:`select_tokens`)
live in :mod:`splitvit.compression.merge`, pure functions of tensors; :class:`ADC` wires them into
a split model as a :class:`~splitvit.compression.base.Method`: its client side merges and selects,
its server side reads the tokens as they come (:class:`~splitvit.compression.base.RawServer`).
"""

from __future__ import annotations

import torch

from ..channel import PROTECTED
from ..wire import Schema, TensorSpec, WireError
from .base import ClientCodec, Decoded, Encoded, Message, Method, RawServer, Seeded, register_method
from .merge import (FEATURES, ROUNDINGS, SPLITS, balanced_ratios, budgets, check_ratio, cluster_mean, merge_and_select,
                    merged_targets, select_tokens)

__all__ = ["ADC", "ADCClient", "ADCServer", "FEATURES", "MERGED_LABELS", "balanced_ratios", "budgets", "cluster_mean", "merge_and_select", "select_tokens"]

MERGED_LABELS = ("soft", "members")  # method.merged_labels: how the merged samples' labels cross (ADC's docstring)


def index_dtype(n: int) -> torch.dtype:
    """The smallest integer dtype the wire carries that holds ``0 .. n - 1``."""
    return torch.uint8 if n <= 1 << 8 else torch.uint16 if n <= 1 << 16 else torch.int32


class ADCClient(Seeded, ClientCodec):
    """ADC's client side: merges the batch's samples and their labels, keeps the most-attended tokens,
    and draws its K-means seeds from its own generator."""

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        m = self.method
        if labels is None:  # per sample (compressed evaluation): token selection alone, no merging across samples
            z = select_tokens(h, cls_attn, m.token_ratio, m.rounding)
            return self.encoded({"z": m.to_wire(z)}, z, None)
        # training: samples are merged, so the labels are too
        z, assignment, _ = merge_and_select(h, cls_attn, m.batch_ratio, m.token_ratio, m.feature, self.draw_on(h.device),
                                            m.rounding)
        if m.merged_labels == "members":  # the server averages them into the same soft labels
            return self.encoded({"z": m.to_wire(z), "labels": labels.to(index_dtype(m.num_classes)),
                                 "members": assignment.to(index_dtype(z.shape[0]))}, z, None)
        targets = merged_targets(labels, assignment, m.num_classes, z.shape[0])
        return self.encoded({"z": m.to_wire(z), "targets": targets}, z, None)


class ADCServer(RawServer):
    """ADC's server side: the tokens as they come; with ``merged_labels=members``, the merged samples' soft
    labels averaged here from their members' labels, as the client would have averaged them."""

    def decode(self, message: Message) -> Decoded:
        if "members" not in message:
            return super().decode(message)
        T = message["z"].shape[0]
        members = message["members"].long()
        # a merged sample with no member would average nothing (0/0): the message is malformed
        if int(members.max()) >= T or bool((torch.bincount(members, minlength=T) == 0).any()):
            raise WireError(f"members must name each of the message's {T} merged samples, and only those: "
                            f"got members {sorted(set(members.tolist()))}")
        targets = merged_targets(message["labels"], members, self.method.num_classes, T)
        return super().decode({"z": message["z"], "targets": targets})


@register_method
class ADC(Method):
    """ADC: merged activations and merged soft labels up, ``dL/dz`` down.

    ``merged_labels``: how the merged samples' labels cross. ``soft``: their soft labels, ``[T, C]``
    float32, as the paper's code sends them. ``members``: each sample's class id and the merged sample
    it went into, ``[B]`` each, as the smallest unsigned integers that hold them; the server averages
    them into the same soft labels, bit for bit (sums of ones, divided by a count), for ``2B`` bytes
    instead of ``4TC`` (at B = 128, C = 50, ADC at 0.2: 256 bytes instead of 11,400).

    Give ``compression`` for the balanced split, or ``batch_ratio`` and ``token_ratio`` (either
    alone leaves the other at 1: batch merging only, or token selection only). ``split`` and
    ``rounding``: the paper's (``sqrt``, ``round``) or the public research code's earlier ones
    (``fifth``: xi^(1/5) on samples and xi^(4/5) on tokens; ``floor``: ``int()``, at least 2 merged
    samples), whose results the paper's figures may come from.
    """

    name = "adc"
    sized_by = ("batch_ratio", "token_ratio")
    grad_of_tokens = True
    Client, Server = ADCClient, ADCServer

    def __init__(
        self,
        compression: float | None = 0.1,
        batch_ratio: float | None = None,
        token_ratio: float | None = None,
        feature: str = "attention",
        split: str = "sqrt",
        rounding: str = "round",
        merged_labels: str = "soft",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.roles.update(targets=PROTECTED, members=PROTECTED)
        if merged_labels not in MERGED_LABELS:
            raise ValueError(f"method.merged_labels must be one of {', '.join(MERGED_LABELS)}, got {merged_labels!r}")
        self.merged_labels = merged_labels
        if split not in SPLITS:
            raise ValueError(f"method.split must be one of {', '.join(SPLITS)}, got {split!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"method.rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        self.split, self.rounding = split, rounding
        self.compression = None  # the target as configured, when the two ratios come from it
        if batch_ratio is None and token_ratio is None:
            if compression is None:
                raise ValueError("ADC needs method.compression, or method.batch_ratio and/or method.token_ratio")
            batch_ratio, token_ratio = balanced_ratios(compression, split)
            self.compression = check_ratio("compression", compression)
        self.batch_ratio = check_ratio("batch_ratio", 1.0 if batch_ratio is None else batch_ratio)
        self.token_ratio = check_ratio("token_ratio", 1.0 if token_ratio is None else token_ratio)
        if feature not in FEATURES:
            raise ValueError(f"method.feature must be one of {', '.join(FEATURES)}, got {feature!r}")
        self.feature = feature

    def target_ratio(self) -> float:
        """``compression`` as configured (``sqrt(0.2) ** 2`` would record 0.19999999999999998), else the product
        of the two ratios given."""
        return self.compression if self.compression is not None else self.batch_ratio * self.token_ratio

    def nominal_ratio(self, B: int, N: int, D: int) -> float:
        """The realised ``(T/B)(k/N)`` after rounding, for a batch of ``B`` samples of ``N`` tokens."""
        T, k = budgets(B, N, self.batch_ratio, self.token_ratio, self.rounding)
        return (T / B) * (k / N) * self.value_ratio

    def up_schema(self, B: int, N: int, D: int) -> Schema:
        """A training message: ``T`` merged samples of ``k`` tokens, and their soft labels (or the members'
        labels and merged samples: ``merged_labels``)."""
        T, k = budgets(B, N, self.batch_ratio, self.token_ratio, self.rounding)
        if self.merged_labels == "members":
            return Schema({"z": TensorSpec(self.wire_dtype, ("T", "k", D)),
                           "labels": TensorSpec(index_dtype(self.num_classes), ("B",), low=0, high=self.num_classes - 1),
                           "members": TensorSpec(index_dtype(T), ("B",), low=0, high=T - 1)},
                          dims={"T": (1, T), "k": (1, k), "B": (1, B)})
        return Schema(
            {"z": TensorSpec(self.wire_dtype, ("T", "k", D)), "targets": TensorSpec(torch.float32, ("T", self.num_classes), low=0.0, high=1.0)},
            dims={"T": (1, T), "k": (1, k)},
        )

    def activation_schema(self, B: int, N: int, D: int) -> Schema:
        k = budgets(B, N, 1.0, self.token_ratio, self.rounding)[1]
        return Schema({"z": TensorSpec(self.wire_dtype, ("B", k, D))})

    def eval_token_ratio(self) -> float:
        return self.token_ratio
