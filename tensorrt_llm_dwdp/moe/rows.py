"""Token rows as DEP's dispatch carries them: the byte layout of one row, and activations already quantized.

A BF16 (or fp32) row is the hidden values, then K int32 local expert ids and K fp32 routing weights. An FP8 row
is the hidden values as e4m3 with one fp32 scale per 1x128 block (`ops.quantize_fp8`), then the same ids and
weights: about half the bytes of a BF16 row, and exactly what an FP8 expert kernel quantizes its input to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .ops import FP8_BLOCK, quantize_fp8

FP8 = torch.float8_e4m3fn


def _round16(n: int) -> int:
    return -(-n // 16) * 16


@dataclass(frozen=True)
class QuantizedRows:
    """Activations already quantized 1x128: q [R, H] e4m3 and scales [R, H/128] fp32 (may be strided views of a
    receive buffer, read in place); `dtype` is the activations' own dtype (what dequantizing gives back, and the
    dtype the expert kernel is chosen for). An FP8 expert kernel takes q and scales as they are; others
    dequantize them."""

    q: torch.Tensor
    scales: torch.Tensor
    dtype: torch.dtype

    @classmethod
    def of(cls, x: torch.Tensor) -> "QuantizedRows":
        q, s = quantize_fp8(x)
        return cls(q, s, x.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def is_cuda(self) -> bool:
        return self.q.is_cuda

    def select(self, index: torch.Tensor) -> "QuantizedRows":
        """Rows `index` [M] (copies; bytes are moved as uint8, whichever dtype index_select covers)."""
        q = self.q.view(torch.uint8).index_select(0, index).view(FP8)
        s = self.scales.view(torch.uint8).index_select(0, index).view(torch.float32)
        return QuantizedRows(q, s, self.dtype)

    def dequantize(self, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[M, H] in `dtype`: q * its block's scale (in fp32), rows `index` only when given."""
        rows = self if index is None else self.select(index)
        h = rows.q.shape[1]
        scale = rows.scales.float().repeat_interleave(FP8_BLOCK, -1)[:, :h]
        return (rows.q.float() * scale).to(self.dtype)


@dataclass(frozen=True)
class RowLayout:
    """One dispatched row as bytes, 16-byte rows. dtype: the activations' dtype (a BF16 row's values, and what
    combine sends back). fp8: the values travel as e4m3 with fp32 1x128 scales (hidden a multiple of 128).

    BF16 row: hidden values (padded to 16 bytes), then K int32 ids and K fp32 weights (padded to 16 bytes).
    FP8 row: H e4m3 values, H/128 fp32 scales, K int32 ids, K fp32 weights; the whole padded to 16 bytes."""

    hidden: int
    dtype: torch.dtype
    k: int
    fp8: bool = False

    def __post_init__(self):
        if self.fp8 and self.hidden % FP8_BLOCK:
            raise ValueError(f"FP8 dispatch: hidden {self.hidden} is not a multiple of the {FP8_BLOCK}-column scale "
                             "block. Fix: BF16 dispatch")

    @property
    def x_bytes(self) -> int:
        """Bytes before the ids: the hidden values (and, FP8, their scales)."""
        if self.fp8:
            return self.hidden + 4 * (self.hidden // FP8_BLOCK)
        return _round16(self.hidden * self.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        if self.fp8:
            return _round16(self.x_bytes + 8 * self.k)
        return self.x_bytes + _round16(8 * self.k)

    @property
    def out_row_bytes(self) -> int:
        """A combine row: the hidden values in the activations' dtype."""
        return self.hidden * self.dtype.itemsize

    def x(self, buf: torch.Tensor):
        """The hidden values of buf's rows: a tensor, or QuantizedRows for FP8 (views, no copy)."""
        if self.fp8:
            return QuantizedRows(buf[:, :self.hidden].view(FP8), buf[:, self.hidden:self.x_bytes].view(torch.float32),
                                 self.dtype)
        return buf[:, :self.hidden * self.dtype.itemsize].view(self.dtype)

    def ids(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[:, self.x_bytes:self.x_bytes + 4 * self.k].view(torch.int32)

    def weights(self, buf: torch.Tensor) -> torch.Tensor:
        return buf[:, self.x_bytes + 4 * self.k:self.x_bytes + 8 * self.k].view(torch.float32)

    def fill(self, buf: torch.Tensor, x: torch.Tensor, token: torch.Tensor) -> None:
        """Write x[token] into buf's value bytes (x [T, H] in `dtype`; token [rows]): FP8 rows are quantized once
        per token (T rows, not one per send row), then gathered with their scales. T == 0 zeroes them."""
        if not x.shape[0]:
            buf[:, :self.x_bytes].zero_()
            return
        if not self.fp8:
            torch.index_select(x, 0, token, out=self.x(buf))
            return
        q, s = quantize_fp8(x)
        torch.index_select(q.view(torch.uint8), 0, token, out=buf[:, :self.hidden])
        torch.index_select(s.view(torch.uint8), 0, token, out=buf[:, self.hidden:self.x_bytes])
