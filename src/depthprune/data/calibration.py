"""Calibration sets: random token windows from a corpus, or text the model generates itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from depthprune.data.sources import load_text
from depthprune.data.tokens import bos_id, sample_windows, tokenize, with_bos
from depthprune.errors import DataNotFoundError

DEFAULT_CALIB_SOURCE = "war_and_peace"


@dataclass(frozen=True)
class CalibrationSpec:
    """What calibration data to draw: ``source`` is a named corpus, a file, a hub dataset, or ``self``."""

    source: str | None = None
    samples: int = 10
    seq_len: int = 128
    seed: int = 0
    text_field: str = "text"


@dataclass
class Calibration:
    """Model inputs (BOS prepended when the tokenizer has one) and the spec that made them."""

    input_ids: torch.Tensor
    spec: CalibrationSpec

    def to_json(self) -> dict:
        return asdict(self.spec) | {"num_tokens": int(self.input_ids.numel())}


def build_calibration(tokenizer, spec: CalibrationSpec = CalibrationSpec(), model=None) -> Calibration:
    """Draw the calibration windows; with no source, War and Peace if found locally, else ``self``."""
    source = spec.source
    if source is None:
        try:
            text = load_text(DEFAULT_CALIB_SOURCE)
            source = DEFAULT_CALIB_SOURCE
        except DataNotFoundError:
            source = "self"
        print(f"Calibration source: {source} (no --calib given)", flush=True)
        spec = CalibrationSpec(source, spec.samples, spec.seq_len, spec.seed, spec.text_field)
        if source != "self":
            ids = sample_windows(tokenize(tokenizer, text), spec.samples, spec.seq_len, spec.seed)
            return Calibration(with_bos(ids, bos_id(tokenizer)), spec)
    if source == "self":
        if model is None:
            raise ValueError("calibration source 'self' needs the model")
        return Calibration(self_generated(model, tokenizer, spec), spec)
    text = load_text(source, spec.text_field)
    ids = sample_windows(tokenize(tokenizer, text), spec.samples, spec.seq_len, spec.seed)
    return Calibration(with_bos(ids, bos_id(tokenizer)), spec)


@torch.no_grad()
def self_generated(model, tokenizer, spec: CalibrationSpec) -> torch.Tensor:
    """``samples`` sequences sampled from the model itself, starting at BOS (or EOS when there is none)."""
    from depthprune.models.loading import input_device

    start = bos_id(tokenizer)
    if start is None:
        start = tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(spec.seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    try:
        prompt = torch.full((spec.samples, 1), start, dtype=torch.long, device=input_device(model))
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0, top_p=1.0,
            temperature=1.0, max_new_tokens=spec.seq_len, min_new_tokens=spec.seq_len,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start,
        )
    finally:
        torch.random.set_rng_state(state)
    ids = out[:, : spec.seq_len + 1].cpu()
    return ids if bos_id(tokenizer) is not None else ids[:, 1:]
