"""``depthprune retrain lora|cpt|kd``: retrain a pruned model (LoRA, continued pretraining, CPT then LoRA, or
distillation from the unpruned model).

Runs as is on a CPU or one GPU; under ``accelerate launch`` (see configs/accelerate/) on many GPUs.
"""

from __future__ import annotations

import argparse

from depthprune.core.options import add_options, given_options, parse_options
from depthprune.errors import DepthpruneError
from depthprune.retraining.run import KINDS

HELP = {"lora": "LoRA on every block projection, on Alpaca-format instructions",
        "cpt": "continued pretraining of all parameters on raw text",
        "kd": "logit distillation from the unpruned teacher on raw text (all weights, or --lora)"}


def register(sub) -> None:
    p = sub.add_parser("retrain", help="retrain a pruned model: LoRA, continued pretraining (CPT), or CPT then LoRA")
    rs = p.add_subparsers(dest="retrain_command", required=True)
    for kind, (model_cls, _) in KINDS.items():
        k = rs.add_parser(kind, help=HELP.get(kind, kind), description=model_cls.__doc__)
        add_options(k, model_cls)
        k.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)  # old spelling of --device cpu
        k.set_defaults(func=run, kind=kind)


def run(args) -> int:
    model_cls, runner = KINDS[args.kind]
    fixed = {"device": "cpu"} if args.cpu and "device" not in given_options(args, model_cls) else {}
    opts = parse_options(model_cls, args, **fixed)
    if not opts.output:
        raise DepthpruneError("--output is required: the run directory for the model, its log and checkpoints")
    runner(opts)
    return 0
