"""wav2vec2 features of the speech, per video frame, computed on demand in fixed chunks.

The DiT was trained on the reference's audio features (LiveAvatar / Wan2.2-S2V); this module
computes the same features for a speech track of any length in constant memory. docs/audio.md
compares every step with the reference.

Input: mono float32 samples at 16 kHz, normalised to zero mean and unit variance over the whole
utterance, as wav2vec2's feature extractor does (`do_normalize`, variance epsilon 1e-7).

wav2vec2: frame j of the T feature frames (50 Hz) sees samples [320 j, 320 j + 400). The model
wants all its hidden states (embeddings + every layer) per video frame.

Frame grid (the reference's mapping, reproduced exactly): the reference interpolates the T
feature frames of the whole utterance linearly onto L = int(T / 50 * 30) points of a 30 Hz grid
with `align_corners=True`, so grid point g sits at feature position g (T - 1) / (L - 1); video
frame k (25 fps) then takes grid point g = round(1.2 k), and a frame whose g >= L gets zero
features (past the speech). Here that position is computed for the frames asked for only, in
exact integer arithmetic (`feature_positions`), so it costs nothing for hours of audio. L is
computed in floating point as the reference does (for some T it is one short of 3T // 5, e.g.
T = 205 gives L = 122). The stretch (T - 1) / (L - 1) > 5 / 3 puts grid points later than
their true time 5g / 3, by an amount that grows linearly along the utterance to at most 2.33
feature frames (47 ms) at its end, whatever its length; with the grid's rounding, features lie
between 13 ms before and 59 ms after its time (a true-time mapping would give +-13 ms). The
weights were trained on features interpolated the same way (per training clip), and the same
positions as the reference make the two comparable frame for frame (docs/audio.md).
The blend is rounded to the encoder's dtype, as the reference interpolates in that dtype.

Chunks: hours of hidden states do not fit in memory, so wav2vec2 runs over fixed chunks of
`chunk_frames` feature frames, each inside a window of `chunk_frames + 2 * context_frames`
frames: the chunk with `context_frames` on either side where the utterance has them; at its
edges the window is shifted inward so it holds no sample from outside the speech (nothing is
padded), and an utterance shorter than a window is run whole. Attention in wav2vec2 is global,
so chunked features differ from whole-utterance ones; the context is chosen from measurement
(docs/audio.md): with 5 min chunks in 40 min windows, speech up to 40 min is computed whole and
longer speech is expected within 0.5 % relative of it. Inside a window the convolutional
front-end runs in pieces and only the chunk's rows of each layer are kept, so a 40 min window
takes a few GB of transient memory, not tens. Only the two latest chunks are kept. The chunk grid
and the windows depend on the audio alone, so the features of a clip are the same whether a
stream reaches it from clip 0 or resumes in front of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Wav2Vec2Model

HOP = 320  # samples per wav2vec2 frame (20 ms at 16 kHz)
WINDOW = 400  # receptive field of one wav2vec2 frame
FEATURE_FPS, GRID_FPS, VIDEO_FPS = 50, 30, 25
CHUNK_FRAMES = 15_000  # 5 min of feature frames kept per chunk
CONTEXT_FRAMES = 52_500  # 17.5 min on either side: 40 min windows (docs/audio.md)
FRONT_END_FRAMES = 1_500  # the convolutional front-end runs over 30 s of speech at a time


def count_frames(num_samples: int) -> int:
    """wav2vec2 frames of a waveform of this length."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


def normalize(samples: np.ndarray) -> np.ndarray:
    """wav2vec2's input normalisation over the whole utterance (float32, as its extractor)."""
    samples = samples.astype(np.float32, copy=False)
    return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)


def grid_length(num_feature_frames: int) -> int:
    """Points of the 30 Hz grid the reference interpolates T feature frames onto.

    The reference computes int(T / 50 * 30) in double precision, which for some T is one
    short of the exact 3T // 5 (T = 205: 122.99999999999999 -> 122); we follow it.
    """
    return int(num_feature_frames / FEATURE_FPS * GRID_FPS)


@dataclass(frozen=True, eq=False)
class FramePositions:
    """Where video frames sample the feature frames: `(1 - weight) * f[lo] + weight * f[hi]`."""

    lo: np.ndarray  # int64 [n]
    hi: np.ndarray  # int64 [n], lo + 1 clamped to the last feature frame
    weight: np.ndarray  # float64 [n], in [0, 1)
    valid: np.ndarray  # bool [n]: the frame shows speech; False: zero features


def feature_positions(video_frames: np.ndarray, num_feature_frames: int) -> FramePositions:
    """The reference's feature position of each video frame (see the module docstring):
    grid point g = round(1.2 k), position g (T - 1) / (L - 1), exact.

    1.2 k never ends in .5, so round() has no ties: g = (12 k + 5) // 10.
    """
    k = np.asarray(video_frames, dtype=np.int64)
    t = num_feature_frames
    length = grid_length(t)
    g = (12 * k + 5) // 10
    valid = (k >= 0) & (g < length)
    g = np.where(valid, g, 0)
    if length > 1:
        scaled = g * (t - 1)
        lo = scaled // (length - 1)
        weight = (scaled % (length - 1)) / (length - 1)
    else:  # one grid point sits at feature frame 0 (torch's align_corners scale is 0)
        lo = np.zeros_like(g)
        weight = np.zeros(g.shape, dtype=np.float64)
    hi = np.minimum(lo + 1, max(t - 1, 0))
    return FramePositions(lo, hi, weight, valid)


def chunk_window(index: int, chunk_frames: int, context_frames: int, num_frames: int) -> range:
    """Feature frames wav2vec2 is run over to compute chunk `index`.

    `chunk_frames + 2 * context_frames` frames centred on the chunk, shifted inward at the
    utterance's edges so that every frame of it exists; the whole utterance when shorter.
    """
    span = chunk_frames + 2 * context_frames
    start = max(0, min(index * chunk_frames - context_frames, num_frames - span))
    return range(start, min(num_frames, start + span))


class AudioFeatures:
    def __init__(
        self,
        model: Wav2Vec2Model,
        samples: np.ndarray,
        chunk_frames: int = CHUNK_FRAMES,
        context_frames: int = CONTEXT_FRAMES,
    ):
        if chunk_frames < 1 or context_frames < 0:
            raise ValueError("chunk_frames must be positive and context_frames non-negative")
        cfg = model.config
        if not cfg.do_stable_layer_norm or cfg.adapter_attn_dim is not None or cfg.add_adapter:
            raise ValueError(
                "only wav2vec2 of xlsr-53's kind is supported: stable layer norm, no adapters"
            )
        self.model = model
        self.samples = normalize(samples)
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.num_feature_frames = count_frames(len(samples))
        self.num_grid_frames = grid_length(self.num_feature_frames)
        self.num_layers = cfg.num_hidden_layers + 1
        self.dim = cfg.hidden_size
        # two chunk slots in the encoder's dtype, allocated up front: chunk c lives in slot
        # c % 2, so the pair of neighbours a block may straddle is always at hand
        self._slots = torch.zeros(
            2, self.num_layers, chunk_frames, self.dim, device=self.device, dtype=self.dtype
        )
        self._slot_chunk = [-1, -1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def video_frames(self, start: int, count: int) -> torch.Tensor:
        """Features of video frames [start, start + count): [layers, dim, count] float32.

        Values are rounded to the encoder's dtype (bf16 on GPU), as the reference's are."""
        pos = feature_positions(np.arange(start, start + count), self.num_feature_frames)
        out = torch.zeros(self.num_layers, self.dim, count, device=self.device)
        if not pos.valid.any():
            return out
        lo, hi = pos.lo[pos.valid], pos.hi[pos.valid]
        first = int(lo.min())
        feats = self.hidden_states(first, int(hi.max()) + 1)  # [layers, n, dim]
        a = feats[:, torch.from_numpy(lo - first).to(self.device)]
        b = feats[:, torch.from_numpy(hi - first).to(self.device)]
        w = torch.from_numpy(pos.weight[pos.valid]).float().to(self.device).view(1, -1, 1)
        mixed = (1 - w) * a + w * b  # [layers, n_valid, dim]
        mixed = mixed.to(self.dtype).float()
        out[:, :, torch.from_numpy(pos.valid).to(self.device)] = mixed.transpose(1, 2)
        return out

    def hidden_states(self, first: int, end: int) -> torch.Tensor:
        """wav2vec2 hidden states of feature frames [first, end): [layers, end - first, dim]
        float32, from the chunks that hold them."""
        if not 0 <= first <= end <= self.num_feature_frames:
            raise IndexError(f"feature frames [{first}, {end}) of {self.num_feature_frames}")
        out = torch.empty(self.num_layers, end - first, self.dim, device=self.device)
        at = first
        while at < end:
            c = at // self.chunk_frames
            upto = min(end, (c + 1) * self.chunk_frames)
            base = c * self.chunk_frames
            out[:, at - first : upto - first] = self._chunk(c)[:, at - base : upto - base]
            at = upto
        return out

    def _chunk(self, index: int) -> torch.Tensor:
        slot = index % 2
        if self._slot_chunk[slot] != index:
            begin = index * self.chunk_frames
            keep = range(begin, min(begin + self.chunk_frames, self.num_feature_frames))
            window = chunk_window(
                index, self.chunk_frames, self.context_frames, self.num_feature_frames
            )
            self._slots[slot, :, : len(keep)] = self._encode(window, keep)
            self._slot_chunk[slot] = index
        return self._slots[slot]

    @torch.no_grad()
    def _encode(self, window: range, keep: range) -> torch.Tensor:
        """All hidden states of feature frames `keep`, with wav2vec2 run over the speech of
        feature frames `window` alone: [layers, len(keep), dim] in the encoder's dtype.

        What `Wav2Vec2Model(x, output_hidden_states=True)` computes, in bounded memory for
        windows of many minutes: the convolutional front-end runs in pieces (each feature frame
        sees its own 400 samples only, so pieces join exactly), and only the kept rows of each
        layer's input are recorded. The last hidden state is the encoder's output after its
        final layer norm, as transformers 4.x (which the reference pins) returns it; 5.x
        returns the last layer's output before that norm.
        """
        model = self.model
        rows = slice(keep.start - window.start, keep.stop - window.start)
        pieces = []
        for f0 in range(window.start, window.stop, FRONT_END_FRAMES):
            f1 = min(window.stop, f0 + FRONT_END_FRAMES)
            x = torch.from_numpy(self.samples[f0 * HOP : (f1 - 1) * HOP + WINDOW])
            x = x.to(self.device, self.dtype).unsqueeze(0)
            pieces.append(model.feature_extractor(x))  # [1, 512, f1 - f0]
        hidden, _ = model.feature_projection(torch.cat(pieces, dim=2).transpose(1, 2))
        del pieces
        # (Wav2Vec2Model masks these states here only when training: SpecAugment)

        out = torch.empty(
            self.num_layers, len(keep), self.dim, device=self.device, dtype=self.dtype
        )
        encoder = model.encoder
        layers = encoder.layers

        def record_input(i: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
            def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                out[i] = args[0][0, rows]

            return hook

        def record_last(_module: torch.nn.Module, _args: object, output: torch.Tensor) -> None:
            out[-1] = output[0, rows]

        handles = [
            layer.register_forward_pre_hook(record_input(i)) for i, layer in enumerate(layers)
        ]
        handles.append(encoder.layer_norm.register_forward_hook(record_last))
        try:
            encoder(hidden)
        finally:
            for handle in handles:
                handle.remove()
        return out

    def nbytes(self) -> int:
        return self._slots.numel() * self._slots.element_size()
