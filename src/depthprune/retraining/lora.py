"""LoRA retraining on Alpaca-format instructions (the paper's light retraining), with optional merge."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch.nn as nn
from accelerate.utils import set_seed

from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks, spec_for
from depthprune.retraining.config import check_output, make_accelerator
from depthprune.retraining.data import instruction_dataset, load_instructions
from depthprune.retraining.engine import CausalLMLoss
from depthprune.retraining.options import LoraOptions
from depthprune.retraining.output import cast_for_save
from depthprune.retraining.runner import check_seq_len_fits, live_or_loaded, load_for_training, train_and_export

ADAPTER_DIR = "adapter"


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
    from peft import LoraConfig, get_peft_model  # heavy: imported when LoRA is used

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


def run_lora(opts: LoraOptions, model=None, tokenizer=None, callbacks: list | None = None,
             on_final=None) -> dict:
    """LoRA on every block projection, trained on Alpaca-format data; ``model`` (loaded) or ``opts.model``."""
    resume_from = check_output(opts, opts.model)
    records = load_instructions(opts.data)
    acc = make_accelerator(opts)
    lm = live_or_loaded(opts, model, tokenizer)
    targets = resolve_targets(lm.model, opts.target_modules)
    check_seq_len_fits(lm.model, opts.seq_len, "--max-len")
    dataset = instruction_dataset(records, lm.tokenizer, opts.seq_len, opts.train_on_inputs)

    def build(model) -> CausalLMLoss:
        set_seed(opts.seed)  # the same adapter initialisation on every process and every run
        return lora_module(apply_lora(model, opts, targets))

    def rebuild() -> CausalLMLoss:
        return build(load_for_training(opts.model, opts.dtype, opts.cache_dir).model)

    fingerprint = {"method": "lora", "data": opts.data, "max_len": opts.seq_len,
                   "train_on_inputs": opts.train_on_inputs, "rank": opts.rank, "alpha": opts.alpha,
                   "targets": targets}
    info = {"method": "lora", "lora": opts.model_dump() | {"target_modules": targets}, "data": opts.data}
    return train_and_export(
        "lora", acc, build(lm.model), lm.tokenizer, dataset, opts, fingerprint, resume_from, opts.model,
        lambda module, tmp: export_lora(module, tmp, opts.merge, opts.save_dtype), rebuild, info, callbacks,
        on_final,
    )
