"""Continued pretraining (CPT): every parameter trained on packed raw text, as in the paper's CPT recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from depthprune.data.tokens import check_seq_len
from depthprune.retrain.config import TrainConfig, check_output, make_accelerator
from depthprune.retrain.data import packed_text_dataset
from depthprune.retrain.engine import CausalLMLoss
from depthprune.retrain.output import cast_for_save, check_save_dtype
from depthprune.retrain.runner import check_seq_len_fits, load_for_training, train_and_export

CPT_TRAIN_DEFAULTS = dict(lr=1e-4, batch_size=32, micro_batch_size=4, schedule="cosine", min_lr_ratio=0.1,
                          weight_decay=0.1, betas=(0.9, 0.95), max_grad_norm=1.0)
"""AdamW (0.9, 0.95), weight decay 0.1, lr 1e-4, clipping at 1.0, warmup then cosine."""


@dataclass
class CptOptions:
    data: str = "c4_sample"
    seq_len: int = 1024
    """Model input length: BOS (when the tokenizer has one) + seq_len-1 text tokens."""
    text_field: str = "text"
    save_dtype: str = "auto"

    def validate(self) -> None:
        check_seq_len(self.seq_len)
        check_save_dtype(self.save_dtype)


def export_cpt(module: CausalLMLoss, tmp: Path, save_dtype: str) -> None:
    cast_for_save(module.lm, save_dtype).save_pretrained(tmp)


def run_cpt(model_src: str | None, cfg: TrainConfig, opts: CptOptions, dtype: str = "float32",
            cache_dir: str | None = None, callbacks: list | None = None) -> dict:
    """``depthprune retrain cpt``: all parameters, next-token loss on packed sequences of ``seq_len``."""
    cfg.validate()
    opts.validate()
    resume_from = check_output(cfg, model_src)
    acc = make_accelerator(cfg)
    lm = load_for_training(model_src, dtype, cache_dir)
    check_seq_len_fits(lm.model, opts.seq_len, "--seq-len")
    dataset = packed_text_dataset(opts.data, lm.tokenizer, opts.seq_len, opts.text_field)
    for p in lm.model.parameters():
        p.requires_grad_(True)

    def rebuild() -> CausalLMLoss:
        return CausalLMLoss(load_for_training(model_src, dtype, cache_dir).model)

    fingerprint = {"method": "cpt", "data": opts.data, "seq_len": opts.seq_len, "text_field": opts.text_field}
    info = {"method": "cpt", "cpt": asdict(opts), "data": opts.data}
    return train_and_export(
        "cpt", acc, CausalLMLoss(lm.model), lm.tokenizer, dataset, cfg, fingerprint, resume_from, model_src,
        lambda module, tmp: export_cpt(module, tmp, opts.save_dtype), rebuild, info, callbacks,
    )
