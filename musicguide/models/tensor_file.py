"""A safetensors file's tensors as views of the file mapped into memory: its header read and checked
once, then a view per tensor (no copy).

safetensors' own `safe_open(...).get_tensor` costs about 50 µs per tensor: half the time of loading
the demo model's 389 tensors, more than reading its whole file. This reads the same format
(https://github.com/huggingface/safetensors#format): 8 bytes of header length (little-endian), a
JSON header naming each tensor's dtype, shape and byte range, then the bytes. The header is checked
as the format requires before any view is made — every range inside the file, the ranges tiling the
data with no gap or overlap, each range the size its shape and dtype give — so a truncated or
malformed file is a clear error, never a read out of bounds.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

# The format's dtype names. Multi-byte values are little-endian in the file, as in memory on the
# machines torch runs on (checked in TensorFile).
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit


class TensorFileError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


@dataclass(frozen=True)
class Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the file
    nbytes: int


class TensorFile:
    """A safetensors file, mapped read-only. `entries` (name → Entry, in file order) come from its
    checked header; `views()` are its tensors over the mapped bytes. Views keep the mapping alive
    as long as they live; copy what should outlive them."""

    def __init__(self, path: str | os.PathLike[str]):
        if sys.byteorder != "little":
            raise TensorFileError("reading safetensors needs a little-endian machine")
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size < 8:
                raise TensorFileError("too short for a header")
            # Sizes are checked against the map itself, so that a file changed since it was
            # opened cannot put a view outside what is mapped.
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(self._map)
        header_bytes = int.from_bytes(self._map[:8], "little")
        if header_bytes > min(MAX_HEADER_BYTES, size - 8):
            raise TensorFileError(f"a header of {header_bytes} bytes in a file of {size}")
        header = _parse_header(self._map[8:8 + header_bytes])
        self.entries = _check_entries(header, data_start=8 + header_bytes, data_bytes=size - 8 - header_bytes)
        self.metadata = header.get("__metadata__") or {}

    def keys(self) -> list[str]:
        return list(self.entries)

    def views(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (all by default), each a view of the mapped bytes."""
        with warnings.catch_warnings():
            # The map is read-only and torch warns that its tensors are not writable: nothing writes them.
            warnings.simplefilter("ignore", UserWarning)
            return {name: self._view(self.entries[name]) for name in (self.entries if names is None else names)}

    def _view(self, entry: Entry) -> torch.Tensor:
        if entry.nbytes == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        count = entry.nbytes // entry.dtype.itemsize
        return torch.frombuffer(self._map, dtype=entry.dtype, count=count, offset=entry.offset).view(entry.shape)


def _parse_header(raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TensorFileError(f"its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise TensorFileError("its header is not a JSON object")
    return header


def _check_entries(header: dict, data_start: int, data_bytes: int) -> dict[str, Entry]:
    """Name → Entry in file order, after checking every tensor's record and that their byte ranges
    tile the data exactly."""
    ranges = []
    for name, record in header.items():
        if name == "__metadata__":
            if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
                raise TensorFileError("its __metadata__ is not a map of strings")
            continue
        try:
            dtype = DTYPES[record["dtype"]]
            shape = tuple(record["shape"])
            begin, end = record["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"tensor {name!r} has no valid dtype, shape and data_offsets: {record!r}") from None
        if not all(type(n) is int and n >= 0 for n in (*shape, begin, end)):
            raise TensorFileError(f"tensor {name!r} has a shape or offsets that are not whole numbers ≥ 0")
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise TensorFileError(f"tensor {name!r} of shape {list(shape)} and dtype {record['dtype']} "
                                  f"spans {end - begin} bytes")
        ranges.append((begin, end, name, dtype, shape))
    ranges.sort(key=lambda r: (r[0], r[1]))
    position = 0
    for begin, end, name, _, _ in ranges:
        if begin != position:
            raise TensorFileError(f"tensor {name!r} starts at byte {begin} of the data, not {position}: "
                                  "a gap or an overlap")
        position = end
    if position != data_bytes:
        raise TensorFileError(f"its tensors span {position} bytes but the file holds {data_bytes}: "
                              "truncated, or bytes no tensor owns")
    return {name: Entry(dtype, shape, data_start + begin, end - begin) for begin, end, name, dtype, shape in ranges}
