"""The prompt's text encoding: umT5 encoder states, once per stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

    from pipeline.state import TensorSource

Tokenizer = Callable[[str, int], list[int]]
"""(prompt, max tokens) -> token ids ending with EOS."""

PAD_ID, EOS_ID = 0, 1

STATE_NAME = "prompt.text"
"""The encoded prompt's name in a stream's state ([n_tokens, d_model] float32; at most 8 MB for
the 14B model's 512 tokens): a resume reads it back instead of encoding the prompt again, which
runs umT5-XXL (11 GB of weights, first taken to the GPU where they are kept in host memory)
while the model loads and the checkpoint streams in (on an H200, 6.1 s of a resumed open
with both beside it, against 0.7 s in a quiet process)."""


def byte_tokenizer(prompt: str, max_tokens: int) -> list[int]:
    """Deterministic stand-in for the umT5 tokenizer: one token per UTF-8 byte (ids 3..258).

    Used by the tiny preset and by random-weight benchmarks, which need no files.
    """
    ids = [b + 3 for b in prompt.encode("utf-8")][: max_tokens - 1]
    return [*ids, EOS_ID]


def hf_tokenizer(tok: PreTrainedTokenizerBase) -> Tokenizer:
    """A transformers tokenizer (the released umT5 one) as a `Tokenizer`."""

    def encode(prompt: str, max_tokens: int) -> list[int]:
        return list(tok(prompt, truncation=True, max_length=max_tokens).input_ids)

    return encode


@torch.no_grad()
def encode_prompt(
    model: UMT5EncoderModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_tokens: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encoder states of the prompt's tokens: [n_tokens, d_model] float32.

    `device`: where to run the encoder. An encoder kept in host memory (umT5-XXL is 11 GB,
    needed once per stream) visits that device for the encode and goes back afterwards.
    """
    ids = tokenizer(prompt, max_tokens)
    if not ids:
        ids = [EOS_ID]
    home = next(model.parameters()).device
    target = encode_device(model, device)
    if home.type == "cpu" and target.type != "cpu":
        from pipeline.weights import visiting

        with visiting(model, target):
            return _encode(model, ids, target)
    return _encode(model, ids, target)


def encode_device(model: UMT5EncoderModel, device: torch.device | str | None) -> torch.device:
    """Where `encode_prompt` runs the encoder, and leaves its states."""
    return next(model.parameters()).device if device is None else torch.device(device)


def prompt_states(
    model: UMT5EncoderModel,
    tokenizer: Tokenizer,
    prompt: str,
    max_tokens: int,
    device: torch.device | str | None = None,
    saved: TensorSource | None = None,
) -> torch.Tensor:
    """`encode_prompt`'s states, read from `saved` (a state being resumed) where it holds them
    (STATE_NAME), bit for bit what the encoder gave the interrupted stream; encoded otherwise
    (a fresh stream, or a state written before states kept the prompt). The caller has checked
    that the state belongs to this request."""
    if saved is not None and STATE_NAME in saved.names():
        return saved.get(STATE_NAME).to(encode_device(model, device))
    return encode_prompt(model, tokenizer, prompt, max_tokens, device)


def _encode(model: UMT5EncoderModel, ids: list[int], device: torch.device) -> torch.Tensor:
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return out[0].float()
