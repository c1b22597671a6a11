"""``depthprune retrain lora|cpt|kd``: retrain a pruned model (LoRA, continued pretraining, distillation).

Runs as is on a CPU or one GPU; under ``accelerate launch`` (see configs/accelerate/) on many GPUs.
"""

from __future__ import annotations

import argparse


def _train_args(p: argparse.ArgumentParser, d: dict) -> None:
    p.add_argument("--model", default=None,
                   help="local HF directory (e.g. a 'depthprune prune' or 'retrain cpt' output), .gguf, hub id, "
                        "or 'gemma-3-270m' (default)")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype while training (default float32; mixed precision handles the compute)")
    p.add_argument("--cache-dir", default=None, help="where the embedded model's HF checkpoint is cached")
    p.add_argument("--output", required=True, help="run directory: final model, train_log.jsonl, checkpoints/")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="global batch in sequences, reached by gradient accumulation (default %(default)s)")
    g.add_argument("--micro-batch-size", type=int, default=d["micro_batch_size"],
                   help="sequences per forward pass per process (default %(default)s)")
    g.add_argument("--epochs", type=int, default=d.get("epochs"),
                   help="passes over the data (default %(default)s); --max-steps/--max-tokens replace it")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    g.add_argument("--max-tokens", type=int, default=None, help="token budget: stop once this many were seen")
    g.add_argument("--schedule", default=d["schedule"], choices=["cosine", "linear", "constant"],
                   help="after warmup (default %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=0.03, help="warmup steps as a fraction of all steps")
    g.add_argument("--warmup-steps", type=int, default=None, help="warmup steps (overrides --warmup-ratio)")
    g.add_argument("--min-lr-ratio", type=float, default=d.get("min_lr_ratio", 0.0),
                   help="cosine floor as a fraction of --lr (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW (default %(default)s)")
    g.add_argument("--betas", type=float, nargs=2, default=list(d["betas"]), metavar=("B1", "B2"),
                   help="AdamW betas (default %(default)s)")
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"],
                   help="gradient clipping, 0 to disable (default %(default)s)")
    g.add_argument("--seed", type=int, default=0)
    h = p.add_argument_group("run")
    h.add_argument("--save-every", type=int, default=200,
                   help="checkpoint every N steps (and at the end); 0: no checkpoints (default %(default)s)")
    h.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept (default %(default)s)")
    h.add_argument("--log-every", type=int, default=10, help="steps per train_log.jsonl record (default %(default)s)")
    h.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                   help="auto: the accelerate launch setting, else bf16 on GPUs that support it, else no")
    h.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    h.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    h.add_argument("--save-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the saved model (auto: the training dtype)")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub) -> None:
    from depthprune.retrain.cpt import CPT_TRAIN_DEFAULTS
    from depthprune.retrain.lora import LORA_TRAIN_DEFAULTS

    p = sub.add_parser("retrain", help="retrain a pruned model: LoRA, continued pretraining (CPT), CPT then LoRA, or "
                                             "logit distillation (KD)")
    rs = p.add_subparsers(dest="retrain_command", required=True)

    lo = rs.add_parser("lora", help="LoRA on every block projection, on Alpaca-format instructions")
    _train_args(lo, LORA_TRAIN_DEFAULTS)
    lo.add_argument("--data", default="alpaca_demo",
                    help="alpaca_demo (the data directory's instruct/alpaca_en_demo.json), an Alpaca-format "
                         ".json/.jsonl file (instruction, input, output), or a hub dataset id")
    lo.add_argument("--rank", type=int, default=8, help="LoRA rank (default %(default)s)")
    lo.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default %(default)s)")
    lo.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default %(default)s)")
    lo.add_argument("--target-modules", default=None,
                    help="comma-separated module names (default: every projection of the blocks, e.g. "
                         "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    lo.add_argument("--max-len", type=int, default=256, help="tokens per example, prompt included (default 256)")
    lo.add_argument("--train-on-inputs", action="store_true", help="also take the loss on the prompt tokens")
    lo.add_argument("--merge", action="store_true",
                    help="write a plain merged checkpoint (loads with transformers); the adapter goes to adapter/")
    lo.set_defaults(func=run_lora_cmd)

    cp = rs.add_parser("cpt", help="continued pretraining of all parameters on raw text")
    _train_args(cp, CPT_TRAIN_DEFAULTS)
    cp.add_argument("--data", default="c4_sample",
                    help="c4_sample, wiki_sample, wikitext2, war_and_peace, a .txt/.jsonl file, or a hub dataset id")
    cp.add_argument("--text-field", default="text", help="text field of .jsonl/.json records and hub datasets")
    cp.add_argument("--seq-len", type=int, default=1024,
                    help="tokens per packed sequence, BOS included (default %(default)s)")
    cp.set_defaults(func=run_cpt_cmd)
    register_kd(rs)


def train_config(args):
    from depthprune.retrain.config import TrainConfig

    return TrainConfig(
        output=args.output, lr=args.lr, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        epochs=args.epochs, max_steps=args.max_steps, max_tokens=args.max_tokens, schedule=args.schedule,
        warmup_ratio=args.warmup_ratio, warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay, betas=tuple(args.betas), max_grad_norm=args.max_grad_norm, seed=args.seed,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        resume=args.resume, overwrite=args.overwrite, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, cpu=args.cpu, progress=not args.no_progress,
    )


def run_lora_cmd(args) -> int:
    from depthprune.retrain.lora import LoraOptions, run_lora

    targets = args.target_modules.split(",") if args.target_modules is not None else None
    opts = LoraOptions(data=args.data, rank=args.rank, alpha=args.alpha, dropout=args.lora_dropout,
                       target_modules=targets, max_len=args.max_len, train_on_inputs=args.train_on_inputs,
                       merge=args.merge, save_dtype=args.save_dtype)
    run_lora(args.model, train_config(args), opts, dtype=args.dtype, cache_dir=args.cache_dir)
    return 0


def run_cpt_cmd(args) -> int:
    from depthprune.retrain.cpt import CptOptions, run_cpt

    opts = CptOptions(data=args.data, seq_len=args.seq_len, text_field=args.text_field, save_dtype=args.save_dtype)
    run_cpt(args.model, train_config(args), opts, dtype=args.dtype, cache_dir=args.cache_dir)
    return 0


def register_kd(rs) -> None:
    from depthprune.retrain.kd import KD_TRAIN_DEFAULTS

    kd = rs.add_parser("kd", help="logit distillation from the unpruned teacher on raw text (all parameters, "
                                  "or LoRA with --lora)")
    _train_args(kd, KD_TRAIN_DEFAULTS)
    kd.add_argument("--data", default="c4_sample",
                    help="c4_sample, wiki_sample, wikitext2, war_and_peace, a .txt/.jsonl file, or a hub dataset id")
    kd.add_argument("--text-field", default="text", help="text field of .jsonl/.json records and hub datasets")
    kd.add_argument("--seq-len", type=int, default=1024,
                    help="tokens per packed sequence, BOS included (default %(default)s)")
    t = kd.add_argument_group("distillation")
    t.add_argument("--teacher", default=None,
                   help="teacher model (same tokenizer); default: the model --model was pruned from (its "
                        "pruning.json)")
    t.add_argument("--teacher-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="teacher weights dtype (auto: the same as --dtype)")
    t.add_argument("--teacher-device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the teacher runs (auto: the training device)")
    t.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature T of both models; the KL is scaled by T^2 (default %(default)s)")
    t.add_argument("--ce-weight", type=float, default=0.0,
                   help="loss = (1 - w) * T^2 * KL(teacher || student) + w * next-token CE; 0: KL alone "
                        "(default %(default)s)")
    lo = kd.add_argument_group("LoRA (with --lora)")
    lo.add_argument("--lora", action="store_true", help="train LoRA adapters instead of every parameter")
    lo.add_argument("--rank", type=int, default=8, help="LoRA rank (default %(default)s)")
    lo.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default %(default)s)")
    lo.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default %(default)s)")
    lo.add_argument("--target-modules", default=None,
                    help="comma-separated module names (default: every projection of the blocks)")
    lo.add_argument("--merge", action="store_true",
                    help="write a plain merged checkpoint (loads with transformers); the adapter goes to adapter/")
    kd.set_defaults(func=run_kd_cmd)


def run_kd_cmd(args) -> int:
    from depthprune.retrain.kd import KdOptions, run_kd

    targets = args.target_modules.split(",") if args.target_modules is not None else None
    opts = KdOptions(data=args.data, seq_len=args.seq_len, text_field=args.text_field, teacher=args.teacher,
                     teacher_dtype=args.teacher_dtype, teacher_device=args.teacher_device,
                     temperature=args.temperature, ce_weight=args.ce_weight, lora=args.lora, rank=args.rank,
                     alpha=args.alpha, dropout=args.lora_dropout, target_modules=targets, merge=args.merge,
                     save_dtype=args.save_dtype)
    run_kd(args.model, train_config(args), opts, dtype=args.dtype, cache_dir=args.cache_dir)
    return 0
