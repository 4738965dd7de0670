"""Reading `.safetensors` files one tensor at a time, with plain reads instead of mmap.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
its dtype, shape and byte range, then the raw data. Reading the header alone tells us every
tensor's shape and dtype and whether the file is complete, without touching the data.

Tensors are read with `readinto` into a buffer the caller chooses (a pinned staging buffer on
the way to a GPU, or the destination tensor itself on CPU). Nothing is memory-mapped, so host
RSS stays about one tensor above baseline however large the shard: mmap-based readers count
every page they touch as resident until the file is closed.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CorruptFileError, MissingFileError

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

# A header larger than this is not a weights file (the 14B index of 1,260 tensors is ~150 kB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; `start`/`end` are absolute file offsets."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    file_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def max_tensor_bytes(self) -> int:
        return max((t.nbytes for t in self.tensors.values()), default=0)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header; never reads tensor data.

    Raises MissingFileError if the file is absent, CorruptFileError if the header is not valid
    or the file is shorter than the header says (the usual sign of an interrupted download).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: file not found")
    file_size = path.stat().st_size
    if file_size < 8:
        raise CorruptFileError(f"{path}: {file_size} bytes, too short to be a safetensors file")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise CorruptFileError(
                f"{path}: header claims {header_len} bytes but the file has {file_size}; "
                "not a safetensors file, or truncated"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: header is not a JSON object")

    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        tensors[name] = _parse_entry(path, name, info, data_start)

    needed = max((t.end for t in tensors.values()), default=data_start)
    if needed > file_size:
        short = [t.name for t in tensors.values() if t.end > file_size]
        raise CorruptFileError(
            f"{path}: truncated: the header needs {needed} bytes but the file has {file_size} "
            f"({len(short)} tensors lie past the end, e.g. {sorted(short)[0]}); "
            "download it again"
        )
    return SafetensorsHeader(path=path, file_size=file_size, tensors=tensors, metadata=metadata)


def _parse_entry(path: Path, name: str, info: object, data_start: int) -> TensorEntry:
    try:
        assert isinstance(info, dict)
        dtype_name = info["dtype"]
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: malformed header entry for {name!r}") from exc
    if dtype_name not in DTYPES:
        raise CorruptFileError(f"{path}: tensor {name!r} has unknown dtype {dtype_name!r}")
    dtype = DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if any(s < 0 for s in shape) or begin < 0 or end - begin != expected:
        raise CorruptFileError(
            f"{path}: tensor {name!r} of shape {list(shape)} {dtype_name} should span "
            f"{expected} bytes, header says {end - begin}"
        )
    return TensorEntry(name, dtype, shape, data_start + begin, data_start + end)


class TensorFile:
    """An open safetensors file from which tensors are read on demand.

    Use as a context manager. `read_into` fills a caller-provided CPU tensor; `read` allocates.
    """

    def __init__(self, header: SafetensorsHeader) -> None:
        self.header = header
        self._fd = os.open(header.path, os.O_RDONLY)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def read_into(self, entry: TensorEntry, out: torch.Tensor) -> torch.Tensor:
        """Read `entry`'s bytes into `out` (contiguous CPU, at least entry.nbytes long).

        Returns a view of `out` with the entry's dtype and shape.
        """
        if not out.is_contiguous():  # reshape would copy: the bytes would land in the copy
            raise ValueError(f"the buffer for {entry.name} is not contiguous")
        flat = out.reshape(-1).view(torch.uint8)[: entry.nbytes]
        if flat.numel() < entry.nbytes:
            raise ValueError(f"buffer of {flat.numel()} bytes is too small for {entry.name}")
        self.read_bytes_into(entry.start, flat, entry.name)
        return flat.view(entry.dtype).view(entry.shape)

    def read_bytes_into(self, offset: int, out: torch.Tensor, what: str) -> None:
        """Fill the flat uint8 CPU tensor `out` with the file's bytes from `offset` (`what`:
        the tensor they belong to, for the error)."""
        view = memoryview(out.numpy())
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise CorruptFileError(
                    f"{self.header.path}: unexpected end of file while reading {what} "
                    "(the file shrank while it was being read?)"
                )
            done += n

    def read(self, entry: TensorEntry) -> torch.Tensor:
        out = torch.empty(entry.shape, dtype=entry.dtype)
        if entry.nbytes:
            self.read_into(entry, out)
        return out
