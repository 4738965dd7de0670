"""The Wan2.2-S2V diffusion transformer as LiveAvatar runs it, read top to bottom.

Module and parameter names are the released checkpoint's (`patch_embedding`, `blocks.N.self_attn.q`,
`casual_audio_encoder.encoder.conv2.conv`, ...), so its state dict loads without renaming.

`forward` is one denoising step of one block, from noisy latents to the flow velocity:

    tokens = patch embedding of the latents             [1, L, C]   L = F * h/2 * w/2
    for each of the 40 blocks:
        self-attention over the step's KV cache (sink + ring + these tokens), RoPE positions
        cross-attention to the prompt's tokens
        FFN, each of the three modulated by the timestep (AdaLN)
        after the audio layers: each latent frame's tokens cross-attend to its audio tokens
    head: AdaLN + projection, unpatchified               [16, F, h, w]

What a stream keeps fixed is prepared once and passed in: the timestep modulations
(`time_modulation`), the prompt's keys and values (`text_context`), a block's audio tokens
(`audio_context`); the KV cache (pipeline/cache.py) knows where the tokens sit and what they
attend to. A pipeline stage runs the same step in pieces: `embed_video`, `run_layers` over its
range of layers, `velocity`.

Token layout: a latent video [16, F, h, w] becomes F*(h/2)*(w/2) tokens in frame-major order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline import params
from pipeline.model import fp8_attention, fused, rope
from pipeline.model.attention import attention
from pipeline.model.audio import AudioInjector, CausalAudioEncoder
from pipeline.model.frame_pack import FramePacker
from pipeline.model.layers import Head, KVCache, TransformerBlock
from pipeline.params import Precision
from pipeline.presets import DiTConfig

# rows of `trainable_cond_mask`: which kind of token this is
TOKEN_NOISY, TOKEN_REFERENCE, TOKEN_MOTION = 0, 1, 2


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[N] timesteps -> [N, dim] float64 (cos | sin)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


@dataclass
class TimeModulation:
    """One timestep's conditioning: `emb` [C] for the head, `mod` [6, C] for every block."""

    emb: torch.Tensor
    mod: torch.Tensor


@dataclass
class AudioContext:
    """One block's audio, ready for every injected layer (all steps of the block share it).

    kv[i]: keys/values [F, tokens, H, D] of injector i; adain[i]: (shift, scale) [F, 1, C].
    """

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    adain: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SinkTokens:
    """Reference + motion tokens: tokens [1, S, C], positions [S, 3], the first `ref_len` are
    the reference frame's (their frame position moves with the stream; motion's do not)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    ref_len: int


class WanS2VTransformer(nn.Module):
    row_major_stream = True
    """Write the residual stream row-major ([1, L, C] with a token's C values together) where
    the patch embedding makes it, instead of the convolution's layout seen channels-first
    (token stride 1), which every elementwise step after it keeps. Row-major, each norm over
    a token's channels is one contiguous row: inductor fuses each norm chain into one kernel
    and the FP8 row kernels (fp8_rows.py) can run (one H200, 2026-12-04: an fp8 clip 3.62 s
    against 3.80 s, side by side). Two processes compiling cold render the same bits with it
    since every compile is in deterministic mode (`python -m ops.bench.determinism --cold
    --row-major`, 2026-12-04), and a 14B stream resumed in another process from its local
    checkpoint renders the uninterrupted stream's frames (`ops/bench/lifecycle.py --parts tiers
    --tiers-row-major`, one H200, 2026-12-04). Frames differ in rounding between the layouts,
    so a stream records its layout in its state and a resume sets it on the DiT
    (`Stream.row_major`): the class default is only the layout of new streams, and states
    from before the record resume in the convolution's."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(dim, cfg.ffn_dim, cfg.num_heads, cfg.eps, layer=i)
                for i in range(cfg.num_layers)
            ]
        )
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        # pose conditioning: LiveAvatar renders without a pose video, so only its bias is used
        self.cond_encoder = nn.Conv3d(
            cfg.cond_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.casual_audio_encoder = CausalAudioEncoder(
            cfg.audio_dim, dim, cfg.num_audio_layers, cfg.num_audio_tokens
        )
        self.audio_injector = AudioInjector(
            dim, cfg.num_heads, len(cfg.audio_inject_layers), cfg.eps
        )
        self.trainable_cond_mask = nn.Embedding(3, dim)
        self.frame_packer = FramePacker(dim, cfg.in_dim, cfg.zip_frame_buckets)
        self.rope = rope.Rope(cfg.head_dim)
        self._injector_of_layer = {layer: i for i, layer in enumerate(cfg.audio_inject_layers)}

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    fp8_attention = False
    """Whether this DiT's streams hold self-attention's caches in e4m3 and attend in FP8
    (precision "fp8-attention"; `set_precision`). The layers follow their caches: this flag
    is what the precision reports and what sizes a stream's caches (`pipeline.cache.kv_dtype`)."""

    @property
    def precision(self) -> Precision:
        """How the DiT runs (pipeline.params.PRECISIONS)."""
        if not any(block.fp8 for block in self.blocks):
            return "bf16"
        return "fp8-attention" if self.fp8_attention else "fp8"

    def set_precision(self, precision: Precision) -> None:
        """Make a bf16 DiT run at `precision` (once, after loading the weights and merging the
        LoRA): the FP8 precisions quantise the blocks' linear layers."""
        if self.precision != "bf16":
            raise ValueError(f"the DiT already runs at precision {self.precision!r}")
        if params.attention_in_fp8(precision):
            fp8_attention.require(self.device)
        if params.linears_in_fp8(precision):
            self.to_fp8()
        self.fp8_attention = params.attention_in_fp8(precision)

    def to_fp8(self) -> None:
        """Quantise every block's linear layers to FP8 (once, after loading the weights and
        merging the LoRA). Embeddings, the audio layers and the head stay as they are."""
        for block in self.blocks:
            block.to_fp8()

    # ---- the transformer -----------------------------------------------------------------

    def forward(
        self,
        latents: torch.Tensor,
        time: TimeModulation,
        cache: KVCache,
        text_kv: list[tuple[torch.Tensor, torch.Tensor]],
        audio: AudioContext,
    ) -> torch.Tensor:
        """One denoising step of one block: noisy latents [16, F, h, w] at timestep `time` ->
        flow velocity [16, F, h, w] float32. Writes the block's keys and values into `cache`."""
        x = self.embed_video(latents)  # [1, L, C], L = F * h/2 * w/2
        x = self.run_layers(x, time, cache, text_kv, audio)  # [1, L, C]
        return self.velocity(x, time, latents.shape[1:])  # [16, F, h, w]

    def embed_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Noisy latents [16, F, h, w] -> tokens [1, F*h/2*w/2, C]."""
        x = self.patch_embedding(latents.unsqueeze(0).to(self.dtype)).flatten(2).transpose(1, 2)
        # the (absent) pose video is all zeros: its encoding is the conv's bias alone
        cond = self.cond_encoder.bias + self.trainable_cond_mask.weight[TOKEN_NOISY]
        if self.row_major_stream:  # the sum written row-major: one copy either way
            return torch.add(x, cond, out=x.new_empty(x.shape))
        return x + cond

    def run_layers(
        self,
        x: torch.Tensor,
        time: TimeModulation,
        cache: KVCache,
        text_kv: list[tuple[torch.Tensor, torch.Tensor]],
        audio: AudioContext | None = None,
        layers: range | None = None,
    ) -> torch.Tensor:
        """Blocks `layers` (default: all) over tokens x [1, L, C]; audio is injected after the
        listed layers. A pipeline stage runs its range of layers and hands x on."""
        for i in range(len(self.blocks)) if layers is None else layers:
            x = self.blocks[i](x, time.mod, cache, text_kv[i])
            if audio is not None and i in self._injector_of_layer:
                x = self.inject_audio(self._injector_of_layer[i], x, audio)
        return x

    def inject_audio(self, j: int, x: torch.Tensor, audio: AudioContext) -> torch.Tensor:
        """Injector j: each latent frame's tokens cross-attend to that frame's audio tokens."""
        k, v = audio.kv[j]  # [F, audio tokens, H, D]
        shift, scale = audio.adain[j]
        frames = x.view(k.shape[0], -1, x.shape[-1])  # [F, tokens per frame, C]
        h = fused.modulated_norm(frames.float(), shift, scale, 1e-5, x.dtype)
        inj = self.audio_injector.injector[j]
        q = inj.norm_q(inj.q(h)).unflatten(2, (inj.num_heads, -1))
        out = inj.o(attention(q, k, v).flatten(2))
        return x + out.reshape(x.shape)

    def velocity(
        self, x: torch.Tensor, time: TimeModulation, latent_shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Head + unpatchify: tokens [1, L, C] -> flow velocity [16, F, h, w] float32, for
        latents of shape (F, h, w)."""
        out = self.head(x, time.emb)[0]  # [L, pt*ph*pw*16]
        pt, ph, pw = self.cfg.patch_size
        f, gh, gw = latent_shape[0] // pt, latent_shape[1] // ph, latent_shape[2] // pw
        out = out.view(f, gh, gw, pt, ph, pw, self.cfg.out_dim)
        out = torch.einsum("fhwpqrc->cfphqwr", out)
        return out.reshape(self.cfg.out_dim, f * pt, gh * ph, gw * pw)

    # ---- conditioning prepared once per stream -------------------------------------------

    def time_modulation(self, t: float) -> TimeModulation:
        """Embeddings of timestep t, computed in float32 like the reference."""
        sin = sinusoidal_embedding(self.cfg.freq_dim, torch.tensor([t])).float().to(self.device)
        lin1, lin2 = self.time_embedding[0], self.time_embedding[2]
        e = F.linear(sin, lin1.weight.float(), lin1.bias.float())
        e = F.linear(F.silu(e), lin2.weight.float(), lin2.bias.float())
        proj = self.time_projection[1]
        mod = F.linear(F.silu(e), proj.weight.float(), proj.bias.float())
        return TimeModulation(emb=e[0], mod=mod.view(6, -1))

    def text_context(self, text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """text [Lt, text_dim] encoder states (zero rows past the prompt), padded to text_len;
        returns every block's cross-attention keys and values."""
        padded = text.new_zeros(self.cfg.text_len, self.cfg.text_dim)
        n = min(text.shape[0], self.cfg.text_len)
        padded[:n] = text[:n]
        context = self.text_embedding(padded.unsqueeze(0).to(self.dtype))
        return [block.cross_attn.context_kv(context) for block in self.blocks]

    def audio_context(self, features: torch.Tensor, motion_frames: int) -> AudioContext:
        """One block's audio features [layers, C_audio, T video frames] (float32).

        The encoder is causal over time and was trained with `motion_frames` frames of motion
        context in front: that context is filled by repeating the block's first frame, and the
        outputs for it are dropped, leaving T/4 latent frames.
        """
        t = features.shape[-1]
        context = features[..., :1].expand(-1, -1, motion_frames)
        x = torch.cat([context, features], dim=-1).unsqueeze(0).float()
        glob, local = self.casual_audio_encoder(x)
        keep = t // 4
        glob, local = glob[0, -keep:].to(self.dtype), local[0, -keep:].to(self.dtype)
        kv, adain = [], []
        for inj, ada in zip(
            self.audio_injector.injector,
            self.audio_injector.injector_adain_layers,
            strict=True,
        ):
            kv.append(inj.context_kv(local))  # [F, tokens, H, D]
            ss = ada.linear(F.silu(glob[:, 0])).float()  # [F, 2C]
            shift, scale = ss.chunk(2, dim=1)
            adain.append((shift.unsqueeze(1), scale.unsqueeze(1)))
        return AudioContext(kv=kv, adain=adain)

    # ---- tokens --------------------------------------------------------------------------

    def embed_sink(
        self, reference: torch.Tensor, motion: torch.Tensor, ref_frame: int
    ) -> SinkTokens:
        """Reference latent [16, 1, h, w] and motion latents [16, T, h, w] -> sink tokens."""
        _, _, h, w = reference.shape
        ref = self.patch_embedding(reference.unsqueeze(0).to(self.dtype)).flatten(2).transpose(1, 2)
        ref = ref + self.trainable_cond_mask.weight[TOKEN_REFERENCE]
        mot, mot_pos = self.frame_packer(motion.to(self.dtype))
        mot = mot + self.trainable_cond_mask.weight[TOKEN_MOTION]
        ref_pos = rope.grid([ref_frame], range(h // 2), range(w // 2))
        return SinkTokens(
            tokens=torch.cat([ref, mot], dim=1),
            positions=torch.cat([ref_pos, mot_pos], dim=0),
            ref_len=ref.shape[1],
        )


def dit_flops_per_block_step(cfg: DiTConfig, block_tokens: int, kv_tokens: int) -> float:
    """Matmul FLOPs of one denoising step on one block (for model FLOPs utilisation).

    Counts the linear layers and the attention products over `kv_tokens` cached keys; the text
    and audio keys, computed once per stream or block, are not counted.
    """
    d, n = cfg.dim, block_tokens
    per_layer = (
        2 * n * d * d * 4  # self-attention q, k, v, o
        + 2 * n * d * d * 2  # text cross-attention q, o
        + 2 * n * d * cfg.ffn_dim * 2  # FFN
        + 4 * n * kv_tokens * d  # self-attention QK^T and PV
        + 4 * n * cfg.text_len * d  # text cross-attention QK^T and PV
    )
    per_injection = 2 * n * d * d * 2 + 4 * n * (cfg.num_audio_tokens + 1) * d
    patch = math.prod(cfg.patch_size)
    head_and_embed = 2 * n * d * cfg.out_dim * patch + 2 * n * d * cfg.in_dim * patch
    return float(
        cfg.num_layers * per_layer + len(cfg.audio_inject_layers) * per_injection + head_and_embed
    )
