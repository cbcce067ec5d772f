"""Value codecs: how many bits each floating-point value of any method's payload costs (``codec=``).

A method picks *which* values cross the link (ADC: merged samples, kept tokens; Top-K: the largest
entries); a codec picks *how many bits* each of them costs. The two are orthogonal, so a codec
applies to every method, in both directions:

- ``none``: float32, as the method sends it;
- ``fp16``, ``bf16``: the payload in 16 bits. These are the method's wire dtype (``wire.dtype``:
  ``float16``, ``bfloat16``), which the codec sets;
- ``int8``, ``int4``, ``int2``: uniform quantization on :mod:`~splitvit.compression.quant`'s grids
  (``grid`` for what goes up, ``grad_grid`` for the gradient; ``split.grad_center`` works as with
  ``method=quant``), one scale per tensor or per row of the last dimension (``granularity``), the
  codes bit-packed per row.

What is coded: each tensor the method marks ``analog`` (its activations, values, codebooks and the
gradient back). Side data stays exact: labels, ADC's soft targets (or its members' labels and merged
samples: ``method.merged_labels=members``), indices, bitmaps, scales and sizes. On the wire a coded tensor ``x`` becomes ``x.codes`` (uint8, digital to a channel: a flipped
bit moves a value to another level, a lost byte erases its codes, which decode as zero) and
``x.range`` (float32 ``[..., 2]``: each scale's origin and step), and, only where the length of its
last dimension varies from message to message (a low-rank factor's rank), ``x.n`` (int32), since
packed rows do not carry it. Each extra tensor costs a header entry (about 70 bytes), which a
message of a few kilobytes feels, and each row of codes is padded to a whole 8-code word: a
last dimension under 8 values (a low-rank factor of rank 2) saves less than the bits say.

``method=none codec=int4`` decodes to what ``method=quant method.bits=4`` decodes to: the same grid,
the same codes, the same values; the messages differ by their names and packing (quant packs a
sample per row, the codec a token). ``method=quant`` is kept as the method the paper compared with,
and a codec on top of it (or SL-ACC's) is refused: its payload is codes already.
"""

from __future__ import annotations

import torch

from ..channel import ANALOG, DIGITAL, PROTECTED
from ..wire import Schema, TensorSpec, WireError
from ..wire.bits import erased_codes, pack_rows, row_bytes, unpack_rows
from .base import ClientCodec, Decoded, Encoded, Message, Method, ServerCodec
from .quant import GRANULARITIES, GRIDS, dequantize, quantize

FLOAT_CODECS = {"fp16": "float16", "bf16": "bfloat16"}  # codec -> the wire.dtype it is
INT_CODECS = {"int8": 8, "int4": 4, "int2": 2}
CODECS = ("none", *FLOAT_CODECS, *INT_CODECS)
PARTS = ("codes", "range", "n")


def check_codec(name: str, wire_dtype: str = "float32") -> None:
    """``codec=<name>``'s name, or ``ValueError`` naming the codecs there are."""
    if name not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {name!r}")
    if name != "none" and wire_dtype != "float32":
        raise ValueError(f"codec={name} sets how the payload's values are sent, and so does wire.dtype={wire_dtype}: "
                         f"set one (codec=fp16 is wire.dtype=float16, codec=bf16 is wire.dtype=bfloat16)")


class RowQuantizer:
    """``x [..., n]`` -> ``{codes [..., row_bytes(n)], range [..., 2]}`` on one grid, and back."""

    def __init__(self, bits: int, granularity: str, grid: str):
        self.bits, self.granularity, self.grid = bits, granularity, grid
        self.levels = (1 << bits) - 1

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Floats -> (codes, per-row scales and offsets) on the codec's grid."""
        x = x.detach().float()
        shape = x.shape if x.dim() else (1,)
        rows = x.reshape(-1, shape[-1])
        per_row = self.granularity == "token" and len(shape) > 1
        codes, lo, scale = quantize(rows, self.levels, per_row, self.grid)
        packed = pack_rows(codes, self.bits).view(*shape[:-1], -1)
        grid = torch.stack([lo, scale], -1)
        return {"codes": packed, "range": grid.view(*shape[:-1], 2) if per_row else grid.view(2)}

    def decode(self, parts: dict[str, torch.Tensor], n: int, erased: torch.Tensor | None = None) -> torch.Tensor:
        """Codes and their scales -> the floats they stand for."""
        codes = parts["codes"]
        if codes.dim() == 0 or codes.shape[-1] != row_bytes(n, self.bits):
            raise WireError(f"codes of {tuple(codes.shape)} bytes do not hold rows of {n} values of {self.bits} bits")
        values = unpack_rows(codes.reshape(-1, codes.shape[-1]), self.bits, n).float()
        per_row = self.granularity == "token" and codes.dim() > 1
        grid = parts["range"].reshape(-1, 2) if per_row else parts["range"].reshape(1, 2)
        x = dequantize(values, grid[:, :1], grid[:, 1:])
        if erased is not None:  # codes a lossy channel never delivered: zero
            x = x.masked_fill(erased[:, :n].reshape(x.shape), 0.0)
        return x.view(*codes.shape[:-1], n)

    def schema(self, name: str, spec: TensorSpec, dims: dict) -> tuple[dict[str, TensorSpec], dict]:
        """The specs of ``name``'s parts for a tensor that ``spec`` bounds (its dims named in ``dims``),
        and the dims they add."""
        lead, last = tuple(spec.shape[:-1]), spec.shape[-1]
        per_row = self.granularity == "token" and len(lead) > 0
        specs = {f"{name}.range": TensorSpec(torch.float32, (*lead, 2) if per_row else (2,))}
        if not isinstance(last, str):
            specs[f"{name}.codes"] = TensorSpec(torch.uint8, (*lead, row_bytes(last, self.bits)))
            return specs, {}
        least, most = dims[last]
        packed = f"{name}.bytes"
        specs[f"{name}.codes"] = TensorSpec(torch.uint8, (*lead, packed))
        specs[f"{name}.n"] = TensorSpec(torch.int32, (1,), low=least, high=most)
        return specs, {packed: (row_bytes(least, self.bits), row_bytes(most, self.bits))}


class Coded(Method):
    """``inner`` with its analog payload sent by an integer codec (module docstring). It is ``inner`` in
    every other way: its name, options (read through to ``inner``), ratios and learned parts."""

    def __init__(self, inner: Method, bits: int, granularity: str = "tensor", grid: str = "minmax", grad_grid: str = "minmax"):
        if granularity not in GRANULARITIES:
            raise ValueError(f"codec.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        for key, value in (("codec.grid", grid), ("codec.grad_grid", grad_grid)):
            if value not in GRIDS:
                raise ValueError(f"{key} must be one of {', '.join(GRIDS)}, got {value!r}")
        self.inner, self.bits = inner, bits
        self.name, self.grad_of_tokens = inner.name, inner.grad_of_tokens
        self.sized_by, self.unscheduled = inner.sized_by, inner.unscheduled
        # an integer codec sends the values itself: the inner method's are float32 (check_codec)
        super().__init__(inner.num_classes, inner.tokens, inner.dim, seed=inner.seed, grad_center=inner.grad_center)
        if inner.rebuild is not None:  # at another compression target: the inner method's, coded the same way
            self.rebuild = lambda **changed: Coded(inner.rebuild(**changed), bits, granularity, grid, grad_grid)
        # to a channel, an analog tensor's codes are digital and its range and length side data
        self.roles = dict(inner.roles)
        for name in [k for k, role in inner.roles.items() if role == ANALOG]:
            self.roles.update({f"{name}.codes": DIGITAL, f"{name}.range": PROTECTED, f"{name}.n": PROTECTED})
        self.up = RowQuantizer(bits, granularity, grid)
        self.down = RowQuantizer(bits, granularity, grad_grid)
        sent = inner.up_schema(1, inner.tokens, inner.dim)
        # the tensors whose last dimension varies from message to message, by direction: they carry it (.n)
        probe = torch.empty(1, inner.tokens, inner.dim)
        evaluated = inner.activation_schema(1, inner.tokens, inner.dim)
        self.ragged = {"up": self._ragged(sent, evaluated), "down": self._ragged(inner.grad_schema(probe))}
        self.sent_up = Schema({**evaluated.tensors, **sent.tensors})  # the last dimension of what comes up
        if not any(inner.role(k) == ANALOG and s.dtype.is_floating_point for k, s in sent.tensors.items()):
            raise ValueError(f"method={inner.name} sends no floating-point payload (its values are codes already): an "
                             f"integer codec would code nothing. Set the method's own bits, or use codec=none")

    def __getattr__(self, name: str):
        """The inner method's own options and sizes (ADC's ``batch_ratio``, Top-K's ``kept``)."""
        if name == "inner":  # not set yet: no inner method to ask
            raise AttributeError(name)
        return getattr(self.inner, name)

    def client(self) -> "CodedClient":
        return CodedClient(self, self.inner.client())

    def server(self) -> "CodedServer":
        return CodedServer(self, self.inner.server())

    # -- messages: the inner method's, with its analog values coded ------------------------------------
    def _ragged(self, *schemas: Schema) -> set[str]:
        return {k for s in schemas for k, spec in s.tensors.items() if spec.shape and isinstance(spec.shape[-1], str)}

    def coded(self, name: str, t: torch.Tensor) -> bool:
        """Whether the message's tensor ``name`` is coded: the inner method's analog floating-point payload."""
        return "." not in name and self.inner.role(name) == ANALOG and t.is_floating_point()

    def pack(self, message: Message, direction: str) -> Message:
        """The inner method's message with its analog tensors coded for ``direction`` (``up``, ``down``)."""
        q = self.up if direction == "up" else self.down
        out = {}
        for name, t in message.items():
            if self.coded(name, t):
                out.update({f"{name}.{k}": v for k, v in q.encode(t).items()})
                if name in self.ragged[direction]:
                    out[f"{name}.n"] = torch.tensor([t.shape[-1]], dtype=torch.int32)
            else:
                out[name] = t
        return out

    def unpack(self, message: Message, direction: str, schema: Schema) -> Message:
        """``message``'s coded tensors decoded, as the inner method's ``schema`` describes them."""
        q = self.up if direction == "up" else self.down
        out = {k: v for k, v in message.items() if "." not in k}
        for key in message:
            if key.endswith(".codes"):
                name = key[: -len(".codes")]
                last = schema.tensors[name].shape[-1]
                n = int(message[f"{name}.n"]) if isinstance(last, str) else last
                out[name] = q.decode({p: message[f"{name}.{p}"] for p in PARTS if f"{name}.{p}" in message}, n,
                                     message.get(f"{name}._erased"))
        return out

    def coded_schema(self, s: Schema, direction: str) -> Schema:
        """The inner schema ``s`` with its analog tensors as the codec sends them in ``direction``."""
        q = self.up if direction == "up" else self.down
        tensors, dims = {}, dict(s.dims)
        for name, spec in s.tensors.items():
            if self.inner.role(name) == ANALOG and spec.dtype.is_floating_point:
                specs, more = q.schema(name, spec, s.dims)
                tensors.update(specs)
                dims.update(more)
            else:
                tensors[name] = spec
        return Schema(tensors, dims=dims)

    def activation_schema(self, B, N, D) -> Schema:
        return self.coded_schema(self.inner.activation_schema(B, N, D), "up")

    def up_schema(self, B, N, D) -> Schema:
        return self.coded_schema(self.inner.up_schema(B, N, D), "up")

    def grad_schema(self, sent) -> Schema:
        return self.coded_schema(self.inner.grad_schema(sent), "down")

    def eval_schema(self, B, N, D, mode) -> Schema:
        """The inner method's evaluation schema, coded as its training messages are."""
        s = self.inner.eval_schema(B, N, D, mode)
        return self.coded_schema(s, "up") if mode == "compressed" else s

    # -- what the method says about itself: the inner method's ----------------------------------------
    def target_ratio(self) -> float:
        return self.inner.target_ratio()

    def nominal_ratio(self, B, N, D) -> float:
        """The inner method's, its float32 values at ``bits`` each (what the codec sends of them)."""
        return self.inner.nominal_ratio(B, N, D) * self.bits / 32

    @property
    def value_ratio(self) -> float:
        """Bits of one coded value over float32's 32."""
        return self.bits / 32

    def check_batch(self, batch_size: int) -> None:
        self.inner.check_batch(batch_size)

    def eval_token_ratio(self) -> float:
        """The inner method's."""
        return self.inner.eval_token_ratio()

    def repair(self, message: Message, erased: dict[str, torch.Tensor]) -> tuple[Message, dict[str, int]]:
        """The inner method repairs its own tensors; a coded tensor's lost bytes erase their codes (any
        bit pattern is a valid code, so flipped bits need nothing)."""
        own = {k: v for k, v in message.items() if "." not in k}
        message_out, counts = self.inner.repair(own, {k: v for k, v in erased.items() if k in own})
        message_out.update({k: v for k, v in message.items() if "." in k})
        for key, lost in erased.items():
            if key.endswith(".codes"):
                name = key[: -len(".codes")]
                row = message[key].shape[-1]  # the codes of whole words: the padding's too, cut when decoded
                rows = erased_codes(lost.reshape(-1, row), self.bits, row * 8 // self.bits)
                message_out[f"{name}._erased"] = rows
                counts["erased"] += int(rows.sum())
        return message_out, counts


class CodedClient(ClientCodec):
    """The inner method's client side, its message coded on the way up and the gradient decoded on the
    way back before the inner side reads it."""

    def __init__(self, method: Coded, inner: ClientCodec):
        super().__init__(method)
        self.inner = inner
        self.modules = inner.modules  # the inner side's learned parts, trained by this side's optimizer

    def encode(self, h, cls_attn, labels=None) -> Encoded:
        sent = self.inner.encode(h, cls_attn, labels)
        m = self.method
        schema = m.inner.grad_schema(sent.tensor)
        return Encoded(m.pack(sent.message, "up"), sent.tensor, lambda reply: sent.decode(m.unpack(reply, "down", schema)))

    def use(self, method: Coded) -> None:
        self.method = method
        self.inner.use(method.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the inner side's state."""
        self.inner.load_state_dict(state)


class CodedServer(ServerCodec):
    """The inner method's server side, reading the decoded message and coding the gradient it replies."""

    def __init__(self, method: Coded, inner: ServerCodec):
        super().__init__(method)
        self.inner = inner
        self.modules = inner.modules

    def decode(self, message) -> Decoded:
        m = self.method
        got = self.inner.decode(m.unpack(message, "up", m.sent_up))
        return Decoded(got.z, got.targets, lambda: m.pack(got.reply(), "down"))

    def use(self, method: Coded) -> None:
        self.method = method
        self.inner.use(method.inner)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore the inner side's state."""
        self.inner.load_state_dict(state)


def apply_codec(method: Method, name: str = "none", **options) -> Method:
    """``method`` with ``codec=<name>``: itself for ``none`` and the float codecs (which are its wire
    dtype, set when it is built), else :class:`Coded`."""
    check_codec(name)
    if name not in INT_CODECS:
        if options:
            raise ValueError(f"codec={name} has no options; got {', '.join(sorted(options))}")
        return method
    unknown = sorted(set(options) - {"granularity", "grid", "grad_grid"})
    if unknown:
        raise ValueError(f"codec={name} has no option {', '.join(unknown)}; its options: granularity, grid, grad_grid")
    return Coded(method, INT_CODECS[name], **options)
