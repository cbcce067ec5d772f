"""Compression methods behind one interface (:class:`Compressor`), built by name."""

from __future__ import annotations

import inspect
from typing import Any

from .adc import ADC, merge_and_select, select_tokens
from .base import EVAL_MODES, WIRE_DTYPES, ClientPacket, Compressor, ServerPacket
from .kmeans import kmeans
from .none import NoCompression

METHODS: dict[str, type[Compressor]] = {"adc": ADC, "none": NoCompression}


def build_compressor(name: str, num_classes: int, seed: int = 0, wire_dtype: str = "float32", **options: Any) -> Compressor:
    """``method=<name>`` and its options -> a compressor. ``seed`` seeds any randomness it has."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    cls = METHODS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "wire_dtype", "seed", "kwargs")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}")
    return cls(num_classes=num_classes, wire_dtype=wire_dtype, seed=seed, **options)


__all__ = [
    "ADC", "EVAL_MODES", "METHODS", "WIRE_DTYPES", "ClientPacket", "Compressor", "NoCompression",
    "ServerPacket", "build_compressor", "kmeans", "merge_and_select", "select_tokens",
]
