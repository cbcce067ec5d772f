import json
import struct

import pytest
import torch
from safetensors.torch import save

from splitvit.wire import MAX_HEADER_BYTES, Schema, TensorSpec, WireError, decode, encode

SCHEMA = Schema(
    {"z": TensorSpec(torch.float32, ("T", "k", 8)), "labels": TensorSpec(torch.int64, ("T",), low=0, high=9)},
    dims={"T": (1, 16), "k": (1, 5)},
)


def good(T=4, k=3):
    return {"z": torch.randn(T, k, 8), "labels": torch.arange(T) % 10}


def test_round_trip_and_size():
    msg = good()
    data = encode(msg, {"kind": "train", "step": 3})
    tensors, meta = decode(data, SCHEMA)
    assert meta == {"kind": "train", "step": "3"}
    for k in msg:
        assert torch.equal(tensors[k], msg[k])
    # the payload is the raw buffers plus a small header: nothing hidden, nothing missing
    (n,) = struct.unpack("<Q", data[:8])
    assert len(data) == 8 + n + 4 * 4 * 3 * 8 + 8 * 4
    assert SCHEMA.max_bytes() == 16 * 5 * 8 * 4 + 16 * 8


def test_bfloat16_round_trip():
    schema = Schema({"z": TensorSpec(torch.bfloat16, (2, 3))})
    z = torch.randn(2, 3).bfloat16()
    assert torch.equal(decode(encode({"z": z}), schema)[0]["z"], z)


@pytest.mark.parametrize(
    "msg, match",
    [
        ({"z": torch.randn(4, 3, 8)}, "missing"),
        ({**good(), "extra": torch.zeros(1)}, "unexpected"),
        ({"z": torch.randn(4, 3, 8).double(), "labels": torch.zeros(4, dtype=torch.long)}, "dtype"),
        ({"z": torch.randn(4, 3, 9), "labels": torch.zeros(4, dtype=torch.long)}, "expected 8"),
        ({"z": torch.randn(17, 3, 8), "labels": torch.zeros(17, dtype=torch.long)}, r"allowed \[1, 16\]"),
        ({"z": torch.randn(4, 3, 8), "labels": torch.zeros(5, dtype=torch.long)}, "must agree"),
        ({"z": torch.randn(4, 3), "labels": torch.zeros(4, dtype=torch.long)}, "dimensions"),
        ({"z": torch.full((4, 3, 8), float("nan")), "labels": torch.zeros(4, dtype=torch.long)}, "NaN"),
        ({"z": torch.full((4, 3, 8), float("inf")), "labels": torch.zeros(4, dtype=torch.long)}, "infinite"),
        ({"z": torch.randn(4, 3, 8), "labels": torch.tensor([0, 1, 2, 10])}, "above 9"),
        ({"z": torch.randn(4, 3, 8), "labels": torch.tensor([0, -1, 2, 3])}, "below 0"),
    ],
)
def test_schema_violations_are_refused(msg, match):
    with pytest.raises(WireError, match=match):
        decode(encode(msg), SCHEMA)


def test_truncated_message_is_refused():
    data = encode(good())
    for cut in (0, 5, 20, len(data) - 1):
        with pytest.raises(WireError):
            decode(data[:cut], SCHEMA)


def test_header_claiming_huge_tensor_is_refused_before_allocating():
    header = {"z": {"dtype": "F32", "shape": [10**6, 10**6, 8], "data_offsets": [0, 32 * 10**12]},
              "labels": {"dtype": "I64", "shape": [4], "data_offsets": [0, 32]}}
    raw = json.dumps(header).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * 64
    with pytest.raises(WireError, match="allowed"):
        decode(data, SCHEMA)
    big = Schema({"z": TensorSpec(torch.float32, ("n",))}, dims={"n": (1, 10**9)})
    raw = json.dumps({"z": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}}).encode()
    with pytest.raises(WireError, match="do not fit"):
        decode(struct.pack("<Q", len(raw)) + raw + b"\0" * 16, big)


@pytest.mark.parametrize(
    "data, match",
    [
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "header claims"),
        (struct.pack("<Q", 4) + b"\xff\xfe{]", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "JSON object"),
        (b"not bytes at all", "header claims"),
    ],
)
def test_malformed_headers_are_refused(data, match):
    with pytest.raises(WireError, match=match):
        decode(data, SCHEMA)


def test_offsets_that_lie_are_refused():
    data = bytearray(save(good()))
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    for entry in header.values():  # every tensor read from the start of the buffer
        entry["data_offsets"] = [0, entry["data_offsets"][1] - entry["data_offsets"][0]]
    raw = json.dumps(header).encode()
    forged = struct.pack("<Q", len(raw)) + raw + bytes(data[8 + n :])
    with pytest.raises(WireError):
        decode(forged, SCHEMA)


def test_metadata_must_be_strings():
    raw = json.dumps({"__metadata__": {"step": 3}}).encode()
    with pytest.raises(WireError, match="strings"):
        decode(struct.pack("<Q", len(raw)) + raw, Schema({}))


def test_not_bytes_is_refused():
    with pytest.raises(WireError, match="bytes"):
        decode("a string", SCHEMA)


def _mutations(seed: int, base: bytes) -> list[bytes]:
    """Seeded hostile variants of a valid message: flipped bytes, truncations, spliced and nested headers."""
    import json
    import random
    import struct

    rng = random.Random(seed)
    n = struct.unpack("<Q", base[:8])[0]
    header = base[8:8 + n]
    out = []
    for _ in range(4000):
        kind = rng.randrange(6)
        data = bytearray(base)
        if kind == 0:  # flip bytes anywhere
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(len(data))]
        elif kind == 2:  # flip bytes in the header only
            for _ in range(rng.randint(1, 4)):
                i = 8 + rng.randrange(n)
                data[i] = rng.randrange(256)
        elif kind == 3:  # deeply nested JSON
            depth = rng.randint(500, 50_000)
            h = ("[" * depth + "]" * depth).encode()
            data = bytearray(struct.pack("<Q", len(h)) + h)
        elif kind == 4:  # a JSON integer of thousands of digits where a shape or offset goes
            big = "9" * rng.randint(4_000, 20_000)
            h = header.decode().replace("[", f"[{big},", 1).encode()
            data = bytearray(struct.pack("<Q", len(h)) + h + base[8 + n:])
        else:  # a structurally odd but valid JSON header
            h = json.dumps(rng.choice([[], "x", 1, {"a": {"b": [1, {"c": None}]}}, {"__metadata__": {"k": 1}}])).encode()
            data = bytearray(struct.pack("<Q", len(h)) + h + base[8 + n:])
        out.append(bytes(data))
    return out


def test_fuzzed_messages_are_refused_as_wire_errors_only():
    """Every mutated message either decodes (a flip in the data can be a valid message) or is a WireError."""
    msg = {"h": torch.randn(4, 5, 6), "labels": torch.arange(4)}
    schema = Schema({"h": TensorSpec(torch.float32, ("B", 5, 6)), "labels": TensorSpec(torch.int64, ("B",))}, {"B": (1, 8)})
    base = encode(msg, {"kind": "train", "step": "0"})
    decoded = refused = 0
    for data in _mutations(0, base):
        try:
            decode(data, schema)
            decoded += 1
        except WireError:
            refused += 1
    assert decoded + refused == 4000 and refused > 2000
