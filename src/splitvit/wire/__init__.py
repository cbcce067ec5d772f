"""The only code that turns tensors into bytes and back (safetensors, schema-checked on arrival)."""

from .codec import DTYPES, MAX_HEADER_BYTES, Schema, TensorSpec, WireError, decode, encode, read_header
from .protocol import KINDS, Header, expect, pack, unpack

__all__ = ["DTYPES", "KINDS", "MAX_HEADER_BYTES", "Header", "Schema", "TensorSpec", "WireError", "decode", "encode",
           "expect", "pack", "read_header", "unpack"]
