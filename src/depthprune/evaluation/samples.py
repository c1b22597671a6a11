"""Generation examples: greedy continuations of a few fixed prompts, so a reader sees what a PPL number means.

Decoding is fixed: greedy (no sampling, one beam), exactly ``max_new_tokens`` new tokens per prompt, each the
argmax (EOS neither stops the continuation nor is forbidden; it is decoded as nothing), each prompt on its own
(no padding), with the KV cache; the checkpoint's generation settings (sampling, temperature, stop strings) play
no part. The tokenizer's own encoding of the prompt is used, with
BOS put in front when the tokenizer defines one and did not add it (as the perplexity windows do).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from depthprune.errors import DepthpruneError
from depthprune.models.loading import input_device

DEFAULT_PROMPTS: tuple[str, ...] = (
    "AI can create a logo in seconds",
    "What's great about the holiday season,",
    "The Eiffel Tower is located in",
)
DEFAULT_MAX_NEW_TOKENS = 32
DECODING = "greedy"


def check_prompts(prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise DepthpruneError("give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise DepthpruneError(f"prompts must be non-empty text, got {bad[0]!r}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise DepthpruneError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return prompts


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    ids = list(tokenizer(prompt, return_attention_mask=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


@torch.no_grad()
def greedy_tokens(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    """The argmax token ``new_tokens`` times after ``ids`` (1 x n), with the KV cache; EOS does not stop it."""
    # transformers 5.x renamed past_key_values to cache (the old name is deprecated); use what forward takes
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True)
    new: list[int] = []
    while True:
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(int(tok))
        if len(new) == new_tokens:
            return new
        cache = out.get("cache", out.get("past_key_values"))
        out = model(input_ids=tok, use_cache=True, **{name: cache})


def generation_samples(model, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS,
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[dict]:
    """Greedy continuation of each prompt: ``[{"prompt", "continuation", "new_tokens", "new_token_ids"}]``.

    ``continuation`` is the decoded text of the new tokens only (special tokens skipped).
    """
    prompts = check_prompts(prompts, max_new_tokens)
    if tokenizer is None:
        raise DepthpruneError("generation examples need the model's tokenizer")
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, prompt)], dtype=torch.long, device=input_device(model))
            new = greedy_tokens(model, ids, max_new_tokens)
            out.append({"prompt": prompt, "continuation": tokenizer.decode(new, skip_special_tokens=True),
                        "new_tokens": len(new), "new_token_ids": new})
    finally:
        model.train(was_training)
    return out


def samples_json(model, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict:
    """The stored form (in eval.json entries and ``eval samples --json``): settings + one record per prompt."""
    return {"decoding": DECODING, "max_new_tokens": max_new_tokens,
            "samples": generation_samples(model, tokenizer, prompts, max_new_tokens)}
