"""``retrain``: one call for every kind of retraining (LoRA, CPT), on a loaded model or a source."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from depthprune.core.io import remove_tree
from depthprune.core.options import build
from depthprune.errors import DepthpruneError
from depthprune.retraining.cpt import run_cpt
from depthprune.retraining.kd import run_kd
from depthprune.retraining.lora import run_lora
from depthprune.retraining.options import CptOptions, KdOptions, LoraOptions

KINDS = {"lora": (LoraOptions, run_lora), "cpt": (CptOptions, run_cpt), "kd": (KdOptions, run_kd)}


@dataclass
class RetrainResult:
    """The training summary (steps, tokens, loss, wall time), the run directory, and the trained model."""

    summary: dict
    output: Path | None
    model: object = None
    tokenizer: object = None
    history: list = field(default_factory=list)


def retrain(model=None, tokenizer=None, *, kind: str = "lora", output: str | None = None, callbacks=None,
            **options) -> RetrainResult:
    """Retrain ``model`` (a loaded model, trained in place, or a source to load) with ``kind`` ('lora', 'cpt',
    'kd': distillation from the unpruned teacher).

    Options are those of ``LoraOptions`` / ``CptOptions`` (``data``, ``max_steps``, ``max_tokens``, ``lr``,
    ``batch_size``, ...). With ``output`` the run directory gets the final model, ``retrain.json``, the training
    log and resume checkpoints, as ``depthprune retrain`` writes them; without it the run happens in a
    temporary directory and only the trained model comes back (LoRA merged into it).
    """
    if kind not in KINDS:
        raise DepthpruneError(f"unknown retraining kind {kind!r}; choose one of: {', '.join(KINDS)}")
    model_cls, runner = KINDS[kind]
    live = model is not None and not isinstance(model, (str, Path))
    source = None if live else (str(model) if model is not None else None)
    tmp = None if output else tempfile.mkdtemp(prefix="depthprune-retrain-")
    fields = dict(options) | {"model": source, "output": output or str(Path(tmp) / "run")}
    if (kind == "lora" or (kind == "kd" and options.get("lora"))) and not output:
        fields["merge"] = True
    opts = build(model_cls, fields)
    trained = {}

    def keep(module) -> None:
        trained["module"] = module

    try:
        summary = runner(opts, model if live else None, tokenizer if live else None, callbacks, on_final=keep)
    finally:
        if tmp:
            remove_tree(tmp)
    lm = trained.get("module")
    return RetrainResult(summary, Path(output) if output else None, getattr(lm, "lm", None), tokenizer)
