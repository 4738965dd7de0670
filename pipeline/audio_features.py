"""wav2vec2 features of the speech, per video frame, computed on demand in fixed chunks.

wav2vec2 turns 16 kHz speech into 50 frames per second; the model wants all 25 hidden states
(the embeddings and every layer) per video frame at 25 fps. As in the reference, video frame k
takes the 30 Hz grid point nearest to its time (round(1.2 k)), and that point's features are
interpolated linearly between the two nearest 50 Hz frames. Frames past the end of the speech
get zero features (silence padding).

Hours of speech do not fit in memory as hidden states, so wav2vec2 runs over fixed chunks of
`chunk_frames` 50 Hz frames, each seen with `context_frames` of context on both sides, and only
the last two chunks are kept. The chunk grid is fixed by the audio alone, so the features of a
clip are the same whether a stream reaches it directly or resumes in front of it.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Wav2Vec2Model

HOP = 320  # samples per wav2vec2 frame (20 ms at 16 kHz)
WINDOW = 400  # receptive field of one wav2vec2 frame
FEATURE_FPS, GRID_FPS, VIDEO_FPS = 50, 30, 25


def count_frames(num_samples: int) -> int:
    """wav2vec2 frames of a waveform of this length."""
    return 0 if num_samples < WINDOW else (num_samples - WINDOW) // HOP + 1


class AudioFeatures:
    def __init__(
        self,
        model: Wav2Vec2Model,
        samples: np.ndarray,
        chunk_frames: int = 500,
        context_frames: int = 100,
    ):
        self.model = model
        # wav2vec2's input normalisation, over the whole utterance
        samples = samples.astype(np.float32, copy=False)
        self.samples = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
        self.chunk_frames = chunk_frames
        self.context_frames = context_frames
        self.num_feature_frames = count_frames(len(samples))
        self.num_grid_frames = self.num_feature_frames * GRID_FPS // FEATURE_FPS
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers + 1
        self.dim = cfg.hidden_size
        # two chunk slots, allocated up front: chunk c lives in slot c % 2, so the pair of
        # neighbours a block may straddle is always at hand
        self._slots = torch.zeros(2, self.num_layers, chunk_frames, self.dim, device=self.device)
        self._slot_chunk = [-1, -1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def video_frames(self, start: int, count: int) -> torch.Tensor:
        """Features of video frames [start, start + count): [layers, dim, count] float32."""
        k = np.arange(start, start + count, dtype=np.int64)
        grid = (12 * k + 5) // 10  # round(k * 30 / 25); k * 1.2 never ends in .5
        valid = grid < self.num_grid_frames
        pos5 = 5 * grid  # 50 Hz position of a 30 Hz point, times 3
        lo = pos5 // 3
        frac = torch.from_numpy((pos5 % 3) / 3.0).float()
        out = torch.zeros(self.num_layers, self.dim, count, device=self.device)
        if not valid.any():
            return out
        last = self.num_feature_frames - 1
        lo_v = np.minimum(lo[valid], last)
        hi_v = np.minimum(lo[valid] + 1, last)
        feats = self._frames(int(lo_v.min()), int(hi_v.max()) + 1)  # [layers, n, dim]
        base = int(lo_v.min())
        a = feats[:, torch.from_numpy(lo_v - base)]
        b = feats[:, torch.from_numpy(hi_v - base)]
        w = frac[torch.from_numpy(valid)].to(self.device).view(1, -1, 1)
        mixed = a * (1 - w) + b * w  # [layers, n_valid, dim]
        out[:, :, torch.from_numpy(valid).to(self.device)] = mixed.transpose(1, 2)
        return out

    def _frames(self, first: int, end: int) -> torch.Tensor:
        """Hidden states of 50 Hz frames [first, end): [layers, end - first, dim] float32."""
        out = torch.empty(self.num_layers, end - first, self.dim, device=self.device)
        at = first
        while at < end:
            c = at // self.chunk_frames
            upto = min(end, (c + 1) * self.chunk_frames)
            base = c * self.chunk_frames
            out[:, at - first : upto - first] = self._chunk(c)[:, at - base : upto - base]
            at = upto
        return out

    @torch.no_grad()
    def _chunk(self, index: int) -> torch.Tensor:
        slot = index % 2
        if self._slot_chunk[slot] != index:
            f0 = index * self.chunk_frames - self.context_frames
            n = self.chunk_frames + 2 * self.context_frames
            s0, s1 = f0 * HOP, (f0 + n - 1) * HOP + WINDOW
            window = np.zeros(s1 - s0, dtype=np.float32)  # silence outside the speech
            a, b = max(s0, 0), min(s1, len(self.samples))
            if b > a:
                window[a - s0 : b - s0] = self.samples[a:b]
            param = next(self.model.parameters())
            x = torch.from_numpy(window).to(device=param.device, dtype=param.dtype).unsqueeze(0)
            hidden = self.model(x, output_hidden_states=True).hidden_states
            for layer, h in enumerate(hidden):
                self._slots[slot, layer] = h[
                    0, self.context_frames : self.context_frames + self.chunk_frames
                ]
            self._slot_chunk[slot] = index
        return self._slots[slot]

    def nbytes(self) -> int:
        return self._slots.numel() * self._slots.element_size()
