"""Tensors <-> bytes for everything that crosses a link: safetensors, checked on the way in.

safetensors is a header of JSON and raw little-endian buffers: nothing in it can run code, unlike
pickle. :func:`decode` reads and checks the header against a :class:`Schema` *before* anything is
allocated (a header that claims a huge tensor is refused from its numbers alone), then loads, then
checks the values (finite floats, integers in range). Byte counts come from :func:`encode`'s output.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..profiling import timed

# safetensors dtype names
DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.uint16: "U16",
    torch.bool: "BOOL",
}
MAX_HEADER_BYTES = 1 << 20  # a message header is a few hundred bytes; anything near this is hostile


class WireError(ValueError):
    """A message that does not match what the receiver accepts. Nothing of it was used."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor a message may carry.

    ``shape`` holds, per dimension, an exact size or the name of a dimension declared in the
    schema's ``dims``; the same name must take the same size in every tensor of the message.
    ``low``/``high`` bound the values (inclusive), e.g. class ids.
    """

    dtype: torch.dtype
    shape: tuple[int | str, ...]
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Schema:
    """What a message may hold: each tensor's dtype and shape (dimensions fixed or named, within bounds;
    a named dimension has one size across tensors), and value ranges."""
    tensors: Mapping[str, TensorSpec]
    dims: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (min, max) inclusive

    def max_bytes(self) -> int:
        """Largest payload (tensor data) a message of this schema can carry."""
        total = 0
        for spec in self.tensors.values():
            n = torch.empty((), dtype=spec.dtype).element_size()
            for d in spec.shape:
                n *= self.dims[d][1] if isinstance(d, str) else d
            total += n
        return total


def encode(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None) -> bytes:
    """Serialise named tensors and string metadata. Tensors go to the CPU, contiguous."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(flat, metadata={k: str(v) for k, v in (meta or {}).items()} or None)


def read_header(data: bytes) -> tuple[dict, dict[str, str]]:
    """The safetensors header of ``data``, checked for structure only: (tensor entries, metadata)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"a message must be bytes, got {type(data).__name__}")
    if len(data) < 8:
        raise WireError(f"message of {len(data)} bytes is too short to hold a header")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise WireError(f"header claims {n} bytes but the message has {len(data) - 8} after the length field (limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except RecursionError:  # deep nesting: no real header nests more than twice
        raise WireError("header nests too deeply to be a message header") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: invalid JSON, or an integer of thousands of digits
        raise WireError(f"header is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise WireError("__metadata__ must map strings to strings")
    return header, meta


def _check_header(header: dict, schema: Schema, data_len: int) -> None:
    names, expected = set(header), set(schema.tensors)
    if names != expected:
        parts = []
        if expected - names:
            parts.append(f"missing {sorted(expected - names)}")
        if names - expected:
            parts.append(f"unexpected {sorted(names - expected)}")
        raise WireError(f"message tensors do not match: {', '.join(parts)}; expected exactly {sorted(expected)}")
    sizes: dict[str, int] = {}
    for name, spec in schema.tensors.items():
        entry = header[name]
        if not isinstance(entry, dict) or entry.get("dtype") != DTYPES[spec.dtype]:
            got = entry.get("dtype") if isinstance(entry, dict) else entry
            raise WireError(f"tensor {name!r} has dtype {got}, expected {DTYPES[spec.dtype]}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise WireError(f"tensor {name!r} has a malformed shape {shape!r}")
        if len(shape) != len(spec.shape):
            raise WireError(f"tensor {name!r} has {len(shape)} dimensions {shape}, expected {len(spec.shape)}")
        for i, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int):
                if got != want:
                    raise WireError(f"tensor {name!r} has size {got} in dimension {i}, expected {want}")
                continue
            lo, hi = schema.dims[want]
            if not lo <= got <= hi:
                raise WireError(f"tensor {name!r} has {want}={got} in dimension {i}, allowed [{lo}, {hi}]")
            if sizes.setdefault(want, got) != got:
                raise WireError(f"dimension {want} is {sizes[want]} in one tensor and {got} in {name!r}; they must agree")
        nbytes = torch.empty((), dtype=spec.dtype).element_size()
        for s in shape:
            nbytes *= s
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] and offsets[1] - offsets[0] == nbytes and offsets[1] <= data_len):
            raise WireError(f"tensor {name!r} has data offsets {offsets!r} that do not fit its shape or the message")
    # the buffers must tile the data exactly: no overlap (one byte read as two tensors), no gap
    spans = sorted(tuple(header[name]["data_offsets"]) for name in schema.tensors)
    ends = [0] + [e for _, e in spans]
    if any(s != e for (s, _), e in zip(spans, ends)) or ends[-1] != data_len:
        raise WireError(f"tensor buffers overlap or leave gaps: offsets {spans} for {data_len} data bytes")


def decode(
    data: bytes, schema: Schema | Callable[[dict[str, str]], Schema]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Bytes -> (tensors, metadata), or :class:`WireError` if anything is off.

    ``schema`` may be a function of the message's metadata (a server picks the schema by ``kind``).
    """
    with timed("check"):  # the header against the schema: names, dtypes, shapes, offsets
        header, meta = read_header(data)
        if callable(schema):
            schema = schema(meta)
        n = struct.unpack("<Q", bytes(data[:8]))[0]
        _check_header(header, schema, len(data) - 8 - n)
    with timed("load"):
        try:
            tensors = st_load(bytes(data))
        except Exception as e:  # safetensors' own checks (overlapping or unused buffer bytes, ...)
            raise WireError(f"message is not valid safetensors: {e}") from None
    with timed("values"):  # finite floats, integers in range
        _check_values(tensors, schema)
    return tensors, meta


def _check_values(tensors: dict[str, torch.Tensor], schema: Schema) -> None:
    """Floats finite, values in the schema's range. One pass per tensor: ``aminmax`` propagates NaN and
    shows an infinity as an extreme, and is a twentieth of ``isfinite(t).all()``'s time on a CPU."""
    for name, spec in schema.tensors.items():
        t = tensors[name]
        if not t.numel() or (not t.is_floating_point() and spec.low is None and spec.high is None):
            continue
        lo, hi = (float(v) for v in torch.aminmax(t if t.is_floating_point() else t.to(torch.int64)))
        if t.is_floating_point() and not (math.isfinite(lo) and math.isfinite(hi)):
            raise WireError(f"tensor {name!r} holds NaN or infinite values")
        if spec.low is not None and lo < spec.low:
            raise WireError(f"tensor {name!r} has values below {spec.low}")
        if spec.high is not None and hi > spec.high:
            raise WireError(f"tensor {name!r} has values above {spec.high}")
