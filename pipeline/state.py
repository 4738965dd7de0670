"""Stream state on disk: portable (safetensors + JSON), no pickle.

A state is `{"meta": <JSON-able dict>, "tensors": {name: CPU tensor}}`, as returned by
`Stream.state_dict()`. Tensor names are grouped by owner, so a pipeline-parallel engine can
write and read its share alone:

    sink.*        the latents the sink was built from (`sink.latent`, `sink.motion`)
    step.<i>.*    the ring cache of denoising step i
    decoder.*     the streaming VAE decoder's feature cache

The sink's keys and values (2.3 GB at 720x400 for the 14B model) are not kept: they are a
function of `sink.latent` [16, 1, h, w] (the portrait's reference latent before clip 0, the
stream's own first latent frame after it), `sink.motion` [16, 1 + (motion frames - 1) / 4, h, w]
(the portrait's motion latents: kept, 1.4 MB, so a resume runs no VAE encoder), the prompt and
the model, and a resume prefills them again. That gives the same bits in another process because every compiled kernel
is built in inductor's deterministic mode (see docs/benchmarks.md, the two checkpoint tiers).
States of format 1 hold the sink's caches instead (`SINK_CACHES`); they still resume, by copy,
and a stream resumed from one past its clip 0 keeps writing them (its sink's latents are not
known). Readers tell the two apart by the tensors' names.

`save_state` / `load_state` keep a whole state in one file (or file object).
`write_checkpoint` / `read_checkpoint` keep it in a directory, one shard per group, and write
`manifest.json` last: a directory without a manifest is not a checkpoint. A restore need not
hold a whole state in host memory: `CheckpointSource` reads a checkpoint directory tensor by
tensor, straight into the tensors being restored (`TensorSource.fill`).
"""

from __future__ import annotations

import json
import os
import struct
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file as st_save_file

from pipeline.host_buffers import copy_piecewise
from pipeline.params import Precision, PrecisionMismatch
from pipeline.weights.errors import CorruptFileError
from pipeline.weights.safetensors_file import (
    SafetensorsHeader,
    TensorEntry,
    TensorFile,
    read_header,
)

FORMAT = "longtake.stream-state/2"
READABLE = (FORMAT, "longtake.stream-state/1")
SINK_LATENT = "sink.latent"
SINK_MOTION = "sink.motion"
SINK_CACHES = ("sink.ref_keys", "sink.motion_keys", "sink.values")
"""What a format-1 state holds of the sink instead of its latent."""
MANIFEST = "manifest.json"
_META_KEY = "longtake.state"

StateDict = dict[str, Any]


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in tensors.items()}


def _encode_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    return {_META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)}


def _decode_meta(raw: Mapping[str, str] | None) -> dict[str, Any]:
    if not raw or _META_KEY not in raw:
        raise ValueError("not a longtake stream state (no state metadata)")
    meta = json.loads(raw[_META_KEY])
    if meta.pop("format", None) not in READABLE:
        raise ValueError(f"unsupported stream state format; expected one of {READABLE}")
    return meta


def save_state(state: StateDict, dest: str | os.PathLike[str] | IO[bytes]) -> None:
    """Write a whole state to one file path or binary file object."""
    tensors, meta = _contiguous(state["tensors"]), _encode_meta(state["meta"])
    if isinstance(dest, (str, os.PathLike)):
        st_save_file(tensors, str(dest), metadata=meta)
    else:
        dest.write(st_save(tensors, metadata=meta))


def load_state(src: str | os.PathLike[str] | IO[bytes] | bytes) -> StateDict:
    """Read a state written by `save_state`; tensors land on the CPU."""
    if isinstance(src, (str, os.PathLike)):
        with safe_open(str(src), framework="pt", device="cpu") as f:
            meta = _decode_meta(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        return {"meta": meta, "tensors": tensors}
    data = src if isinstance(src, bytes) else src.read()
    return {"meta": _decode_meta(_header_metadata(data)), "tensors": st_load(data)}


def _header_metadata(data: bytes) -> dict[str, str] | None:
    if len(data) < 8:
        raise ValueError("not a longtake stream state (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError:
        raise ValueError("not a longtake stream state (unreadable header)") from None
    return header.get("__metadata__")


def precision_of(meta: Mapping[str, Any]) -> str:
    """The precision a state was rendered at (states from before precisions were recorded
    were all rendered by the bf16 path)."""
    return str(meta.get("precision", "bf16"))


def require_precision(meta: Mapping[str, Any], precision: Precision) -> None:
    """Raise PrecisionMismatch unless the state `meta` describes was rendered at `precision`."""
    saved = precision_of(meta)
    if saved != precision:
        raise PrecisionMismatch(saved, precision)


ROW_MAJOR, CONV = "row-major", "conv"
"""The residual stream's layouts (`WanS2VTransformer.row_major_stream`): frames differ in
rounding between them, so a stream resumes in the layout it was rendered in."""


def layout_name(row_major: bool) -> str:
    return ROW_MAJOR if row_major else CONV


def row_major_of(meta: Mapping[str, Any]) -> bool:
    """Whether a state was rendered with the residual stream row-major (states from before the
    layout was recorded were all rendered in the convolution's)."""
    layout = meta.get("layout", CONV)
    if layout not in (ROW_MAJOR, CONV):
        raise ValueError(f"the stream state has an unknown layout {layout!r}")
    return layout == ROW_MAJOR


def shard_of(name: str) -> str:
    """The shard file a tensor belongs to: sink, step-<i> or decoder."""
    head, _, rest = name.partition(".")
    if head == "step":
        return f"step-{rest.partition('.')[0]}"
    return head


def write_checkpoint(state: StateDict, directory: str | os.PathLike[str]) -> list[Path]:
    """Write the state's shards into `directory`, then `manifest.json` last (atomically).

    Returns the files written, manifest last. A crash before the manifest leaves a directory
    that `read_checkpoint` refuses.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an overwritten checkpoint is invalid until done
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state["tensors"].items():
        groups.setdefault(shard_of(name), {})[name] = tensor
    written: list[Path] = []
    shards = []
    for shard, tensors in sorted(groups.items()):
        path = out / f"{shard}.safetensors"
        st_save_file(_contiguous(tensors), str(path), metadata={"shard": shard})
        _fsync(path)
        written.append(path)
        shards.append({"file": path.name, "bytes": path.stat().st_size, "tensors": len(tensors)})
    manifest = {"format": FORMAT, "meta": state["meta"], "shards": shards}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync(tmp)
    tmp.replace(out / MANIFEST)
    written.append(out / MANIFEST)
    return written


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint directory's manifest (its state's meta and its shards), read alone."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{root} is not a checkpoint: {MANIFEST} is missing (incomplete write?)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") not in READABLE:
        raise ValueError(f"{manifest_path}: unsupported format; expected one of {READABLE}")
    return manifest


def read_checkpoint(directory: str | os.PathLike[str]) -> StateDict:
    """Read a checkpoint directory written by `write_checkpoint`."""
    root = Path(directory)
    manifest = read_manifest(root)
    tensors: dict[str, torch.Tensor] = {}
    for shard in manifest["shards"]:
        path = root / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            raise ValueError(f"{path}: missing or truncated checkpoint shard")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - not a dict
                tensors[key] = f.get_tensor(key)
    return {"meta": manifest["meta"], "tensors": tensors}


# ---- reading a state for a restore ----------------------------------------------------------


class TensorSource(Protocol):
    """Where a restore reads a state from: its meta and its tensors by name."""

    @property
    def meta(self) -> dict[str, Any]: ...

    def names(self) -> set[str]: ...

    def get(self, name: str) -> torch.Tensor:
        """Tensor `name`, on the host."""
        ...

    def fill(self, targets: Mapping[str, torch.Tensor]) -> None:
        """Copy each named tensor into `targets[name]` (same shape and dtype, any device,
        possibly strided) and return when every copy is done."""
        ...


class StateSource:
    """A state held in memory (`StateDict`)."""

    def __init__(self, state: StateDict):
        self._meta = state["meta"]
        self._tensors: dict[str, torch.Tensor] = state["tensors"]

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def names(self) -> set[str]:
        return set(self._tensors)

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def fill(self, targets: Mapping[str, torch.Tensor]) -> None:
        for name, dst in targets.items():
            _check_fits(name, self.get(name), dst)
            copy_piecewise(dst, self.get(name))  # it may be a capture's page-locked buffer
        _wait_for_copies(targets)


class CheckpointSource:
    """A checkpoint directory, read tensor by tensor when asked (nothing is read at opening
    but the manifest and the shards' headers; sizes are checked against the manifest).

    `fill` reads each tensor from disk straight into where it is restored: into CPU tensors
    directly, into GPU tensors through page-locked staging buffers of `chunk_bytes` (reader
    threads fill some while others are copied to the device), so no host copy of the state
    exists and the disk and the PCIe link work at once. `readers` threads read at once: one
    thread reads from the page cache at ~4.5 GB/s, eight at ~27 GB/s (an H200 host,
    2026-12-02), which is what a restore of tens of GB waits on."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        chunk_bytes: int = 64 << 20,
        readers: int = 8,
    ):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.chunk_bytes = chunk_bytes
        self.readers = max(1, readers)
        self._where: dict[str, tuple[Path, TensorEntry]] = {}
        self._headers: dict[Path, SafetensorsHeader] = {}
        for shard in self.manifest["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["bytes"]:
                raise ValueError(f"{path}: missing or truncated checkpoint shard")
            header = self._headers[path] = read_header(path)
            for name, entry in header.tensors.items():
                self._where[name] = (path, entry)

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest["meta"]

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> torch.Tensor:
        path, entry = self._where[name]
        with TensorFile(self._headers[path]) as f:
            return f.read(entry)

    def _read_span(self, path: Path, offset: int, out: torch.Tensor) -> None:
        """Read out.numel() bytes of shard `path` from `offset` into the flat uint8 `out`."""
        with TensorFile(self._headers[path]) as f:
            try:
                f.read_bytes_into(offset, out, f"{path.name} at byte {offset}")
            except CorruptFileError as exc:  # a checkpoint that cannot resume: a ValueError
                raise ValueError(str(exc)) from exc

    def fill(self, targets: Mapping[str, torch.Tensor]) -> None:
        # (file, offset, the destination's bytes: a flat uint8 view of a contiguous row)
        rows: list[tuple[Path, int, torch.Tensor]] = []
        for name, dst in targets.items():
            path, entry = self._where[name]
            if tuple(dst.shape) != entry.shape or dst.dtype != entry.dtype:
                raise ValueError(
                    f"{name}: the checkpoint holds {entry.dtype} {list(entry.shape)}, "
                    f"the stream {dst.dtype} {list(dst.shape)}"
                )
            offset = entry.start
            for row in _contiguous_rows(dst):
                flat = _bytes_of(row)
                rows.append((path, offset, flat))
                offset += flat.numel()
        if not rows:
            return
        if any(flat.device.type == "cuda" for _, _, flat in rows):
            # through staging buffers of chunk_bytes: rows in pieces of at most that
            pieces = [
                (path, offset + at, flat[at : at + self.chunk_bytes])
                for path, offset, flat in rows
                for at in range(0, flat.numel(), self.chunk_bytes)
            ]
            self._fill_through_staging(pieces)
        else:  # straight into host memory, a row per read
            with ThreadPoolExecutor(max_workers=self.readers) as pool:
                for done in [pool.submit(self._read_span, *row) for row in rows]:
                    done.result()

    def _fill_through_staging(self, pieces: list[tuple[Path, int, torch.Tensor]]) -> None:
        # two staging buffers per reader: while a reader fills one, the other's bytes can be
        # on their way to the device; a buffer is refilled once its copy has run
        biggest = max(piece.numel() for _, _, piece in pieces)
        count = min(2 * self.readers, len(pieces))
        buffers = [torch.empty(biggest, dtype=torch.uint8, pin_memory=True) for _ in range(count)]
        copied: list[torch.cuda.Event | None] = [None] * count
        device = next(piece.device for _, _, piece in pieces if piece.device.type == "cuda")
        side = torch.cuda.Stream(device)

        def read(slot: int, path: Path, offset: int, n: int) -> None:
            event = copied[slot]
            if event is not None:
                event.synchronize()  # the buffer's last bytes have reached the device
            self._read_span(path, offset, buffers[slot][:n])

        queue = iter(pieces)
        in_flight: deque[tuple[int, torch.Tensor, Future[None]]] = deque()

        with ThreadPoolExecutor(max_workers=self.readers) as pool, torch.cuda.stream(side):

            def submit(slot: int) -> None:
                piece = next(queue, None)
                if piece is not None:
                    path, offset, dst = piece
                    in_flight.append(
                        (slot, dst, pool.submit(read, slot, path, offset, dst.numel()))
                    )

            for slot in range(count):
                submit(slot)
            while in_flight:  # copies in the order of the reads, each as its read completes
                slot, dst, pending = in_flight.popleft()
                pending.result()
                dst.copy_(buffers[slot][: dst.numel()], non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
                copied[slot] = event  # before the slot's next read is submitted
                submit(slot)
            side.synchronize()


def as_source(state: StateDict | TensorSource) -> TensorSource:
    return StateSource(state) if isinstance(state, dict) else state


def _contiguous_rows(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """`t` as contiguous pieces in memory order: itself if contiguous, else its sub-tensors
    along leading dimensions (a ring [layers, 2, tokens, H, D] cut from a larger cache gives
    one contiguous [tokens, H, D] per layer and key/value)."""
    if t.is_contiguous() or t.dim() == 0:
        yield t
        return
    for sub in t.unbind(0):
        yield from _contiguous_rows(sub)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's bytes as a flat uint8 view (no copy), on its device."""
    if not t.is_contiguous():  # reshape would copy, and a read into the copy would be lost
        raise ValueError("not contiguous: no flat view of its bytes")
    return t.reshape(-1).view(torch.uint8)


def _check_fits(name: str, src: torch.Tensor, dst: torch.Tensor) -> None:
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ValueError(
            f"{name}: the state holds {src.dtype} {list(src.shape)}, "
            f"the stream {dst.dtype} {list(dst.shape)}"
        )


def _wait_for_copies(targets: Mapping[str, torch.Tensor]) -> None:
    for dst in targets.values():
        if dst.device.type == "cuda":
            torch.cuda.current_stream(dst.device).synchronize()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
