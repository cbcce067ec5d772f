"""The only code that turns tensors into bytes and back (safetensors, schema-checked on arrival)."""

from .codec import DTYPES, MAX_HEADER_BYTES, Schema, TensorSpec, WireError, decode, encode, read_header

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "Schema", "TensorSpec", "WireError", "decode", "encode", "read_header"]
