"""Calibration sets: random token windows from a corpus, or text the model generates itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import ConfigDict, Field

from depthprune.core.options import Options, build
from depthprune.data.sources import load_text
from depthprune.data.tokens import bos_id, sample_windows, tokenize, with_bos
from depthprune.errors import DataNotFoundError, DepthpruneError
from depthprune.models.loading import input_device

DEFAULT_CALIB_SOURCE = "war_and_peace"


class CalibrationSpec(Options):
    """What calibration data to draw: ``source`` is a named corpus, a file, a hub dataset, or ``self``.

    Positional arguments follow the field order: ``CalibrationSpec("war_and_peace", 10, 128, 0)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = Field(None, json_schema_extra={"cli": "--calib"},
                               description="calibration text: war_and_peace, wikitext2, a .txt/.jsonl path, a hub "
                                           "dataset, or 'self' (text the model samples itself); default: "
                                           "war_and_peace when the data directory has it, else self")
    samples: int = Field(10, ge=1, json_schema_extra={"cli": "--calib-samples"},
                         description="random calibration windows")
    seq_len: int = Field(128, ge=2, json_schema_extra={"cli": "--calib-seq-len"},
                         description="tokens per calibration window (BOS is added in front)")
    seed: int = Field(0, description="random seed of the calibration windows")
    text_field: str = Field("text", description="text field of .jsonl/.json records")
    batch_size: int = Field(16, ge=1, json_schema_extra={"cli": "--score-batch-size"},
                            description="calibration samples per forward pass while scoring (scores do not "
                                        "depend on it)")

    def __init__(self, *args, **kwargs):
        kwargs.update(zip(("source", "samples", "seq_len", "seed", "text_field", "batch_size"), args))
        super().__init__(**kwargs)


@dataclass
class Calibration:
    """Model inputs (BOS prepended when the tokenizer has one) and the spec that made them."""
    input_ids: torch.Tensor
    spec: CalibrationSpec

    def to_json(self) -> dict:
        return self.spec.model_dump() | {"num_tokens": int(self.input_ids.numel())}


def build_calibration(tokenizer, spec: CalibrationSpec | None = None, model=None) -> Calibration:
    """Draw the calibration windows; with no source, War and Peace if found locally, else ``self``."""
    spec = spec or CalibrationSpec()
    source = spec.source
    if source is None:
        try:
            text = load_text(DEFAULT_CALIB_SOURCE)
            source = DEFAULT_CALIB_SOURCE
        except DataNotFoundError:
            source = "self"
        print(f"Calibration source: {source} (no --calib given)", flush=True)
        spec = spec.model_copy(update={"source": source})
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


def calibration_for(tokenizer, model=None, calibration=None, **spec_fields) -> Calibration:
    """A Calibration from whatever the caller has: a Calibration, a CalibrationSpec, a source name, or nothing
    (the default source), with ``spec_fields`` (samples, seq_len, seed, text_field) filling the spec."""
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, CalibrationSpec):
        spec = calibration.model_copy(update=spec_fields) if spec_fields else calibration
    else:
        spec = build(CalibrationSpec, {"source": calibration, **spec_fields}, where="calibration.")
    if tokenizer is None:
        raise DepthpruneError("calibration needs the tokenizer: pass it, or pass a model source string to load")
    return build_calibration(tokenizer, spec, model=model)
