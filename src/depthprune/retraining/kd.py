"""Logit distillation (KD): the pruned student learns the unpruned teacher's next-token distributions.

Trained like CPT (packed raw text, all parameters) or, with ``lora``, through LoRA adapters; the loss is
:func:`depthprune.core.kd_loss.distill_loss` (forward KL at temperature T, scaled by T**2, optionally
mixed with next-token cross-entropy), computed over vocabulary slices so neither model's full logits exist.

The teacher is frozen, in ``eval()`` mode, run under ``no_grad`` and kept out of the trained module's
parameters (it sits in the module's ``__dict__``), so the optimizer, DDP, checkpoints and the exported model
never see it. It defaults to the model the student was pruned from (``pruning.json``'s source) and must
share the student's vocabulary and tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from accelerate.utils import set_seed

from depthprune.core.kd_loss import distill_loss, final_hidden_states
from depthprune.errors import DepthpruneError
from depthprune.pruning.save import PRUNING_FILE
from depthprune.retraining.config import check_output, make_accelerator
from depthprune.retraining.cpt import cpt_seq_len, export_cpt
from depthprune.retraining.data import packed_text_dataset
from depthprune.retraining.engine import CausalLMLoss
from depthprune.retraining.lora import apply_lora, export_lora, resolve_targets
from depthprune.retraining.options import KdOptions
from depthprune.retraining.output import source_dir
from depthprune.retraining.runner import check_seq_len_fits, live_or_loaded, load_for_training, train_and_export

TOKENIZER_PROBES = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Prince Andrew said: \"1,234.5 — naïve café, 東京\"\n\tend",
    "def f(x):\n    return x ** 2  # comment",
)
"""Texts both tokenizers must encode to the same ids."""


class DistillLoss(CausalLMLoss):
    """Wraps the student so one forward returns (summed distillation loss, predicted tokens).

    The teacher is stored outside the module tree: ``parameters()``, ``state_dict()``, ``.to()``, ``.train()``
    and DDP see the student alone.
    """

    def __init__(self, lm: nn.Module, teacher: nn.Module, temperature: float = 1.0, ce_weight: float = 0.0):
        super().__init__(lm)
        self.__dict__["teacher"] = teacher
        self.__dict__["_teacher_head"] = {}
        self.temperature, self.ce_weight = float(temperature), float(ce_weight)

    def _teacher_head_on(self, device: torch.device) -> tuple | None:
        """The teacher's head weight/bias on ``device`` (a copy kept once when the teacher lives elsewhere)."""
        head = self.teacher.get_output_embeddings()
        if not isinstance(head, nn.Linear) or head.weight.device == device:
            return None
        cache = self.__dict__["_teacher_head"]
        if device not in cache:
            bias = head.bias.detach().to(device) if head.bias is not None else None
            cache[device] = (head.weight.detach().to(device), bias)
        return cache[device]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        hidden = final_hidden_states(self.lm, input_ids, attention_mask)
        teacher = self.teacher
        tdev = teacher.get_input_embeddings().weight.device
        with torch.no_grad():
            mask = attention_mask.to(tdev) if attention_mask is not None else None
            t_hidden = final_hidden_states(teacher, input_ids.to(tdev), mask)
        return distill_loss(self.lm, teacher, hidden, t_hidden, labels, self.temperature, self.ce_weight,
                            teacher_head=self._teacher_head_on(hidden.device))


def default_teacher(model_src: str | None) -> str:
    """The model ``model_src`` was pruned from, read from its ``pruning.json``; a clear error when unknown."""
    src = source_dir(model_src)
    record = (src / PRUNING_FILE) if src is not None else None
    if record is None or not record.is_file():
        raise DepthpruneError(
            f"--teacher not given and --model {model_src or 'gemma-3-270m'} has no {PRUNING_FILE} naming the model "
            "it was pruned from; pass --teacher MODEL (the unpruned model, same tokenizer)"
        )
    info = json.loads(record.read_text())
    path = info.get("source_model_path")
    if path and Path(path).exists():
        return path
    name = info.get("source_model")
    if not name:
        raise DepthpruneError(f"--teacher not given and {record} records no source_model; pass --teacher MODEL")
    return name


def _encodings(tokenizer) -> list[list[int]]:
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TOKENIZER_PROBES]


def check_same_vocabulary(student_lm, teacher_lm, teacher_src: str) -> None:
    """Refuse a teacher whose vocabulary or tokenizer differs from the student's."""
    vs = student_lm.model.get_output_embeddings().weight.shape[0]
    vt = teacher_lm.model.get_output_embeddings().weight.shape[0]
    hint = ("distillation matches next-token distributions token by token, so the teacher must use the "
            "student's tokenizer; pass --teacher with the model the student was pruned from")
    if vs != vt:
        raise DepthpruneError(f"--teacher {teacher_src}: its vocabulary has {vt:,} tokens, the student's "
                              f"{vs:,}; {hint}")
    for text, a, b in zip(TOKENIZER_PROBES, _encodings(student_lm.tokenizer), _encodings(teacher_lm.tokenizer)):
        if a != b:
            raise DepthpruneError(f"--teacher {teacher_src}: its tokenizer encodes {text!r} differently from the "
                                  f"student's ({len(b)} vs {len(a)} tokens); {hint}")


def load_teacher(teacher_src: str, opts: KdOptions, train_dtype: str, device, cache_dir: str | None):
    """The frozen teacher in eval mode, on the training device (or ``--teacher-device``)."""
    dtype = train_dtype if opts.teacher_dtype == "auto" else opts.teacher_dtype
    teacher = load_for_training(teacher_src, dtype, cache_dir)
    if opts.teacher_device == "cuda" and not torch.cuda.is_available():
        raise DepthpruneError("--teacher-device cuda was asked for but no CUDA device is available")
    target = device if opts.teacher_device == "auto" else torch.device(opts.teacher_device)
    teacher.model.requires_grad_(False).eval().to(target)
    return teacher


def run_kd(opts: KdOptions, model=None, tokenizer=None, callbacks: list | None = None, on_final=None) -> dict:
    """Distil the teacher into the (pruned) model on packed sequences; ``model`` (loaded) or ``opts.model``."""
    resume_from = check_output(opts, opts.model)
    teacher_src = opts.teacher or default_teacher(opts.model)
    lm = live_or_loaded(opts, model, tokenizer)
    seq_len = cpt_seq_len(lm.model, opts)
    check_seq_len_fits(lm.model, seq_len, "--seq-len")
    acc = make_accelerator(opts)
    train_dtype = "float32" if opts.dtype == "auto" else opts.dtype
    teacher = load_teacher(teacher_src, opts, train_dtype, acc.device, opts.cache_dir)
    check_same_vocabulary(lm, teacher, teacher_src)
    check_seq_len_fits(teacher.model, seq_len, "--seq-len (for the teacher)")
    dataset = packed_text_dataset(opts.data, lm.tokenizer, seq_len, opts.text_field)
    targets = resolve_targets(lm.model, opts.target_modules) if opts.lora else None

    def build(model) -> DistillLoss:
        if not opts.lora:
            for p in model.parameters():
                p.requires_grad_(True)
            return DistillLoss(model, teacher.model, opts.temperature, opts.ce_weight)
        set_seed(opts.seed)  # the same adapter initialisation on every process and every run
        peft_model = apply_lora(model, opts, targets)
        module = DistillLoss(peft_model.get_base_model(), teacher.model, opts.temperature, opts.ce_weight)
        module.__dict__["peft_model"] = peft_model
        return module

    def rebuild() -> DistillLoss:
        return build(load_for_training(opts.model, opts.dtype, opts.cache_dir).model)

    def export(module: DistillLoss, tmp: Path) -> None:
        if opts.lora:
            export_lora(module, tmp, opts.merge, opts.save_dtype)
        else:
            export_cpt(module, tmp, opts.save_dtype)

    method = "kd-lora" if opts.lora else "kd"
    fingerprint = {"method": method, "data": opts.data, "seq_len": seq_len, "text_field": opts.text_field,
                   "teacher": teacher_src, "teacher_dtype": opts.teacher_dtype, "temperature": opts.temperature,
                   "ce_weight": opts.ce_weight}
    if opts.lora:
        fingerprint |= {"rank": opts.rank, "alpha": opts.alpha, "targets": targets}
    kd = opts.model_dump() | {"seq_len": seq_len} | ({"target_modules": targets} if opts.lora else {})
    head = teacher.model.get_output_embeddings().weight
    info = {"method": method, "kd": kd, "data": opts.data,
            "loss": "(1 - ce_weight) * T^2 * KL(teacher || student) + ce_weight * CE, per predicted token",
            "teacher": {"source": teacher_src, "from": "--teacher" if opts.teacher else PRUNING_FILE,
                        "dtype": str(head.dtype).removeprefix("torch."), "device": str(head.device),
                        "vocab_size": int(head.shape[0]),
                        "num_params": sum(p.numel() for p in teacher.model.parameters())}}
    return train_and_export(method, acc, build(lm.model), lm.tokenizer, dataset, opts, fingerprint, resume_from,
                            opts.model, export, rebuild, info, callbacks, on_final)
