"""LiveAvatar's LoRA (`liveavatar.safetensors`), merged into the DiT weights once at load.

LiveAvatar wraps the DiT with PEFT (`target_modules="q,k,v,o,ffn.0,ffn.2"`, r=128, alpha=64)
and saves the adapter's parameters under the wrapped names, e.g.

    base_model.model.blocks.0.self_attn.q.lora_A.default.weight   [r, in]
    base_model.model.blocks.0.self_attn.q.lora_B.default.weight   [out, r]

Its loader also accepts the keys without the `base_model.model.` prefix, and so do we. PEFT's
own adapter files drop the adapter name (`lora_A.weight`); we merge those as well, but
LiveAvatar's loader does not: it loads the file into the PEFT-wrapped model with
`load_state_dict(strict=False)`, where such keys match nothing and are dropped without a word,
so the reference renders without the LoRA. Which form a file has is logged (INFO) when it is
read. A file that mixes forms (two adapter names, prefixed and bare keys) is refused. Merging is
PEFT's `merge_and_unload`: W += (alpha / r) · B @ A, here computed in fp32 on the device that
holds W and rounded once to W's dtype.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CorruptFileError, KeyMismatchError, ShapeMismatchError, name_list
from .module_tensors import ModuleTensors
from .safetensors_file import SafetensorsHeader, TensorEntry, TensorFile, read_header
from .specs import LORA_ADAPTER, LORA_KEY_PREFIX, LORA_TARGETS, Shape, lora_target_modules
from .streaming import CopyStats

log = logging.getLogger(__name__)

_KEY = re.compile(
    r"(?P<prefix>base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])"
    r"(?:\.(?P<adapter>\w+))?\.weight"
)


@dataclass(frozen=True)
class LoraAdapter:
    header: SafetensorsHeader
    pairs: dict[str, tuple[TensorEntry, TensorEntry]]  # module name -> (A, B)
    rank: int
    adapter_name: str | None
    """"default" in LiveAvatar's release; None when the keys carry no adapter name."""
    prefixed: bool
    """The keys start with `base_model.model.` (the PEFT-wrapped model's names)."""

    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def key_form(self) -> str:
        """How this file spells its keys: `base_model.model.<module>.lora_A.default.weight`."""
        prefix = LORA_KEY_PREFIX if self.prefixed else ""
        adapter = f".{self.adapter_name}" if self.adapter_name else ""
        return f"{prefix}<module>.lora_A{adapter}.weight"


def read_lora(path: str | os.PathLike[str]) -> LoraAdapter:
    """Parse the adapter's header: every key must be one half of an A/B pair of one rank."""
    header = read_header(path)
    halves: dict[str, dict[str, TensorEntry]] = {}
    adapters: set[str] = set()
    prefixes: set[bool] = set()
    foreign = []
    for key, entry in header.tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            foreign.append(key)
            continue
        adapters.add(match["adapter"] or "")
        prefixes.add(match["prefix"] is not None)
        halves.setdefault(match["module"], {})[match["side"]] = entry
    if foreign:
        raise KeyMismatchError(f"{header.path} (not LoRA A/B weights)", unexpected=foreign)
    if len(adapters) > 1:
        raise CorruptFileError(f"{header.path}: holds several adapters: {sorted(adapters)}")
    if len(prefixes) > 1:
        # LiveAvatar adds the prefix to every key or to none, judging by the first key
        raise CorruptFileError(
            f"{header.path}: mixes keys with and without the '{LORA_KEY_PREFIX}' prefix"
        )
    lonely = [f"{m}.lora_{'B' if 'A' in h else 'A'}" for m, h in halves.items() if len(h) != 2]
    if lonely:
        raise KeyMismatchError(f"{header.path} (LoRA pairs incomplete)", missing=lonely)

    pairs = {m: (h["A"], h["B"]) for m, h in halves.items()}
    bad = [m for m, (a, b) in pairs.items() if len(a.shape) != 2 or len(b.shape) != 2]
    ranks = {a.shape[0] for a, b in pairs.values() if len(a.shape) == 2 == len(b.shape)}
    ranks |= {b.shape[1] for a, b in pairs.values() if len(a.shape) == 2 == len(b.shape)}
    if bad or len(ranks) > 1:
        raise CorruptFileError(
            f"{header.path}: LoRA factors must be 2-D with one rank throughout; found ranks "
            f"{sorted(ranks)}" + (f", non-2-D factors for {name_list(bad)}" if bad else "")
        )
    name = adapters.pop() if adapters else ""
    adapter = LoraAdapter(
        header,
        pairs,
        rank=ranks.pop() if ranks else 0,
        adapter_name=name or None,
        prefixed=prefixes.pop() if prefixes else False,
    )
    if adapter.adapter_name == LORA_ADAPTER:
        log.info(
            "%s: LoRA keys of the form %s (adapter name %r, as LiveAvatar saves them)",
            header.path,
            adapter.key_form,
            LORA_ADAPTER,
        )
    else:
        log.info(
            "%s: LoRA keys of the form %s (%s): merged here, but LiveAvatar's loader expects "
            "<module>.lora_A.%s.weight and would leave them out",
            header.path,
            adapter.key_form,
            f"adapter name {adapter.adapter_name!r}" if adapter.adapter_name else "no adapter name",
            LORA_ADAPTER,
        )
    return adapter


def check_lora(
    adapter: LoraAdapter,
    weight_shapes: Mapping[str, Shape],
    targets: Iterable[str] = LORA_TARGETS,
) -> None:
    """Raise unless the adapter covers exactly the linears PEFT would wrap, with fitting shapes."""
    expected = lora_target_modules(weight_shapes, targets)
    missing = set(expected) - set(adapter.pairs)
    unexpected = set(adapter.pairs) - set(expected)
    if missing or unexpected:
        raise KeyMismatchError(
            f"{adapter.path} (LoRA target modules)", missing=missing, unexpected=unexpected
        )
    wrong = []
    for module, (a, b) in adapter.pairs.items():
        out_f, in_f = expected[module]
        if a.shape[1] != in_f or b.shape[0] != out_f:
            wrong.append(f"{module}: A {list(a.shape)}, B {list(b.shape)} for W [{out_f}, {in_f}]")
    if wrong:
        raise ShapeMismatchError(
            f"{adapter.path}: {len(wrong)} LoRA pairs do not fit the DiT: {name_list(wrong)}"
        )


def merge_lora(adapter: LoraAdapter, targets: ModuleTensors, alpha: float) -> CopyStats:
    """W += (alpha / rank) · B @ A for every pair, in fp32 on W's device, rounded once."""
    start = time.perf_counter()
    weight_shapes = {name: targets.shape(name) for name in targets.names()}
    check_lora(adapter, weight_shapes)
    scale = alpha / adapter.rank
    with TensorFile(adapter.header) as source, torch.no_grad():
        for module, (a_entry, b_entry) in sorted(
            adapter.pairs.items(), key=lambda p: p[1][0].start
        ):
            weight = targets.get(f"{module}.weight")
            a = source.read(a_entry).to(weight.device, torch.float32)
            b = source.read(b_entry).to(weight.device, torch.float32)
            delta = b @ a
            delta.mul_(scale)
            merged = weight.to(torch.float32, copy=True)
            merged.add_(delta)
            weight.copy_(merged)
    nbytes = sum(a.nbytes + b.nbytes for a, b in adapter.pairs.values())
    return CopyStats(2 * len(adapter.pairs), nbytes, time.perf_counter() - start)
