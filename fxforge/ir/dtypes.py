"""Element types of the IR.

One table, `DType`, names every element type a value can have and maps it to torch. Sub-byte and
fp8 types have no arithmetic of their own in the reference semantics: values of those types live in
the weight table as packed payloads and are decoded by `dequantize`/`qlinear`. The design's list is
extended with f64, i64 and i16 because real captured graphs carry them (token ids, position ids).
"""

from __future__ import annotations

import enum

import torch


class DType(enum.Enum):
    """An element type: its IR name, bit width, kind, and the torch dtype that stores it."""

    f64 = ("f64", 64, "float", torch.float64)
    f32 = ("f32", 32, "float", torch.float32)
    f16 = ("f16", 16, "float", torch.float16)
    bf16 = ("bf16", 16, "float", torch.bfloat16)
    f8e4m3 = ("f8e4m3", 8, "float", torch.float8_e4m3fn)
    f8e5m2 = ("f8e5m2", 8, "float", torch.float8_e5m2)
    f4e2m1 = ("f4e2m1", 4, "float", torch.uint8)  # stored packed, two codes per byte
    i64 = ("i64", 64, "int", torch.int64)
    i32 = ("i32", 32, "int", torch.int32)
    i16 = ("i16", 16, "int", torch.int16)
    i8 = ("i8", 8, "int", torch.int8)
    i4 = ("i4", 4, "int", torch.uint8)  # stored packed, two values per byte
    u8 = ("u8", 8, "int", torch.uint8)
    bool = ("bool", 1, "bool", torch.bool)

    def __init__(self, ir_name: str, bits: int, kind: str, torch_dtype: torch.dtype) -> None:
        self.ir_name = ir_name
        self.bits = bits
        self.kind = kind
        self.torch = torch_dtype

    def __str__(self) -> str:
        return self.ir_name

    def __repr__(self) -> str:
        return f"DType.{self.ir_name}"

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_packed(self) -> bool:
        """True for types narrower than a byte, whose payloads pack several values per byte."""
        return self.bits < 8 and self.kind != "bool"

    @staticmethod
    def from_torch(dtype: torch.dtype) -> DType:
        try:
            return _FROM_TORCH[dtype]
        except KeyError:
            raise TypeError(f"torch dtype {dtype} has no fxforge IR dtype") from None

    @staticmethod
    def parse(name: str) -> DType:
        try:
            return DType[name]
        except KeyError:
            known = ", ".join(d.ir_name for d in DType)
            raise ValueError(f"unknown dtype {name!r}; known dtypes: {known}") from None


# Packed types share torch.uint8 with u8; u8 wins the reverse lookup.
_FROM_TORCH = {d.torch: d for d in reversed(list(DType)) if not d.is_packed}
