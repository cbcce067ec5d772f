"""A serialised message opened in place: what a channel needs to damage a message's bytes as a link
would, and what a server needs to compare two messages, without decoding (or copying) their tensors.
The layout knowledge (safetensors' length field, header, data offsets) stays here, in ``wire/``."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import torch

from .codec import DTYPES, read_header

_TORCH = {v: k for k, v in DTYPES.items()}


@dataclass
class Frame:
    """A message's tensor entries (name -> ``dtype``, ``shape``, ``data_offsets``), its header metadata,
    and a writable copy of its data section: :meth:`view` gives a tensor whose writes land in the bytes
    :meth:`to_bytes` returns."""

    entries: dict[str, dict]
    meta: dict[str, str]
    data: bytearray
    _head: bytes  # the serialised header as it came: kept byte for byte while the metadata is unchanged
    _meta0: dict[str, str]

    def dtype(self, name: str) -> torch.dtype:
        """The torch dtype of tensor ``name``."""
        return _TORCH[self.entries[name]["dtype"]]

    def element_size(self, name: str) -> int:
        """Bytes per value of tensor ``name``."""
        return torch.empty((), dtype=self.dtype(name)).element_size()

    def view(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as a view into :attr:`data` (writes go to the message)."""
        e, dtype = self.entries[name], self.dtype(name)
        a, b = e["data_offsets"]
        if a == b:
            return torch.empty(e["shape"], dtype=dtype)
        return torch.frombuffer(self.data, dtype=dtype, count=(b - a) // self.element_size(name), offset=a).view(e["shape"])

    def to_bytes(self) -> bytes:
        """The message with its data (and its metadata, if changed) as they are now."""
        if self.meta == self._meta0:
            return self._head + bytes(self.data)
        head = json.dumps({**self.entries, "__metadata__": self.meta}, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
        return struct.pack("<Q", len(head)) + head + bytes(self.data)


def open_frame(payload: bytes) -> Frame:
    """``payload`` opened in place (its header checked for structure only)."""
    entries, meta = read_header(payload)
    (n,) = struct.unpack("<Q", bytes(payload[:8]))
    return Frame(entries, dict(meta), bytearray(payload[8 + n:]), bytes(payload[: 8 + n]), dict(meta))


def content_digest(payload: bytes) -> bytes:
    """SHA-256 of what a message says: its header in a canonical order, then its tensor bytes.
    (safetensors writes the metadata in no fixed order, so the same message can differ in its bytes.)"""
    entries, meta = read_header(payload)
    (n,) = struct.unpack("<Q", bytes(payload[:8]))
    h = hashlib.sha256(json.dumps([entries, meta], sort_keys=True).encode())
    h.update(memoryview(payload)[8 + n:])
    return h.digest()
