"""The machine-readable manifest of the release layout (checkpoints/manifest.json).

It is generated from layout.py and specs.py, which verify() and the loaders use, so the file
and the code cannot disagree (a test compares them). Regenerate it with

    python -m pipeline.weights.manifest > checkpoints/manifest.json
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from .layout import (
    BASE_DIR,
    DIT_INDEX,
    LORA_DIR,
    LORA_FILE,
    T5_FILE,
    TOKENIZER_DIR,
    TOKENIZER_FILES,
    VAE_FILE,
    WAV2VEC2_DIR,
    release_files,
)
from .specs import LORA_ALPHA, LORA_TARGETS, ReleaseSpec, TensorSpec


def _tensors(specs: dict[str, TensorSpec]) -> dict[str, list[int]]:
    return {name: list(spec.shape) for name, spec in specs.items()}


def _dtype(specs: dict[str, TensorSpec]) -> str:
    return str(next(iter(specs.values())).dtype).removeprefix("torch.")


def _total(specs: dict[str, TensorSpec]) -> int:
    return sum(s.nbytes for s in specs.values())


def build_manifest(spec: ReleaseSpec | None = None) -> dict[str, Any]:
    spec = spec or ReleaseSpec.liveavatar_14b()
    dit, lora, text, vae = spec.dit_specs(), spec.lora_specs(), spec.text_specs(), spec.vae_specs()
    arch = dataclasses.asdict(spec.dit)
    return {
        "format_version": 1,
        "description": (
            "Expected layout of the longtake checkpoints root: the Wan2.2-S2V-14B release "
            "and LiveAvatar's LoRA, as published. Tensor tables give shapes; every tensor of "
            "a component has the component's dtype."
        ),
        "generated_by": "python -m pipeline.weights.manifest",
        "files": [dataclasses.asdict(f) | {"repo_path": f.repo_path} for f in release_files()],
        "components": {
            "dit": {
                "index": f"{BASE_DIR}/{DIT_INDEX}",
                "format": "sharded safetensors",
                "dtype": _dtype(dit),
                "bytes": _total(dit),
                "config": arch,
                "tensors": _tensors(dit),
            },
            "lora": {
                "file": f"{LORA_DIR}/{LORA_FILE}",
                "format": "safetensors, PEFT key names",
                "dtype": _dtype(lora),
                "bytes": _total(lora),
                "rank": spec.lora_rank,
                "alpha": LORA_ALPHA,
                "target_modules": list(LORA_TARGETS),
                "merge": "W += alpha / rank * B @ A",
                "tensors": _tensors(lora),
            },
            "text_encoder": {
                "file": f"{BASE_DIR}/{T5_FILE}",
                "format": "torch state dict (Wan T5 encoder names)",
                "dtype": _dtype(text),
                "bytes": _total(text),
                "config": dataclasses.asdict(spec.text),
                "tensors": _tensors(text),
            },
            "tokenizer": {
                "folder": f"{BASE_DIR}/{TOKENIZER_DIR}",
                "files": list(TOKENIZER_FILES),
            },
            "vae": {
                "file": f"{BASE_DIR}/{VAE_FILE}",
                "format": "torch state dict (Wan VAE names)",
                "dtype": _dtype(vae),
                "bytes": _total(vae),
                "config": dataclasses.asdict(spec.vae),
                "tensors": _tensors(vae),
            },
            "audio_encoder": {
                "folder": f"{BASE_DIR}/{WAV2VEC2_DIR}",
                "format": "transformers Wav2Vec2ForCTC folder (CTC head unused)",
                "hidden_size": spec.audio_hidden_size,
                "num_hidden_layers": spec.audio_num_layers,
            },
        },
    }


_INT_LIST = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")


def render_manifest(manifest: dict[str, Any]) -> str:
    """JSON with each shape on one line, so the file reads as one tensor per line."""
    text = json.dumps(manifest, indent=2)

    def one_line(match: re.Match[str]) -> str:
        return "[" + ", ".join(n.strip() for n in match.group(1).split(",")) + "]"

    return _INT_LIST.sub(one_line, text) + "\n"


if __name__ == "__main__":
    print(render_manifest(build_manifest()), end="")
