"""Media-path benchmark: segment encoding, watermarking, and stitching an hour of video.

    python -m ops.bench.stitch --out ops/bench/results/stitch-cpu2.json

Measures, in one run on this machine's CPU:
  1. SegmentEncoder throughput at 720x400 (frames/s), and how long a generator producing
     50 frames/s is blocked in submit() (the encoder must keep up without stalling it);
  2. the watermark's compositing throughput (frames/s);
  3. stitching one hour of 720x400 25 fps video from 75 segments of 48 s with its audio:
     (a) longtake: stream copy + the AAC track encoded beforehand by prepare_audio (that
         encode runs beside generation; its time is reported on its own),
     (b) longtake with the audio encoded during the stitch,
     (c) moviepy: decode, concatenate and re-encode (same x264 preset and CRF as the
         segments), timed on a prefix of the segments and extrapolated linearly;
  4. the provenance manifest of the hour: decoding and hashing every frame of the output,
     or from frame hashes taken per segment while rendering (then only the file's sha256).

Synthetic content: a fixed textured "portrait" background with a moving, deforming blob and
per-frame grain (talking-head-like: mostly static, local motion; ``--grain`` sets the noise
and with it the bitrate), watermarked. One
segment is encoded and copied to make the hour (stream copy cost depends on bytes, not on
pictures); the audio is a speech-like synthetic signal (voiced harmonics under a syllable
envelope plus noise), 48 kHz mono WAV.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
import wave
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import av
import numpy as np

from db.segments import Segment
from ops.bench.scratch import scratch_dir
from worker.ffmpeg import find_ffmpeg
from worker.provenance import build_manifest, iter_frame_hashes
from worker.segments import EncoderSettings, SegmentEncoder
from worker.stitch import prepare_audio, stitch
from worker.watermark import Watermark, WatermarkSpec

FPS = 25
CLIP = 48  # frames per generator clip


# --------------------------------------------------------------------------- synthetic media


class TalkingHeadLike:
    """Deterministic frames that compress like a talking head: static texture, local motion."""

    def __init__(self, width: int, height: int, grain: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w, self.h, self.grain = width, height, grain
        # Smooth texture: low-resolution noise upsampled, plus a vertical gradient.
        coarse = rng.integers(40, 200, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
        up = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:height, :width]
        grad = np.linspace(0.8, 1.1, height, dtype=np.float32)[:, None, None]
        self.background = np.clip(up * grad, 0, 255).astype(np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.rng = rng

    def clip(self, start: int, frames: int = CLIP) -> np.ndarray:
        out = np.empty((frames, self.h, self.w, 3), np.uint8)
        cx, cy = self.w / 2, self.h / 2
        for t in range(frames):
            i = start + t
            # A "face" that sways, and a "mouth" that opens and closes at ~4 Hz.
            fx = cx + 0.03 * self.w * np.sin(i / 40)
            fy = cy + 0.02 * self.h * np.sin(i / 55)
            face = ((self.xx - fx) / (0.18 * self.w)) ** 2 + (
                (self.yy - fy) / (0.3 * self.h)
            ) ** 2 < 1
            mouth_h = 0.01 + 0.03 * abs(np.sin(i * np.pi * 4 / FPS))
            mouth = ((self.xx - fx) / (0.06 * self.w)) ** 2 + (
                (self.yy - fy - 0.12 * self.h) / (mouth_h * self.h)
            ) ** 2 < 1
            frame = self.background.copy()
            frame[face] = (200, 160, 140)
            frame[mouth] = (90, 30, 40)
            # Per-frame grain: the bits a detailed picture costs (the bitrate follows it).
            noise = self.rng.integers(-self.grain, self.grain + 1, frame.shape, dtype=np.int16)
            out[t] = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        return out


def write_speech_like_wav(path: Path, seconds: float, rate: int = 48000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    chunk = 60 * rate
    total = round(seconds * rate)
    phase = 0.0
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            t = (start + np.arange(n)) / rate
            envelope = np.clip(np.sin(2 * np.pi * 3.1 * t) + 0.2, 0, 1)
            f0 = 120 + 25 * np.sin(2 * np.pi * 0.4 * t)
            ph = phase + 2 * np.pi * np.cumsum(f0) / rate
            phase = float(ph[-1])
            voiced = sum(np.sin(k * ph) / k for k in range(1, 8))
            x = envelope * (0.25 * voiced + 0.05 * rng.standard_normal(n))
            w.writeframes((np.clip(x, -1, 1) * 20000).astype("<i2").tobytes())
    return path


# --------------------------------------------------------------------------- measurements


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def encode_segment(
    path: Path,
    source: TalkingHeadLike,
    frames: int,
    settings: EncoderSettings,
    watermark: Watermark | None,
    pace_fps: float | None = None,
) -> tuple[Segment, float, float]:
    """Encode ``frames`` frames clip by clip. Returns (info, wall seconds, seconds blocked in
    submit). With ``pace_fps`` the clips arrive like a generator producing that rate."""
    clips = [source.clip(s, min(CLIP, frames - s)) for s in range(0, frames, CLIP)]
    enc = SegmentEncoder(path, source.w, source.h, FPS, settings, watermark=watermark)
    blocked = 0.0
    t0 = time.perf_counter()
    for k, clip in enumerate(clips):
        if pace_fps:
            due = t0 + k * CLIP / pace_fps
            time.sleep(max(0.0, due - time.perf_counter()))
        s = time.perf_counter()
        enc.submit(clip)
        blocked += time.perf_counter() - s
    info = enc.close()
    return info, time.perf_counter() - t0, blocked


def watermark_fps(width: int, height: int, clips: int = 20) -> float:
    wm = Watermark(WatermarkSpec(), width, height)
    frames = TalkingHeadLike(width, height).clip(0)
    seconds, _ = timed(lambda: [wm.apply(frames, inplace=True) for _ in range(clips)])
    return clips * frames.shape[0] / seconds


def moviepy_stitch(
    segments: list[Path], audio: Path, out: Path, settings: EncoderSettings
) -> float:
    from moviepy import AudioFileClip, VideoFileClip, concatenate_videoclips

    t0 = time.perf_counter()
    videos = [VideoFileClip(str(p), audio=False) for p in segments]
    video = concatenate_videoclips(videos)
    track = AudioFileClip(str(audio)).subclipped(0, video.duration)
    video.with_audio(track).write_videofile(
        str(out),
        fps=FPS,
        codec="libx264",
        preset=settings.preset,
        ffmpeg_params=["-crf", str(settings.crf)],
        audio_codec="aac",
        audio_fps=48000,
        audio_bitrate="128k",
        threads=os.cpu_count(),
        logger=None,
    )
    seconds = time.perf_counter() - t0
    for v in videos:
        v.close()
    track.close()
    return seconds


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    settings = EncoderSettings(preset=args.preset, crf=args.crf)
    source = TalkingHeadLike(args.width, args.height, grain=args.grain)
    watermark = Watermark(WatermarkSpec(), args.width, args.height)
    seg_frames = round(args.segment_seconds * FPS)
    n_segments = max(1, round(args.minutes * 60 / args.segment_seconds))
    video_s = n_segments * seg_frames / FPS
    results: dict[str, Any] = {}
    log = print if not args.quiet else (lambda *a, **k: None)

    # 1. encoder throughput, and a generator paced at 50 fps
    bench_frames = min(seg_frames, args.encoder_frames)
    info, secs, _ = encode_segment(workdir / "enc.mp4", source, bench_frames, settings, watermark)
    results["encoder_fps"] = bench_frames / secs
    paced_frames = min(args.encoder_frames, 10 * CLIP)
    _, paced_s, blocked = encode_segment(
        workdir / "paced.mp4", source, paced_frames, settings, watermark, pace_fps=50.0
    )
    results["paced_50fps"] = {
        "frames": paced_frames,
        "wall_s": paced_s,
        "blocked_in_submit_s": blocked,
    }
    log(
        f"encoder: {results['encoder_fps']:.1f} frames/s; at 50 fps input, submit blocked {blocked:.3f} s"
    )

    # 2. watermark
    results["watermark_fps"] = watermark_fps(args.width, args.height)
    log(f"watermark: {results['watermark_fps']:.0f} frames/s")

    # 3. the hour: one real segment, copied
    first, enc_s, _ = encode_segment(workdir / "00000.mp4", source, seg_frames, settings, watermark)
    segments = [first.path]
    for i in range(1, n_segments):
        dst = workdir / f"{i:05d}.mp4"
        shutil.copyfile(first.path, dst)
        segments.append(dst)
    total_bytes = first.bytes * n_segments
    results["input"] = {
        "segments": n_segments,
        "segment_seconds": args.segment_seconds,
        "frames": n_segments * seg_frames,
        "video_seconds": video_s,
        "segment_bytes": first.bytes,
        "video_bitrate_kbps": first.bytes * 8 / args.segment_seconds / 1000,
        "total_bytes": total_bytes,
        "segment_encode_s": enc_s,
    }
    wav = write_speech_like_wav(workdir / "speech.wav", video_s + 1.0)
    log(
        f"synthesised {n_segments} segments x {args.segment_seconds} s ({total_bytes / 1e6:.0f} MB)"
    )

    prep_s, track = timed(lambda: prepare_audio(wav, workdir / "audio.m4a", video_s))
    copy_s, copied = timed(lambda: stitch(segments, track, workdir / "output.mp4"))
    assert copied.audio == "copied" and copied.frames == n_segments * seg_frames
    inline_s, inline = timed(lambda: stitch(segments, wav, workdir / "output-inline.mp4"))
    assert inline.audio == "encoded"
    results["stitch"] = {
        "prepare_audio_s": prep_s,
        "stitch_prepared_audio_s": copy_s,
        "stitch_encoding_audio_s": inline_s,
        "output_bytes": copied.bytes,
    }
    log(
        f"prepare_audio {prep_s:.1f} s, stitch (audio copied) {copy_s:.1f} s, "
        f"stitch (audio encoded) {inline_s:.1f} s"
    )

    if not args.skip_moviepy:
        k = max(1, min(args.moviepy_segments, n_segments))
        prefix_wav = write_speech_like_wav(
            workdir / "speech-prefix.wav", k * args.segment_seconds + 1
        )
        mp_s = moviepy_stitch(segments[:k], prefix_wav, workdir / "moviepy.mp4", settings)
        results["moviepy"] = {
            "segments_timed": k,
            "seconds_timed": mp_s,
            "extrapolated_s": mp_s * n_segments / k,
            "extrapolated": k < n_segments,
        }
        log(f"moviepy: {mp_s:.1f} s for {k} segments -> {mp_s * n_segments / k:.0f} s for all")

    if not args.skip_manifest:
        man_s, manifest = timed(lambda: build_manifest([first] * n_segments, copied.path))
        seg_hash_s, seg_hashes = timed(lambda: list(iter_frame_hashes(first.path)))
        fast_s, fast = timed(
            lambda: build_manifest(
                [first] * n_segments, copied.path, segment_frame_hashes=[seg_hashes] * n_segments
            )
        )
        assert fast["frame_hashes"] == manifest["frame_hashes"]
        results["manifest"] = {
            "decoding_output_s": man_s,
            "frames_per_s": manifest["output"]["frames"] / man_s,
            "hash_one_segment_s": seg_hash_s,
            "from_segment_hashes_s": fast_s,
            "json_bytes": len(json.dumps(manifest)),
        }
        log(f"manifest: {man_s:.1f} s decoding the output, {fast_s:.1f} s from segment hashes")
    return results


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    inp, st = results["input"], results["stitch"]
    paced = results["paced_50fps"]
    hours = inp["video_seconds"] / 3600
    rows = [
        (
            f"SegmentEncoder {args.width}x{args.height}, watermark on",
            f"{results['encoder_fps']:.0f} frames/s",
        ),
        (
            "  generator at 50 frames/s: time blocked in submit",
            f"{paced['blocked_in_submit_s'] * 1000:.1f} ms over {paced['frames']} frames",
        ),
        ("Watermark compositing", f"{results['watermark_fps']:.0f} frames/s"),
        (
            f"prepare_audio ({hours:.2f} h of AAC, beside generation)",
            f"{st['prepare_audio_s']:.1f} s",
        ),
        ("stitch, audio prepared (stream copy both)", f"{st['stitch_prepared_audio_s']:.1f} s"),
        ("stitch, audio encoded during the stitch", f"{st['stitch_encoding_audio_s']:.1f} s"),
    ]
    if "moviepy" in results:
        mp = results["moviepy"]
        value = f"{mp['extrapolated_s']:.0f} s"
        if mp["extrapolated"]:
            value += (
                f" (timed on {mp['segments_timed']} of {inp['segments']} segments: "
                f"{mp['seconds_timed']:.1f} s, extrapolated linearly)"
            )
        rows.append(("moviepy: concatenate and re-encode", value))
    if "manifest" in results:
        m = results["manifest"]
        rows += [
            (
                "manifest, decoding + hashing the output",
                f"{m['decoding_output_s']:.1f} s ({m['frames_per_s']:.0f} frames/s)",
            ),
            ("  hashing one segment (beside generation)", f"{m['hash_one_segment_s']:.2f} s"),
            ("manifest from segment hashes", f"{m['from_segment_hashes_s']:.1f} s"),
        ]
    width = max(len(name) for name, _ in rows)
    header = (
        f"{inp['segments']} segments x {inp['segment_seconds']:g} s = {inp['video_seconds']:.0f} s "
        f"of {args.width}x{args.height} {FPS} fps video at {inp['video_bitrate_kbps']:.0f} kb/s "
        f"(x264 {args.preset}, crf {args.crf})"
    )
    return "\n".join([header, *(f"{name:<{width}}  {value}" for name, value in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the stitched video")
    p.add_argument("--segment-seconds", type=float, default=48.0)
    p.add_argument("--width", type=int, default=720)
    p.add_argument("--height", type=int, default=400)
    p.add_argument("--preset", default=EncoderSettings().preset)
    p.add_argument("--crf", type=int, default=EncoderSettings().crf)
    p.add_argument("--grain", type=int, default=4, help="per-frame noise amplitude (bitrate)")
    p.add_argument("--encoder-frames", type=int, default=1200, help="frames for the encoder fps")
    p.add_argument("--moviepy-segments", type=int, default=2, help="segments moviepy re-encodes")
    p.add_argument("--skip-moviepy", action="store_true")
    p.add_argument("--skip-manifest", action="store_true")
    p.add_argument("--device", default=f"CPU, {os.cpu_count()} cores")
    p.add_argument("--date", default=date.today().isoformat())
    p.add_argument("--workdir", type=Path, help="keep the media here (default: a temporary dir)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Other work on the machine skews the figures: record the load around the run.
    load_before = os.getloadavg()
    with scratch_dir(args.workdir, "stitch") as workdir:
        results = run(args, workdir)
    load_after = os.getloadavg()
    doc = {
        "benchmark": "stitch",
        "device": args.device,
        "date": args.date,
        "platform": platform.platform(),
        "ffmpeg": Path(find_ffmpeg()).name,
        "pyav": av.__version__,
        "load_average_1m": {"before": load_before[0], "after": load_after[0]},
        "settings": {
            "width": args.width,
            "height": args.height,
            "fps": FPS,
            "preset": args.preset,
            "crf": args.crf,
            "audio": "AAC 128 kb/s 48 kHz mono from a 48 kHz mono speech-like WAV",
        },
        "content": f"synthetic talking-head-like frames (static texture, moving blob, grain +-{args.grain}), "
        "watermarked; one segment encoded and copied to make the hour",
        "results": results,
    }
    text = report(args, results)
    if not args.quiet:
        print()
        print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
