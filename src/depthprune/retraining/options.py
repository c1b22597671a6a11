"""Retraining options, defined once per kind: the Python API, ``depthprune retrain`` and the YAML read them.

Shared optimisation, schedule, checkpoint and hardware settings are ``TrainOptions``; each kind (LoRA, CPT) is a
subclass that adds its own settings and overrides the defaults the paper uses for it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from depthprune.core.options import FieldProblems, Options
from depthprune.models.options import Dtype

SaveDtype = Literal["auto", "float32", "bfloat16", "float16"]


class TrainOptions(Options):
    """Optimisation, schedule, checkpointing and hardware settings every kind of retraining shares."""

    model: str | None = Field(None, json_schema_extra={"yaml": False},
                              description="local HF directory (e.g. a 'depthprune prune' output), .gguf, hub id, "
                                          "or 'gemma-3-270m' (default)")
    output: str | None = Field(None, json_schema_extra={"yaml": False},
                               description="run directory: final model, train_log.jsonl, checkpoints/")
    overwrite: bool = Field(False, json_schema_extra={"yaml": False}, description="replace a non-empty --output")
    resume: bool = Field(False, json_schema_extra={"yaml": False},
                         description="continue from the last checkpoint in --output")
    dtype: Dtype = Field("float32", json_schema_extra={"yaml": False},
                         description="weights dtype while training (mixed precision handles the compute)")
    cache_dir: str | None = Field(None, json_schema_extra={"yaml": False},
                                  description="where the embedded model's HF checkpoint is cached")
    data: str = Field("c4_sample", description="training data")
    seq_len: int = Field(1024, ge=2, description="tokens per training example, BOS included")
    lr: float = Field(1e-4, gt=0, description="peak learning rate")
    batch_size: int = Field(32, ge=1, description="global batch in sequences, reached by gradient accumulation")
    micro_batch_size: int = Field(4, ge=1, description="sequences per forward pass per process")
    epochs: int | None = Field(None, ge=1, description="passes over the data (default 1); --max-steps/--max-tokens "
                                                       "replace it")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_tokens: int | None = Field(None, ge=1, description="token budget: stop once this many were seen")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning rate after warmup")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="warmup steps as a fraction of all steps")
    warmup_steps: int | None = Field(None, ge=0, description="warmup steps (overrides --warmup-ratio)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of --lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, json_schema_extra={"cli": False}, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping, 0 to disable")
    seed: int = Field(0, description="seed of the data order and the adapters' initialisation")
    save_every: int = Field(100, ge=0, description="resume checkpoint every N steps (0: none; Ctrl-C still saves)")
    keep_checkpoints: int = Field(0, ge=0, description="0: resume checkpoints are kept only while the run is "
                                                       "unfinished (the newest one); N: keep the newest N, also "
                                                       "after the end")
    log_every: int = Field(10, ge=1, description="steps per train_log.jsonl record")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: the accelerate launch setting, else bf16 on GPUs that support it, else no")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train (several GPUs: launch "
                                                                        "with accelerate, see the README)")
    save_dtype: SaveDtype = Field("auto", description="dtype of the saved model (auto: the training dtype)")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("lr")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"must be two numbers in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _run(self) -> TrainOptions:
        if self.resume and self.overwrite:
            raise FieldProblems([(("resume",), "continues the run in --output; --overwrite would delete it: "
                                               "pick one")])
        if self.micro_batch_size > self.batch_size:
            self.__dict__["micro_batch_size"] = self.batch_size
        return self

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"


class LoraOptions(TrainOptions):
    """LoRA adapters on every block projection, on Alpaca-format instructions (the paper's light retraining)."""

    data: str = Field("alpaca_demo", description="alpaca_demo (the data directory's instruct/alpaca_en_demo.json), "
                                                 "an Alpaca-format .json/.jsonl file, or a hub dataset id")
    seq_len: int = Field(256, ge=2, json_schema_extra={"cli": "--max-len"},
                         description="tokens per example, prompt included")
    batch_size: int = Field(64, ge=1, description="global batch in examples, reached by gradient accumulation")
    epochs: int | None = Field(2, ge=1, description="passes over the data; --max-steps/--max-tokens replace it")
    schedule: Literal["cosine", "linear", "constant"] = Field("linear", description="learning rate after warmup")
    rank: int = Field(8, ge=1, description="LoRA rank")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha")
    dropout: float = Field(0.05, ge=0, lt=1, json_schema_extra={"cli": "--lora-dropout"}, description="LoRA dropout")
    target_modules: list[str] | None = Field(None, description="module names (default: every projection of the "
                                                               "blocks, from the architecture spec)")
    train_on_inputs: bool = Field(False, description="also take the loss on the prompt tokens")
    merge: bool = Field(False, description="write a plain merged checkpoint (loads with transformers); the "
                                           "adapter goes to adapter/")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v):
        if v is not None and not [t for t in v if t.strip()]:
            raise ValueError("is empty; give comma-separated names such as q_proj,v_proj")
        return v


class CptOptions(TrainOptions):
    """Continued pretraining of every parameter on packed raw text (the paper's CPT recipe)."""

    data: str = Field("c4_sample", description="c4_sample, wiki_sample, wikitext2, war_and_peace, a .txt/.jsonl "
                                               "file, or a hub dataset id")
    seq_len: int | None = Field(None, ge=2, description="tokens per packed sequence, BOS included (default: 1024, "
                                                        "or the model's max_position_embeddings when smaller)")
    text_field: str = Field("text", description="text field of .jsonl/.json records and hub datasets")
    freeze_embeddings: bool = Field(False, description="keep the input embeddings (and a head tied to them) "
                                                       "frozen: no gradient or optimizer state for them (on "
                                                       "Gemma 3 270M, 63%% of the parameters)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of --lr")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    random_init: bool = Field(False, description="train the same architecture from random weights (the paper's "
                                                 "Figure 5 baseline: pruned initialisation vs random)")


DEFAULT_CPT_SEQ_LEN = 1024


class KdOptions(CptOptions):
    """Logit distillation from the unpruned teacher (forward KL at temperature T), on CPT's packed raw text;
    full weights by default, or LoRA adapters with ``lora``."""

    teacher: str | None = Field(None, description="the teacher (default: the model the student was pruned from, "
                                                  "read from its pruning.json); same tokenizer as the student")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="teacher weights dtype (auto: the student's training dtype)")
    teacher_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the teacher runs (auto: the training device)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of both models (KL scaled by T^2)")
    ce_weight: float = Field(0.0, ge=0, le=1, description="loss = (1 - w) * T^2 * KL + w * next-token CE "
                                                          "(0: KL alone, Minitron's best)")
    lora: bool = Field(False, description="train LoRA adapters instead of all weights")
    rank: int = Field(8, ge=1, description="LoRA rank (with --lora)")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (with --lora)")
    dropout: float = Field(0.05, ge=0, lt=1, json_schema_extra={"cli": "--lora-dropout"},
                           description="LoRA dropout (with --lora)")
    target_modules: list[str] | None = Field(None, description="LoRA target modules (default: every projection)")
    merge: bool = Field(False, description="with --lora: write a plain merged checkpoint (adapter in adapter/)")

    @model_validator(mode="after")
    def _lora_only(self) -> KdOptions:
        if not self.lora:
            given = [f for f in ("rank", "alpha", "dropout", "target_modules", "merge") if f in self.model_fields_set
                     and (f != "merge" or self.merge)]
            if given:
                raise FieldProblems([((f,), "applies with lora: true (--lora) only") for f in given])
        return self
