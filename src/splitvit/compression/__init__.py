"""Compression methods, each a :class:`Method` (its config) with a :class:`ClientCodec` and a
:class:`ServerCodec` (its two sides), registered by name where it is defined (:func:`register_method`). Importing this package imports every module in it, so a new
method is its own module here (and its ``conf/method/<name>.yaml``), listed nowhere else."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from .adc import ADC, merge_and_select, select_tokens
from .base import (
    EVAL_MODES, METHODS, WIRE_DTYPES, ClientCodec, Decoded, Encoded, Method, RawServer, Seeded, ServerCodec, register_method,
)
from .bottlenet import BottleNet
from .c3sl import C3SL
from .fedlite import FedLite
from .kmeans import kmeans
from .lowrank import LowRank
from .none import NoCompression
from .quant import Quant
from .slacc import SLACC
from .topk import RandTopK, TopK

for _module in pkgutil.iter_modules(__path__):  # the methods not named above register themselves too
    importlib.import_module(f"{__name__}.{_module.name}")


def build_method(
    name: str, num_classes: int, tokens: int, dim: int, seed: int = 0, wire_dtype: str = "float32",
    grad_center: bool = False, **options: Any
) -> Method:
    """``method=<name>`` and its options -> the method for activations ``[B, tokens, dim]``; each side
    builds its own half of it with ``.client()`` or ``.server()``.

    ``seed`` seeds any randomness it has (client and server build it from the same config);
    ``grad_center`` is ``split.grad_center`` (see :mod:`splitvit.compression.base`).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters
               if p not in ("self", "num_classes", "tokens", "dim", "wire_dtype", "seed", "grad_center", "kwargs")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(unknown)}; its options: {', '.join(allowed) or 'none'}")
    if grad_center is True and not cls.grad_of_tokens:
        takes = ", ".join(n for n, m in METHODS.items() if m.grad_of_tokens)
        raise ValueError(f"split.grad_center=true needs a method whose gradient is that of the tokens ({takes}); "
                         f"method {name!r} sends back the gradient of its code or of chosen values")
    def make(**changed: Any) -> Method:
        method = cls(num_classes=num_classes, tokens=tokens, dim=dim, wire_dtype=wire_dtype, seed=seed,
                     grad_center=grad_center, **{**options, **changed})
        method.rebuild = make
        return method

    return make()


__all__ = [
    "ADC", "SLACC", "BottleNet", "C3SL", "FedLite", "LowRank", "Quant", "RandTopK", "TopK", "EVAL_MODES", "METHODS", "WIRE_DTYPES",
    "ClientCodec", "Decoded", "Encoded", "Method", "NoCompression", "RawServer", "Seeded", "ServerCodec", "build_method", "register_method",
    "kmeans", "merge_and_select", "select_tokens",
]
