"""The message kinds and their header, defined once (wire/protocol.py)."""

import random

import pytest
import torch

from splitvit.wire import KINDS, Header, Schema, TensorSpec, WireError, encode, expect, pack, unpack

SCHEMA = Schema({"z": TensorSpec(torch.float32, ("B", 3))}, {"B": (1, 4)})


def test_round_trip_of_every_kind():
    headers = [Header("train", client=2, step=7), Header("grad", client=2, step=7, loss=1.25), Header("eval", mode="tokens"),
               Header("logits"), Header("weights", client=1, step=3), Header("control", step=2, mode="fetch")]
    assert {h.kind for h in headers} == set(KINDS)
    for h in headers:
        tensors, got = unpack(pack(h, {"z": torch.ones(2, 3)}), SCHEMA)
        assert got == h and torch.equal(tensors["z"], torch.ones(2, 3))


def test_the_schema_may_depend_on_the_header():
    seen = []
    unpack(pack(Header("eval", mode="uncompressed"), {"z": torch.ones(1, 3)}), lambda h: seen.append(h) or SCHEMA)
    assert seen == [Header("eval", mode="uncompressed")]


@pytest.mark.parametrize("meta, words", [
    ({"kind": "gossip"}, "not one of"), ({"kind": "train"}, "needs a step"), ({"kind": "grad", "step": "1"}, "loss"),
    ({"kind": "eval"}, "mode"), ({"kind": "train", "step": "-1"}, "whole number"), ({"kind": "train", "step": "9" * 4300}, "whole number"),
    ({"kind": "train", "step": " 1"}, "whole number"), ({"kind": "logits", "client": "x"}, "whole number"),
    ({"kind": "logits", "client": str(1 << 30)}, "outside"), ({"kind": "grad", "step": "1", "loss": "nan-ish"}, "not a finite number"),
    # other scripts' digits, which str.isdigit and float take: '²' (2, superscript), '١٢' (12, Arabic-Indic)
    ({"kind": "train", "step": "\u00b2"}, "whole number"), ({"kind": "train", "step": "\u0661\u0662"}, "whole number"),
    ({"kind": "grad", "step": "1", "loss": "\u0661\u0662"}, "not a finite number"),
    # a non-finite loss would reach metrics.jsonl as NaN, which strict JSON parsers reject
    ({"kind": "grad", "step": "1", "loss": "nan"}, "not a finite number"), ({"kind": "grad", "step": "1", "loss": "inf"}, "not a finite number"),
    ({"kind": "grad", "step": "1", "loss": "-Infinity"}, "not a finite number"), ({"kind": "grad", "step": "1", "loss": "1_0"}, "not a finite number"),
    ({"kind": "logits", "extra": "1"}, "unknown fields"),
])
def test_malformed_headers_are_wire_errors(meta, words):
    with pytest.raises(WireError, match=words):
        unpack(encode({"z": torch.ones(1, 3)}, meta), SCHEMA)


def test_expect_checks_the_kind_and_the_step():
    h = Header("grad", step=3, loss=0.5)
    assert expect(h, "grad", 3) is h
    with pytest.raises(WireError, match="expected a logits"):
        expect(h, "logits")
    with pytest.raises(WireError, match="step 3, not 4"):
        expect(h, "grad", 4)


def test_fuzzed_headers_are_refused_as_wire_errors_only():
    rng = random.Random(0)
    fields = ["kind", "client", "step", "mode", "loss", "x"]
    values = ["train", "grad", "eval", "logits", "", "0", "-3", "1e9", "9" * 5000, "nan", "inf", "\u00e9", "0x1f", "[]"]
    for _ in range(3000):
        meta = {rng.choice(fields): rng.choice(values) for _ in range(rng.randint(0, 5))}
        try:
            unpack(encode({"z": torch.ones(1, 3)}, meta), SCHEMA)
        except WireError:
            pass
