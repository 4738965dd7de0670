"""Audio conditioning: the causal audio encoder and the per-layer audio injectors.

The encoder mixes the 25 wav2vec2 hidden states with learned weights and compresses them 4x in
time (video frames -> latent frames) into, per latent frame, 4 local tokens (+1 learned padding
token) and one global vector. Selected transformer layers then let each latent frame's tokens
cross-attend to that frame's audio tokens, after an AdaLN driven by the global vector.
Names follow the checkpoint: `casual_audio_encoder.*` and `audio_injector.*`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.model.layers import CrossAttention


class CausalConv1d(nn.Module):
    """Conv1d over time that sees only the past (left padding by edge replication).

    Runs in the input's dtype (the audio path is float32 even when the weights are bf16).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.left_pad = kernel_size - 1
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        x = F.pad(x, (self.left_pad, 0), mode="replicate")
        conv = self.conv
        return F.conv1d(x, conv.weight.to(x.dtype), conv.bias.to(x.dtype), conv.stride)


class AudioMotionEncoder(nn.Module):
    """Two stride-2 causal convs: 4 video frames -> 1 latent frame (checkpoint: `encoder`)."""

    def __init__(self, in_dim: int, hidden_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        quarter = hidden_dim // 4
        self.conv1_local = CausalConv1d(in_dim, quarter * num_tokens, 3)
        self.conv1_global = CausalConv1d(in_dim, quarter, 3)
        self.conv2 = CausalConv1d(quarter, hidden_dim // 2, 3, stride=2)
        self.conv3 = CausalConv1d(hidden_dim // 2, hidden_dim, 3, stride=2)
        self.final_linear = nn.Linear(hidden_dim, hidden_dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, hidden_dim))

    def _compress(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C/4, T] -> [N, T', C] through conv2, conv3 with non-affine norms and SiLU."""

        def norm_act(x: torch.Tensor) -> torch.Tensor:  # over channels of [N, C, T]
            x = x.transpose(1, 2)
            return F.silu(F.layer_norm(x, x.shape[-1:], eps=1e-6))

        x = norm_act(x).transpose(1, 2)
        x = norm_act(self.conv2(x)).transpose(1, 2)
        return norm_act(self.conv3(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C_audio, T] -> (global [B, T', 1, C], local [B, T', num_tokens + 1, C])."""
        b = x.shape[0]
        local = self.conv1_local(x)  # [B, n*C/4, T]
        local = local.unflatten(1, (self.num_tokens, -1)).flatten(0, 1)  # [B*n, C/4, T]
        local = self._compress(local)  # [B*n, T', C]
        local = local.unflatten(0, (b, self.num_tokens)).transpose(1, 2)  # [B, T', n, C]
        pad = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, -1)
        local = torch.cat([local, pad], dim=2)

        glob = self._compress(self.conv1_global(x))  # [B, T', C]
        lin = self.final_linear
        glob = F.linear(glob, lin.weight.to(glob.dtype), lin.bias.to(glob.dtype))
        return glob.unsqueeze(2), local


class CausalAudioEncoder(nn.Module):
    """Learned mix of wav2vec2 layers, then `AudioMotionEncoder` (checkpoint: `casual_audio_encoder`)."""

    def __init__(self, audio_dim: int, out_dim: int, num_layers: int, num_tokens: int):
        super().__init__()
        self.encoder = AudioMotionEncoder(audio_dim, out_dim, num_tokens)
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, layers, C_audio, T] (float32) -> (global, local) as AudioMotionEncoder."""
        w = F.silu(self.weights.float())
        mixed = (features * w / w.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, C_audio, T]
        return self.encoder(mixed)


class AudioAdaLayerNorm(nn.Module):
    """An injector's adaptive norm: the global audio vector, through SiLU and `linear`, gives
    the (shift, scale) of a parameter-free layer norm of the tokens [.., 2 * dim]. Only the
    projection has weights (the release's `linear.weight` / `linear.bias`); the norm itself
    runs fused in `WanS2VTransformer.inject_audio`."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)


class AudioInjector(nn.Module):
    """Per injected layer: AdaLN (global audio vector) + cross-attention to the frame's tokens."""

    def __init__(self, dim: int, num_heads: int, num_injected: int, eps: float = 1e-6):
        super().__init__()
        self.injector = nn.ModuleList(
            [CrossAttention(dim, num_heads, eps) for _ in range(num_injected)]
        )
        self.injector_adain_layers = nn.ModuleList(
            [AudioAdaLayerNorm(dim) for _ in range(num_injected)]
        )
