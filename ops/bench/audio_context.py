"""How far chunked wav2vec2 features are from whole-utterance ones, by context; and bf16 vs fp32.

    python -m ops.bench.audio_context --out ops/bench/results/audio-context-cpu2.json

The reference runs wav2vec2 over the whole utterance at once; `pipeline.audio_features` runs it
over fixed chunks inside windows of `chunk + 2 * context` frames (shifted inward at the
utterance's edges). This measures, on wav2vec2-large-xlsr-53's architecture (24 layers, 1024
wide, the preset's config) with random weights by default, for each context:

    error(layer, frame) = |chunked - whole| / |whole|   (L2 over the 1024 channels)

over all 25 hidden states (the DiT's audio encoder mixes every one of them) and every frame of a
speech-like signal (ops.demo.synthesize_speech: voiced syllables, bursts, pauses), and reports
the maximum, where it occurs, and the maximum on the last hidden state. Two random
initialisations: transformers' own (linears ~ N(0, 0.02)) and the pipeline's unit-scale one
(`pipeline.components.random_init`); or, with `--inits PATH`, the released weights from their
folder (Wan2.2-S2V-14B/wav2vec2-large-xlsr-53-english), to re-pick the context on them.

`--precision` adds the whole-utterance features computed in bf16 against fp32 (the reference
runs wav2vec2 in the DiT's dtype, bf16 on GPU). Random weights: these figures bound the effect of
chunking and precision on this architecture; trained weights may attend differently.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from ops.demo import synthesize_speech
from pipeline.audio_features import AudioFeatures, chunk_window, normalize
from pipeline.presets import LIVEAVATAR_14B


def build(init: str, seed: int, device: str) -> Wav2Vec2Model:
    """The architecture with random weights ("transformers", "unit"), or a release's wav2vec2
    folder (any other value: its path)."""
    if init not in ("transformers", "unit"):
        from pipeline.weights.audio_encoder import load_audio_encoder

        return load_audio_encoder(init, device)
    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**LIVEAVATAR_14B.audio_encoder))
    if init == "unit":
        from pipeline.dit_loading import random_init

        random_init(model, torch.Generator().manual_seed(seed))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def whole(model: Wav2Vec2Model, samples: np.ndarray) -> torch.Tensor:
    """All hidden states of the whole utterance, as transformers 4.x returns them (the last one
    after the encoder's final layer norm): [layers, T, dim] float32."""
    param = next(model.parameters())
    x = torch.from_numpy(normalize(samples)).to(param.device, param.dtype).unsqueeze(0)
    out = model(x, output_hidden_states=True)
    states = [*out.hidden_states[:-1], out.last_hidden_state]
    return torch.stack([h[0].float() for h in states])


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """[layers, T]: L2 of the difference over channels / L2 of the reference."""
    return ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).cpu()


def summarize(err: torch.Tensor, chunk: int) -> dict[str, Any]:
    t = err.shape[1]
    worst = int(err.max(dim=0).values.argmax())
    boundary = min(abs(worst - b) for b in range(0, t + chunk, chunk))
    return {
        "max": float(err.max()),
        "max_last_layer": float(err[-1].max()),
        "median": float(err.median()),
        "worst_frame": worst,
        "worst_layer": int(err[:, worst].argmax()),
        "worst_frames_from_chunk_boundary": boundary,
        "max_by_layer": [float(v) for v in err.max(dim=1).values],
    }


def time_chunk(seconds: float, device: str, seed: int) -> dict[str, Any]:
    """Wall time and peak memory of computing one chunk with the preset's chunk and context
    (bf16, random weights): the cost a stream pays once per chunk."""
    model = build("transformers", seed, device).to(torch.bfloat16)
    samples = synthesize_speech(seconds, seed=seed).astype(np.float32)
    stream = LIVEAVATAR_14B.stream
    feats = AudioFeatures(model, samples, stream.audio_chunk_frames, stream.audio_context_frames)
    timings = []
    for chunk in (0, 1):  # the first includes one-time kernel selection
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.startswith("cuda") else 0
        start = time.perf_counter()
        feats.hidden_states(chunk * feats.chunk_frames, chunk * feats.chunk_frames + 1)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base if device.startswith("cuda") else 0
        timings.append({"chunk": chunk, "seconds": time.perf_counter() - start, "peak": peak})
    row = {
        "timing": "one chunk, bf16",
        "speech_s": seconds,
        "chunk_frames": feats.chunk_frames,
        "context_frames": feats.context_frames,
        "window_frames": len(
            chunk_window(1, feats.chunk_frames, feats.context_frames, feats.num_feature_frames)
        ),
        "slots_bytes": feats.nbytes(),
        "chunks": timings,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[60.0])
    ap.add_argument("--chunk", type=int, default=LIVEAVATAR_14B.stream.audio_chunk_frames)
    ap.add_argument("--contexts", type=int, nargs="+", default=[25, 50, 64, 100, 150, 200, 300])
    ap.add_argument(
        "--inits",
        nargs="+",
        default=["transformers", "unit"],
        help='"transformers", "unit" (random weights) or the path of a wav2vec2 release folder',
    )
    ap.add_argument("--precision", action="store_true", help="also bf16 against fp32")
    ap.add_argument(
        "--time-window",
        type=float,
        metavar="SECONDS",
        help="instead: time one chunk of the preset's chunking over speech this long, in bf16",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on a GPU too
    torch.backends.cudnn.allow_tf32 = False

    rows: list[dict[str, Any]] = []
    if args.time_window:
        rows.append(time_chunk(args.time_window, args.device, args.seed))
    for init in [] if args.time_window else args.inits:
        model = build(init, args.seed, args.device)
        for seconds in args.seconds:
            samples = synthesize_speech(seconds, seed=args.seed).astype(np.float32)
            ref = whole(model, samples)
            for context in args.contexts:
                if args.chunk + 2 * context >= ref.shape[1]:
                    continue  # every window is the whole utterance: exact by construction
                start = time.perf_counter()
                feats = AudioFeatures(model, samples, args.chunk, context)
                got = feats.hidden_states(0, feats.num_feature_frames)
                row = {
                    "init": init,
                    "seconds": seconds,
                    "chunk": args.chunk,
                    "context": context,
                    "wall_s": time.perf_counter() - start,
                    **summarize(relative_error(got, ref), args.chunk),
                }
                rows.append(row)
                print(
                    f"{init:>12} {seconds:6.0f} s  context {context:4d}: max "
                    f"{100 * row['max']:.4f} % (layer {row['worst_layer']}, frame "
                    f"{row['worst_frame']}, {row['worst_frames_from_chunk_boundary']} from a "
                    f"boundary), last layer {100 * row['max_last_layer']:.4f} %, median "
                    f"{100 * row['median']:.5f} %",
                    flush=True,
                )
            if args.precision:
                low = whole(model.to(torch.bfloat16), samples)
                model.float()
                err = relative_error(low, ref)
                row = {"init": init, "seconds": seconds, "precision": "bf16 vs fp32, whole"}
                row.update(summarize(err, args.chunk))
                row["p99"] = float(err.flatten().quantile(0.99))
                rows.append(row)
                print(
                    f"{init:>12} {seconds:6.0f} s  bf16 vs fp32: max {100 * row['max']:.3f} %, "
                    f"p99 {100 * row['p99']:.3f} %, median {100 * row['median']:.3f} %, last "
                    f"layer max {100 * row['max_last_layer']:.3f} %",
                    flush=True,
                )
            del ref

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        device = (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads"
        )
        report = {
            "benchmark": "audio_context",
            "device": device,
            "date": date.today().isoformat(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "weights": "random (wav2vec2-large-xlsr-53 architecture)",
            "audio": "ops.demo.synthesize_speech",
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
