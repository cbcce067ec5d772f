"""The only code that turns tensors into bytes and back (safetensors, schema-checked on arrival)."""

from .codec import DTYPES, MAX_HEADER_BYTES, Schema, TensorSpec, WireError, decode, encode, read_header
from .frame import Frame, content_digest, open_frame
from .protocol import KINDS, Header, expect, pack, unpack

__all__ = ["DTYPES", "KINDS", "MAX_HEADER_BYTES", "Frame", "Header", "Schema", "TensorSpec", "WireError", "content_digest",
           "decode", "encode", "expect", "open_frame", "pack", "read_header", "unpack"]
