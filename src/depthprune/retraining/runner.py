"""What LoRA and CPT share around the loop: loading, a setup summary, training, export, the final summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from depthprune.core.io import remove_tree
from depthprune.errors import DepthpruneError
from depthprune.models.loading import LoadedModel, load_model, model_source
from depthprune.retraining.checkpoint import checkpoint_root
from depthprune.retraining.engine import CausalLMLoss, Trainer
from depthprune.retraining.options import TrainOptions
from depthprune.retraining.output import prepare_for_export, write_final


def load_for_training(model_src: str | None, dtype: str, cache_dir: str | None):
    """Load on the CPU in ``dtype``; Accelerate moves the model to this process's device."""
    if dtype == "auto":
        dtype = "float32"
    return load_model(model_src, dtype=dtype, device="cpu", cache_dir=cache_dir)


def live_or_loaded(opts, model=None, tokenizer=None):
    """The model to train: the live one given (trained in place), else ``opts.model`` loaded for training."""
    if model is None:
        return load_for_training(opts.model, opts.dtype, opts.cache_dir)
    if tokenizer is None:
        raise DepthpruneError("retraining a live model needs its tokenizer too")
    return LoadedModel(model, tokenizer, model_source(model))


def check_seq_len_fits(model, length: int, flag: str) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and length > limit:
        raise DepthpruneError(f"{flag} {length} exceeds the model's max_position_embeddings ({limit})")


def count_trainable(module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def train_and_export(method: str, acc, module: CausalLMLoss, tokenizer, dataset, cfg: TrainOptions,
                     fingerprint: dict, resume_from: Path | None, model_src: str | None,
                     export: Callable[[CausalLMLoss, Path], None], rebuild: Callable[[], CausalLMLoss],
                     info: dict, callbacks: list | None = None, on_final: Callable | None = None) -> dict:
    """Train ``module`` on ``dataset`` and write the result into ``cfg.output``; returns the summary."""
    trainer = Trainer(acc, module, dataset, cfg, fingerprint, resume_from)
    trainer.callbacks.extend(callbacks or [])
    trainable, total = count_trainable(module)
    if acc.is_local_main_process:
        print(f"{method}: {len(dataset):,} {dataset.kind} examples, {trainer.total} steps of {cfg.batch_size} "
              f"({cfg.micro_batch_size} x {acc.num_processes} process(es) x {trainer.accum} accumulation), "
              f"{trainable:,} of {total:,} parameters trained, device {acc.device}, "
              f"mixed precision {acc.mixed_precision}", flush=True)
    result = trainer.fit()
    final = trainer.final_module(rebuild)
    summary = {"method": method, "source_model": model_src or model_source(module.lm), "output": str(cfg.output),
               "trainable_params": trainable, "total_params": total, "num_processes": acc.num_processes,
               "mixed_precision": str(acc.mixed_precision)} | result.to_json()
    if final is not None:
        prepare_for_export(final.lm)
        payload = info | {"train": cfg.model_dump(), "result": summary}

        def writer(tmp: Path) -> None:
            export(final, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

        write_final(cfg.output, writer, model_src, payload)
        if cfg.keep_checkpoints == 0:  # finished: resume checkpoints have served their purpose
            remove_tree(checkpoint_root(cfg.output))
        if on_final is not None:
            on_final(final)
        tps = result.tokens_seen / result.wall_s if result.wall_s > 0 else float("nan")
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        print(f"Done: {result.steps} steps ({result.epochs:.2f} epochs), {result.tokens_seen:,} tokens seen in "
              f"{result.wall_s:.1f}s ({tps:,.0f} tokens/s), final loss {loss}; saved to {cfg.output}", flush=True)
    acc.wait_for_everyone()
    return summary
