"""The prompt's text encoding: umT5 encoder states, once per stream."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

Tokenizer = Callable[[str, int], list[int]]
"""(prompt, max tokens) -> token ids ending with EOS."""

PAD_ID, EOS_ID = 0, 1


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
    model: UMT5EncoderModel, tokenizer: Tokenizer, prompt: str, max_tokens: int
) -> torch.Tensor:
    """Encoder states of the prompt's tokens: [n_tokens, d_model] float32."""
    ids = tokenizer(prompt, max_tokens)
    if not ids:
        ids = [EOS_ID]
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return out[0].float()
