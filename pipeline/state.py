"""Stream state on disk: portable (safetensors + JSON), no pickle.

A state is `{"meta": <JSON-able dict>, "tensors": {name: CPU tensor}}`, as returned by
`Stream.state_dict()`. Tensor names are grouped by owner, so a pipeline-parallel engine can
write and read its share alone:

    sink.*        reference keys, motion keys and values of the sink (all steps share them)
    step.<i>.*    the ring cache of denoising step i
    decoder.*     the streaming VAE decoder's feature cache

`save_state` / `load_state` keep a whole state in one file (or file object).
`write_checkpoint` / `read_checkpoint` keep it in a directory, one shard per group, and write
`manifest.json` last: a directory without a manifest is not a checkpoint.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file as st_save_file

from pipeline.params import Precision, PrecisionMismatch

FORMAT = "longtake.stream-state/1"
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
    if meta.pop("format", None) != FORMAT:
        raise ValueError(f"unsupported stream state format; expected {FORMAT}")
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
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: unsupported format; expected {FORMAT}")
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


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
