"""`longtake checkpoints verify`: is the release under a root complete and intact?

Only headers are read (safetensors headers, the zip directory and pickle of `.pth` files,
config files), so a full check of the 14B release takes about a second. Each file is compared
with the release tables in specs.py: presence, every tensor name, shape and dtype. The report
says exactly what is missing or wrong; a dtype other than the published one is a warning (the
loader converts), anything else an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from .dit import open_sharded
from .errors import CheckpointError, MissingFileError, name_list
from .layout import (
    BASE_DIR,
    DIT_CONFIG,
    LORA_DIR,
    LORA_FILE,
    T5_FILE,
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    VAE_FILE,
    WAV2VEC2_DIR,
    WAV2VEC2_FILES,
    CheckpointPaths,
)
from .lora import check_lora, read_lora
from .module_tensors import building
from .pth_file import load_state_dict
from .safetensors_file import read_header
from .specs import ReleaseSpec, S2VArchitecture, TensorSpec, dit_shapes

OK, MISSING, ERROR, WARNING = "ok", "missing", "error", "warning"


@dataclass
class ItemResult:
    label: str  # the file or folder, relative to the root
    status: str = OK
    summary: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    root: Path
    items: list[ItemResult]

    @property
    def ok(self) -> bool:
        return not any(item.errors for item in self.items)

    @property
    def missing(self) -> list[str]:
        return [item.label for item in self.items if item.status == MISSING]

    @property
    def errors(self) -> list[str]:
        return [f"{item.label}: {e}" for item in self.items for e in item.errors]

    def headline(self) -> str:
        if self.ok:
            return f"all {len(self.items)} parts of the release verified"
        bad = [i for i in self.items if i.errors]
        if all(i.status == MISSING for i in self.items):
            return f"no release files found under {self.root}"
        missing = [i.label for i in bad if i.status == MISSING]
        broken = [i.label for i in bad if i.status != MISSING]
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if broken:
            parts.append("wrong: " + ", ".join(broken))
        return f"{len(bad)} of {len(self.items)} parts failed ({'; '.join(parts)})"

    def __str__(self) -> str:
        lines = [f"checkpoints at {self.root}: {'OK' if self.ok else 'NOT USABLE'}"]
        for item in self.items:
            summary = f"  ({item.summary})" if item.summary else ""
            lines.append(f"  {item.status.upper():8} {item.label}{summary}")
            own = item.label.rstrip("/") + ": "
            lines += [f"           - {e.removeprefix(own)}" for e in item.errors]
            lines += [f"           - warning: {w}" for w in item.warnings]
        lines.append(self.headline())
        return "\n".join(lines)


def verify(root: str | os.PathLike[str], spec: ReleaseSpec | None = None) -> VerifyReport:
    """Check the release under `root` against `spec` (the published 14B release by default)."""
    spec = spec or ReleaseSpec.liveavatar_14b()
    paths = CheckpointPaths.at(root)
    checks: list[tuple[str, Callable[[ItemResult], None]]] = [
        (f"{BASE_DIR}/{DIT_CONFIG}", lambda r: _check_dit_config(paths, spec, r)),
        (f"{BASE_DIR}/diffusion_pytorch_model-*.safetensors", lambda r: _check_dit(paths, spec, r)),
        (f"{LORA_DIR}/{LORA_FILE}", lambda r: _check_lora(paths, spec, r)),
        (f"{BASE_DIR}/{T5_FILE}", lambda r: _check_pth(paths.text_encoder, spec.text_specs(), r)),
        (
            f"{BASE_DIR}/{TOKENIZER_DIR}/",
            lambda r: _check_files(paths.tokenizer, TOKENIZER_FILES, r),
        ),
        (f"{BASE_DIR}/{VAE_FILE}", lambda r: _check_pth(paths.vae, spec.vae_specs(), r)),
        (f"{BASE_DIR}/{WAV2VEC2_DIR}/", lambda r: _check_wav2vec2(paths, spec, r)),
    ]
    items = []
    for label, check in checks:
        item = ItemResult(label)
        try:
            check(item)
        except MissingFileError as exc:
            item.status = MISSING
            item.errors.append(str(exc).replace(str(paths.root) + os.sep, ""))
        except CheckpointError as exc:
            item.errors.append(str(exc).replace(str(paths.root) + os.sep, ""))
        except (OSError, ValueError) as exc:  # unreadable file, malformed config, ...
            message = f"cannot be read: {type(exc).__name__}: {exc}"
            item.errors.append(message.replace(str(paths.root) + os.sep, ""))
        if item.errors and item.status == OK:
            item.status = ERROR
        elif item.warnings and item.status == OK:
            item.status = WARNING
        items.append(item)
    return VerifyReport(paths.root, items)


# -- checks -----------------------------------------------------------------------------------


def _check_dit_config(paths: CheckpointPaths, spec: ReleaseSpec, item: ItemResult) -> None:
    if not paths.dit_config.is_file():
        raise MissingFileError(f"{paths.dit_config}: file not found")
    try:
        config = json.loads(paths.dit_config.read_text())
        assert isinstance(config, dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
        item.errors.append("not a JSON object")
        return
    if config.get("model_type", "s2v") != "s2v":
        item.errors.append(f"model_type is {config['model_type']!r}, expected 's2v'")
    found = S2VArchitecture.from_config(config, audio_layers=spec.dit.audio_layers)
    for f in fields(S2VArchitecture):
        want, got = getattr(spec.dit, f.name), getattr(found, f.name)
        if want != got:
            item.errors.append(f"{f.name} is {got!r}, expected {want!r}")
    item.summary = f"dim {found.dim}, {found.num_layers} layers"


def _check_dit(paths: CheckpointPaths, spec: ReleaseSpec, item: ItemResult) -> None:
    checkpoint = open_sharded(paths.base)
    found = {name: checkpoint.entry(name) for name in checkpoint.weight_map}
    _compare(found, spec.dit_specs(), item)
    if checkpoint.total_size is not None and checkpoint.total_size != checkpoint.nbytes:
        item.warnings.append(
            f"index metadata says {checkpoint.total_size} bytes, the shards hold {checkpoint.nbytes}"
        )
    item.summary = (
        f"{len(checkpoint.shards)} shards, {len(found)} tensors, {checkpoint.nbytes / 1e9:.1f} GB"
    )


def _check_lora(paths: CheckpointPaths, spec: ReleaseSpec, item: ItemResult) -> None:
    adapter = read_lora(paths.lora)
    check_lora(adapter, dit_shapes(spec.dit))
    if adapter.rank != spec.lora_rank:
        item.warnings.append(f"rank {adapter.rank}, LiveAvatar publishes rank {spec.lora_rank}")
    _compare_dtypes({n: e.dtype for n, e in adapter.header.tensors.items()}, spec.lora_dtype, item)
    item.summary = f"{len(adapter.pairs)} adapted linears, rank {adapter.rank}"


def _check_pth(path: Path, expected: dict[str, TensorSpec], item: ItemResult) -> None:
    state = load_state_dict(path)
    _compare(state, expected, item)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    item.summary = f"{len(state)} tensors, {nbytes / 1e9:.2f} GB"


def _check_files(folder: Path, names: tuple[str, ...], item: ItemResult) -> None:
    absent = [n for n in names if not (folder / n).is_file()]
    if len(absent) == len(names):
        raise MissingFileError(f"{folder}: folder missing or empty")
    if absent:
        item.errors.append(f"missing {', '.join(absent)}")
    item.summary = f"{len(names) - len(absent)} of {len(names)} files"


def _check_wav2vec2(paths: CheckpointPaths, spec: ReleaseSpec, item: ItemResult) -> None:
    folder = paths.wav2vec2
    _check_files(folder, WAV2VEC2_FILES, item)
    if item.errors or not (folder / "config.json").is_file():
        return
    config = Wav2Vec2Config.from_pretrained(folder, local_files_only=True)
    if config.hidden_size != spec.audio_hidden_size:
        item.errors.append(
            f"hidden_size is {config.hidden_size}, expected {spec.audio_hidden_size}"
        )
    if config.num_hidden_layers != spec.audio_num_layers:
        item.errors.append(
            f"num_hidden_layers is {config.num_hidden_layers}, expected {spec.audio_num_layers}"
        )
    if item.errors:
        return
    with building("meta", torch.float32):
        model = Wav2Vec2Model(config)
    expected = {n: TensorSpec(tuple(t.shape), t.dtype) for n, t in model.state_dict().items()}
    header = read_header(folder / "model.safetensors")
    found = {
        _wav2vec2_name(n): e for n, e in header.tensors.items() if not n.startswith("lm_head.")
    }
    _compare(found, expected, item, check_dtypes=False)
    item.summary = f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}"


def _wav2vec2_name(name: str) -> str:
    # Older checkpoints store the weight-normed positional conv as weight_g / weight_v.
    name = name.removeprefix("wav2vec2.")
    name = name.replace(".weight_g", ".parametrizations.weight.original0")
    return name.replace(".weight_v", ".parametrizations.weight.original1")


class _Described(Protocol):
    """A tensor, a header entry or a spec: anything with a shape and a dtype."""

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def dtype(self) -> torch.dtype: ...


def _compare(
    found: Mapping[str, _Described],
    expected: Mapping[str, TensorSpec],
    item: ItemResult,
    check_dtypes: bool = True,
) -> None:
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    if missing:
        item.errors.append(f"{len(missing)} tensors missing: {name_list(missing)}")
    if unexpected:
        item.errors.append(f"{len(unexpected)} unexpected tensors: {name_list(unexpected)}")
    wrong = [
        f"{n} {list(found[n].shape)} (expected {list(expected[n].shape)})"
        for n in sorted(set(found) & set(expected))
        if tuple(found[n].shape) != expected[n].shape
    ]
    if wrong:
        item.errors.append(f"{len(wrong)} tensors have the wrong shape: {name_list(wrong)}")
    if check_dtypes:
        dtypes = {n: found[n].dtype for n in set(found) & set(expected)}
        _compare_dtypes(dtypes, next(iter(expected.values())).dtype, item)


def _compare_dtypes(dtypes: Mapping[str, torch.dtype], want: torch.dtype, item: ItemResult) -> None:
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, dtype in dtypes.items():
        if dtype != want:
            by_dtype.setdefault(dtype, []).append(name)
    for dtype, names in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
        message = f"{len(names)} tensors stored as {_dtype_name(dtype)}, the release has " + (
            f"{_dtype_name(want)}: {name_list(names, 3)}"
        )
        if dtype.is_floating_point:
            item.warnings.append(message + " (converted at load)")
        else:
            item.errors.append(message)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
