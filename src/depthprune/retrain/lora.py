"""LoRA retraining on Alpaca-format instructions (the paper's light retraining), with optional merge."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for
from depthprune.retrain.config import TrainConfig, check_output, make_accelerator
from depthprune.retrain.data import ALPACA_DEMO, instruction_dataset, load_instructions
from depthprune.retrain.engine import CausalLMLoss
from depthprune.retrain.output import cast_for_save, check_save_dtype
from depthprune.retrain.runner import check_seq_len_fits, load_for_training, train_and_export

ADAPTER_DIR = "adapter"

LORA_TRAIN_DEFAULTS = dict(lr=1e-4, batch_size=64, micro_batch_size=4, epochs=2, schedule="linear",
                           weight_decay=0.0, betas=(0.9, 0.999), max_grad_norm=1.0)
"""Paper / LLM-Pruner settings: lr 1e-4, effective batch 64, 2 epochs."""


@dataclass
class LoraOptions:
    data: str = ALPACA_DEMO
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None
    """Leaf module names; default: every projection of the blocks (from the architecture spec)."""
    max_len: int = 256
    train_on_inputs: bool = False
    merge: bool = False
    save_dtype: str = "auto"

    def validate(self) -> None:
        if self.rank < 1:
            raise DepthpruneError(f"--rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise DepthpruneError(f"--alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise DepthpruneError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if self.max_len < 2:
            raise DepthpruneError(f"--max-len must be >= 2, got {self.max_len}")
        if self.target_modules is not None and not [t for t in self.target_modules if t.strip()]:
            raise DepthpruneError("--target-modules is empty; give comma-separated names such as q_proj,v_proj")
        check_save_dtype(self.save_dtype)


def default_targets(model: nn.Module) -> list[str]:
    """Leaf names of the block projections (q, k, v, o, gate, up, down for LLaMA-like models)."""
    leaves = [p.rsplit(".", 1)[-1] for p in spec_for(model).projections]
    return list(dict.fromkeys(leaves))


def block_linear_leaves(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers inside the blocks: what ``--target-modules`` may name."""
    names = [n.rsplit(".", 1)[-1] for n, m in get_blocks(model).named_modules() if isinstance(m, nn.Linear)]
    return list(dict.fromkeys(names))


def resolve_targets(model: nn.Module, names: list[str] | None) -> list[str]:
    """``names`` checked against the model (every one must name a linear layer), or the spec's default."""
    if names is None:
        return default_targets(model)
    names = [n.strip() for n in names if n.strip()]
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    linear |= {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    bad = [n for n in names if n not in linear]
    if bad:
        raise DepthpruneError(
            f"--target-modules: {', '.join(bad)} not a linear layer of this {model.config.model_type} model; "
            f"the blocks have: {', '.join(block_linear_leaves(model))}"
        )
    return list(dict.fromkeys(names))


def apply_lora(model: nn.Module, opts: LoraOptions, targets: list[str]):
    """Wrap ``model`` with fresh LoRA adapters on ``targets``; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=opts.rank, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads a property transformers has deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


def lora_module(peft_model) -> CausalLMLoss:
    module = CausalLMLoss(peft_model.get_base_model())
    module.__dict__["peft_model"] = peft_model  # kept out of the module tree (no duplicate parameter names)
    return module


def export_lora(module: CausalLMLoss, tmp: Path, merge: bool, save_dtype: str) -> None:
    """Adapter files (in ``adapter/`` when merging) and, with ``merge``, a plain merged checkpoint."""
    peft_model = module.__dict__["peft_model"]
    if not merge:
        peft_model.save_pretrained(tmp)
        return
    peft_model.save_pretrained(tmp / ADAPTER_DIR)
    merged = cast_for_save(peft_model.merge_and_unload(), save_dtype)
    merged.save_pretrained(tmp)


def run_lora(model_src: str | None, cfg: TrainConfig, opts: LoraOptions, dtype: str = "float32",
             cache_dir: str | None = None, callbacks: list | None = None) -> dict:
    """``depthprune retrain lora``: LoRA on every block projection, trained on Alpaca-format data."""
    from accelerate.utils import set_seed

    cfg.validate()
    opts.validate()
    resume_from = check_output(cfg, model_src)
    records = load_instructions(opts.data)
    acc = make_accelerator(cfg)
    lm = load_for_training(model_src, dtype, cache_dir)
    targets = resolve_targets(lm.model, opts.target_modules)
    check_seq_len_fits(lm.model, opts.max_len, "--max-len")
    dataset = instruction_dataset(records, lm.tokenizer, opts.max_len, opts.train_on_inputs)

    def build(model) -> CausalLMLoss:
        set_seed(cfg.seed)  # the same adapter initialisation on every process and every run
        return lora_module(apply_lora(model, opts, targets))

    def rebuild() -> CausalLMLoss:
        return build(load_for_training(model_src, dtype, cache_dir).model)

    fingerprint = {"method": "lora", "data": opts.data, "max_len": opts.max_len,
                   "train_on_inputs": opts.train_on_inputs, "rank": opts.rank, "alpha": opts.alpha,
                   "targets": targets}
    info = {"method": "lora", "lora": asdict(opts) | {"target_modules": targets}, "data": opts.data}
    return train_and_export(
        "lora", acc, build(lm.model), lm.tokenizer, dataset, cfg, fingerprint, resume_from, model_src,
        lambda module, tmp: export_lora(module, tmp, opts.merge, opts.save_dtype), rebuild, info, callbacks,
    )
