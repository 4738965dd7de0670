"""The sharded DiT checkpoint (`diffusion_pytorch_model-*.safetensors` + index) into a module.

Loading goes shard by shard, tensor by tensor in file order, straight to the target device and
the dtype the module declares (see streaming.py), so host memory holds at most two staging
buffers whatever the model size. Everything that can be checked without reading tensor data
(index, every shard header, names, shapes, the LoRA) is checked first: a bad download fails in
a second, not after minutes of copying.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import CorruptFileError, MissingFileError, name_list
from .lora import LoraAdapter, check_lora, merge_lora, read_lora
from .module_tensors import ModuleTensors, meta_leftovers
from .safetensors_file import SafetensorsHeader, TensorEntry, TensorFile, read_header
from .specs import LORA_ALPHA
from .streaming import CopyStats, copy_tensors

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class ShardedCheckpoint:
    index_path: Path
    weight_map: dict[str, str]  # tensor name -> shard file name
    shards: dict[str, SafetensorsHeader]  # shard file name -> its header
    total_size: int | None  # as the index's metadata states it

    def entry(self, name: str) -> TensorEntry:
        return self.shards[self.weight_map[name]].tensors[name]

    @property
    def nbytes(self) -> int:
        return sum(self.entry(n).nbytes for n in self.weight_map)


def open_sharded(
    directory: str | os.PathLike[str], index_name: str = INDEX_NAME
) -> ShardedCheckpoint:
    """Read and cross-check the index and every shard header it names."""
    directory = Path(directory)
    index_path = directory / index_name
    if not index_path.is_file():
        raise MissingFileError(f"{index_path}: index not found")
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict) and weight_map
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as exc:
        raise CorruptFileError(f"{index_path}: not a safetensors index (no weight_map)") from exc

    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    absent = sorted(s for s in by_shard if not (directory / s).is_file())
    if absent:
        lost = sum(len(by_shard[s]) for s in absent)
        raise MissingFileError(
            f"{directory}: {len(absent)} of {len(by_shard)} shards missing: {name_list(absent)} "
            f"({lost} tensors, e.g. {sorted(by_shard[absent[0]])[0]})"
        )

    shards = {s: read_header(directory / s) for s in sorted(by_shard)}
    for shard, header in shards.items():
        listed = set(by_shard[shard])
        not_there = listed - set(header.tensors)
        if not_there:
            raise CorruptFileError(
                f"{header.path}: the index places {len(not_there)} tensors here that the shard "
                f"does not hold: {name_list(not_there)}"
            )
        unlisted = set(header.tensors) - listed
        if unlisted:
            raise CorruptFileError(
                f"{header.path}: holds {len(unlisted)} tensors the index does not list "
                f"(shards and index from different downloads?): {name_list(unlisted)}"
            )
    total = (index.get("metadata") or {}).get("total_size")
    return ShardedCheckpoint(
        index_path, dict(weight_map), shards, int(total) if total is not None else None
    )


@dataclass
class DiTLoadReport:
    device: str
    weights: CopyStats
    lora: CopyStats | None = None
    lora_rank: int | None = None
    lora_scale: float | None = None
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)


def load_dit(
    directory: str | os.PathLike[str],
    module: nn.Module,
    device: str | torch.device,
    lora: str | os.PathLike[str] | None = None,
    lora_alpha: float = LORA_ALPHA,
    readers: int = 4,
) -> DiTLoadReport:
    """Fill `module` from the sharded checkpoint in `directory`, then merge `lora` if given.

    `module` may live on the meta device (its tensors are then created on `device` in the dtype
    each declares) or be materialised (filled in place). Names must match exactly: missing or
    unexpected tensors raise KeyMismatchError naming them; wrong shapes ShapeMismatchError.
    `readers` shards are read at once, each by a thread of its own with its own two staging
    buffers: one reader leaves most of a disk's (or the page cache's) speed unused.
    """
    start = time.perf_counter()
    device = torch.device(device)
    checkpoint = open_sharded(directory)
    targets = ModuleTensors(module, str(checkpoint.index_path))
    targets.check_names(set(checkpoint.weight_map))
    for name in checkpoint.weight_map:
        entry = checkpoint.entry(name)
        targets.check_shape(
            name, entry.shape, str(checkpoint.shards[checkpoint.weight_map[name]].path)
        )
    adapter: LoraAdapter | None = None
    if lora is not None:
        adapter = read_lora(lora)
        check_lora(adapter, {n: targets.shape(n) for n in targets.names()})

    # the readers copy on the caller's CUDA stream (a stream's current stream is per thread)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def load_shard(header: SafetensorsHeader) -> CopyStats:
        items = sorted(((e, n) for n, e in header.tensors.items()), key=lambda item: item[0].start)
        on_stream = torch.cuda.stream(stream) if stream is not None else nullcontext()
        with TensorFile(header) as source, on_stream:
            return copy_tensors(source, items, targets, device)

    weights = CopyStats()
    copying = time.perf_counter()
    # each shard fills tensors of its own (values do not depend on the order)
    with ThreadPoolExecutor(max(1, readers), thread_name_prefix="dit-shard") as pool:
        for stats in pool.map(load_shard, checkpoint.shards.values()):
            weights.add(stats)
    weights.seconds = time.perf_counter() - copying  # the shards' copies overlap
    targets.require_complete()
    left = meta_leftovers(module)
    if left:
        raise RuntimeError(
            f"{checkpoint.index_path}: all checkpoint tensors loaded, but the module still has "
            f"tensors on the meta device (non-persistent buffers it must compute itself): "
            f"{name_list(left)}"
        )

    report = DiTLoadReport(str(device), weights, shards=list(checkpoint.shards))
    if adapter is not None:
        report.lora = merge_lora(adapter, targets, lora_alpha)
        report.lora_rank = adapter.rank
        report.lora_scale = lora_alpha / adapter.rank
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report.seconds = time.perf_counter() - start
    return report
