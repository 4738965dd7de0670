"""SegmentEncoder: one H.264 MP4 per checkpoint interval, encoded beside the generator."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from tests.worker.media_helpers import FPS, H, W, decoded_times, encode_segment, make_clip
from worker.segments import EncoderError, EncoderSettings, SegmentEncoder


def test_segment_holds_every_frame_at_1_over_fps_from_a_keyframe_without_audio(tmp_path: Path):
    info = encode_segment(tmp_path / "seg.mp4", [6, 6, 5])

    assert info.path == tmp_path / "seg.mp4"
    assert info.frames == 17
    assert info.duration_s == pytest.approx(17 / FPS)
    assert info.bytes == info.path.stat().st_size
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert not (tmp_path / "seg.mp4.partial").exists()

    with av.open(str(info.path)) as c:
        assert len(c.streams.video) == 1
        assert len(c.streams.audio) == 0
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (s.codec_context.width, s.codec_context.height) == (W, H)
        assert s.frames == 17
        first_packet = next(p for p in c.demux(s) if p.size)
        assert first_packet.is_keyframe
    with av.open(str(info.path)) as c:
        first = next(c.decode(video=0))
        assert first.key_frame and first.pict_type == av.video.frame.PictureType.I

    assert decoded_times(info.path) == [Fraction(i, FPS) for i in range(17)]


def test_keyframes_fall_on_a_fixed_interval(tmp_path: Path):
    settings = EncoderSettings(gop_seconds=0.2)  # 5 frames at 25 fps
    info = encode_segment(tmp_path / "seg.mp4", [12, 11], settings=settings)
    with av.open(str(info.path)) as c:
        keyframes = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    assert keyframes == [0, 5, 10, 15, 20]


def test_segments_share_parameter_sets_whatever_their_content(tmp_path: Path):
    a = encode_segment(tmp_path / "a.mp4", [8], seed=1)
    b = encode_segment(tmp_path / "b.mp4", [5, 9], seed=7)
    with av.open(str(a.path)) as ca, av.open(str(b.path)) as cb:
        sa, sb = ca.streams.video[0].codec_context, cb.streams.video[0].codec_context
        # Identical SPS/PPS is what makes stream-copy concatenation valid.
        assert sa.extradata and sa.extradata == sb.extradata
        assert (sa.profile, sa.pix_fmt, sa.width, sa.height) == (
            sb.profile,
            sb.pix_fmt,
            sb.width,
            sb.height,
        )


def test_decoded_frames_match_the_input_colours(tmp_path: Path):
    clip = make_clip(10)
    enc = SegmentEncoder(tmp_path / "seg.mp4", W, H, FPS, EncoderSettings(crf=12))
    enc.submit(clip.copy())
    enc.close()
    with av.open(str(tmp_path / "seg.mp4")) as c:
        # Decoding to RGB honours the stream's colour tags: wrong tags would shift colours.
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    mse = np.mean((decoded.astype(np.float64) - clip.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255**2 / mse)
    assert psnr > 30, f"PSNR {psnr:.1f} dB"


def test_submit_applies_backpressure_instead_of_queueing_without_bound(tmp_path: Path):
    rng = np.random.default_rng(0)
    # Noise at a slow preset: each clip takes the encoder far longer than a submit call.
    enc = SegmentEncoder(
        tmp_path / "seg.mp4", 128, 96, FPS, EncoderSettings(preset="slow"), max_pending_clips=2
    )
    pending = []
    for _ in range(10):
        enc.submit(rng.integers(0, 256, (4, 96, 128, 3), dtype=np.uint8))
        pending.append(enc.pending_clips)
    info = enc.close()
    assert max(pending) <= 2
    assert max(pending) == 2, "the queue never filled: the test did not exercise backpressure"
    assert info.frames == 40 == enc.frames_submitted


FILE_SIZE_LIMIT_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from worker.segments import EncoderError, EncoderSettings, SegmentEncoder

    # The disk "fills up" after 200 kB: writes fail with EFBIG in the encoder thread.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    rng = np.random.default_rng(0)
    enc = SegmentEncoder(sys.argv[1], 128, 96, 25, EncoderSettings(crf=1, preset="ultrafast"))
    try:
        for _ in range(500):
            enc.submit(rng.integers(0, 256, (4, 96, 128, 3), dtype=np.uint8))
        print("submit: no error")
    except EncoderError as exc:
        print("submit:", exc)
    try:
        enc.close()
        print("close: no error")
    except EncoderError as exc:
        print("close:", exc)
    """
)


def test_a_write_failure_in_the_encoder_thread_surfaces_on_submit_and_close(tmp_path: Path):
    out = tmp_path / "seg.mp4"
    proc = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT_SCRIPT, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert (
        lines[0].startswith("submit: encoding segment seg.mp4 failed")
        and "File too large" in lines[0]
    )
    assert lines[1].startswith("close: encoding segment seg.mp4 failed")
    assert not out.exists() and not (tmp_path / "seg.mp4.partial").exists()


def test_invalid_encoder_settings_fail_at_construction():
    with pytest.raises(ValueError, match="preset"):
        EncoderSettings(preset="turbo")
    with pytest.raises(ValueError, match="crf"):
        EncoderSettings(crf=0)


def test_bad_frames_are_rejected_on_the_callers_thread(tmp_path: Path):
    with pytest.raises(ValueError, match="even"):
        SegmentEncoder(tmp_path / "odd.mp4", 95, 64)
    enc = SegmentEncoder(tmp_path / "seg.mp4", W, H)
    with pytest.raises(ValueError, match=r"uint8 RGB frames of shape \[T, 64, 96, 3\]"):
        enc.submit(np.zeros((2, H, W, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        enc.submit(np.zeros((2, H + 2, W, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        enc.submit(np.zeros((H, W, 3), np.uint8))
    enc.submit(make_clip(3))  # still usable after refusing bad input
    assert enc.close().frames == 3


def test_a_segment_without_frames_is_an_error_and_leaves_no_file(tmp_path: Path):
    enc = SegmentEncoder(tmp_path / "seg.mp4", W, H)
    with pytest.raises(EncoderError, match="no frames"):
        enc.close()
    assert list(tmp_path.iterdir()) == []


def test_abort_and_exceptions_leave_no_partial_segment(tmp_path: Path):
    enc = SegmentEncoder(tmp_path / "a.mp4", W, H)
    enc.submit(make_clip(5))
    enc.abort()
    with pytest.raises(EncoderError, match="closed"):
        enc.submit(make_clip(1))

    with pytest.raises(KeyboardInterrupt), SegmentEncoder(tmp_path / "b.mp4", W, H) as enc2:
        enc2.submit(make_clip(5))
        raise KeyboardInterrupt

    assert list(tmp_path.iterdir()) == []


ENCODE_ON_CORES = textwrap.dedent(
    """
    import hashlib, os, sys, threading
    from pathlib import Path
    cores = [int(c) for c in sys.argv[2].split(",")]
    os.sched_setaffinity(0, cores)
    stop = threading.Event()
    def spin():  # other work competing for the same cores
        while not stop.is_set():
            sum(range(10_000))
    for _ in range(2):
        threading.Thread(target=spin, daemon=True).start()
    from tests.worker.media_helpers import encode_segment
    segment = encode_segment(Path(sys.argv[1]), [12, 12, 12, 12], width=128, height=128)
    stop.set()
    print(hashlib.sha256(Path(sys.argv[1]).read_bytes()).hexdigest())
    """
)


def test_the_same_frames_encode_to_the_same_bytes_on_any_cores_under_load(tmp_path: Path):
    """A resumed segment must be the one an uninterrupted render makes, on whatever node and
    under whatever load it is encoded: the encoder's output is a function of the frames alone
    (with threads chosen from the core count, one core and two gave different bytes)."""
    available = sorted(os.sched_getaffinity(0))
    layouts = [available[:1], available[:2], available]
    digests = set()
    for n, cores in enumerate(layouts):
        out = subprocess.run(
            [sys.executable, "-c", ENCODE_ON_CORES, str(tmp_path / f"{n}.mp4"),
             ",".join(map(str, cores))],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        digests.add(out.stdout.strip())
    assert len(digests) == 1
