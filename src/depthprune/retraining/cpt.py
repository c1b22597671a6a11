"""Continued pretraining (CPT): every parameter trained on packed raw text, as in the paper's CPT recipe."""

from __future__ import annotations

from pathlib import Path

import torch

from depthprune.retraining.config import check_output, make_accelerator
from depthprune.retraining.data import packed_text_dataset
from depthprune.retraining.engine import CausalLMLoss
from depthprune.retraining.options import DEFAULT_CPT_SEQ_LEN, CptOptions
from depthprune.retraining.output import cast_for_save
from depthprune.retraining.runner import check_seq_len_fits, live_or_loaded, load_for_training, train_and_export


def cpt_seq_len(model, opts: CptOptions) -> int:
    """``--seq-len``, or by default 1024 cut to the model's ``max_position_embeddings``."""
    if opts.seq_len is not None:
        return opts.seq_len
    limit = getattr(model.config, "max_position_embeddings", None) or DEFAULT_CPT_SEQ_LEN
    return min(DEFAULT_CPT_SEQ_LEN, limit)


def reinit(model, seed: int) -> None:
    """Every weight drawn afresh by the model's own initialiser (same architecture, no pruned knowledge)."""
    torch.manual_seed(seed)
    for obj in [*model.modules(), *model.parameters()]:  # from_pretrained marks what it loaded as initialised
        if getattr(obj, "_is_hf_initialized", False):
            obj._is_hf_initialized = False
    model.init_weights()


def export_cpt(module: CausalLMLoss, tmp: Path, save_dtype: str) -> None:
    cast_for_save(module.lm, save_dtype).save_pretrained(tmp)


def run_cpt(opts: CptOptions, model=None, tokenizer=None, callbacks: list | None = None, on_final=None) -> dict:
    """All parameters, next-token loss on packed sequences; ``model`` (loaded) or ``opts.model``."""
    resume_from = check_output(opts, opts.model)
    acc = make_accelerator(opts)
    lm = live_or_loaded(opts, model, tokenizer)
    seq_len = cpt_seq_len(lm.model, opts)
    check_seq_len_fits(lm.model, seq_len, "--seq-len")
    dataset = packed_text_dataset(opts.data, lm.tokenizer, seq_len, opts.text_field)
    if opts.random_init:
        reinit(lm.model, opts.seed)
    for p in lm.model.parameters():
        p.requires_grad_(True)
    if opts.freeze_embeddings:
        lm.model.get_input_embeddings().weight.requires_grad_(False)

    def rebuild() -> CausalLMLoss:
        return CausalLMLoss(load_for_training(opts.model, opts.dtype, opts.cache_dir).model)

    fingerprint = {"method": "cpt", "data": opts.data, "seq_len": seq_len, "text_field": opts.text_field,
                   "freeze_embeddings": opts.freeze_embeddings, "random_init": opts.random_init}
    info = {"method": "cpt", "cpt": opts.model_dump() | {"seq_len": seq_len}, "data": opts.data}
    return train_and_export(
        "cpt", acc, CausalLMLoss(lm.model), lm.tokenizer, dataset, opts, fingerprint, resume_from, opts.model,
        lambda module, tmp: export_cpt(module, tmp, opts.save_dtype), rebuild, info, callbacks,
        on_final,
    )
