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
    target = home if device is None else torch.device(device)
    if home.type == "cpu" and target.type != "cpu":
        from pipeline.weights import visiting

        with visiting(model, target):
            return _encode(model, ids, target)
    return _encode(model, ids, target)


def _encode(model: UMT5EncoderModel, ids: list[int], device: torch.device) -> torch.Tensor:
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    return out[0].float()
