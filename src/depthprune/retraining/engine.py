"""The training loop: Accelerate-driven, so one code path runs on CPU, one GPU, or many GPUs (DDP/FSDP).

The data order is a pure function of (seed, epoch, step): global batches of ``batch_size`` examples are cut
from a seeded permutation per epoch, and each process takes its micro-batches by rank. The same global
batch therefore gives the same gradients on 1 or N processes, and resuming needs only the step number.
The loss is the token-mean NLL over the whole global batch (every micro-batch is divided by the global
count of predicted tokens), so gradient accumulation and data parallelism do not change it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from depthprune.core.io import remove_tree, replace_dir
from depthprune.core.loss import chunked_nll
from depthprune.errors import DepthpruneError
from depthprune.retraining.checkpoint import (
    STATE_FILE,
    TRAINABLE_FILE,
    StopRequest,
    checkpoint_name,
    checkpoint_root,
    load_trainable,
    prune_old,
    read_state,
    rng_restore,
    rng_snapshot,
    save_trainable,
)
from depthprune.retraining.config import build_optimizer, build_scheduler
from depthprune.retraining.data import TokenDataset
from depthprune.retraining.options import TrainOptions
from depthprune.retraining.plan import DataPlan

LOG_FILE = "train_log.jsonl"


def set_activation_checkpointing(lm: nn.Module, on: bool) -> None:
    """Turn recomputation of block activations on or off (transformers' new name when it has it)."""
    if on:
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif any(getattr(m, "gradient_checkpointing", False) for m in lm.modules()):
        (getattr(lm, "activation_checkpointing_disable", None) or lm.gradient_checkpointing_disable)()


class CausalLMLoss(nn.Module):
    """Wraps a ``*ForCausalLM`` so one forward returns (summed NLL, predicted tokens) without full logits.

    Wrapping keeps the whole computation inside the module that DDP/FSDP see.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self._no_split_modules = getattr(lm, "_no_split_modules", None)  # FSDP auto-wrap reads it

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None):
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return chunked_nll(self.lm, hidden, labels)


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    epochs: float
    tokens_seen: int
    wall_s: float
    final_loss: float | None
    resumed_from: int | None = None
    history: list[dict] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "history"}


class Trainer:
    """Runs ``module`` (a :class:`CausalLMLoss`) over ``dataset`` with ``cfg`` under ``accelerator``."""
    def __init__(self, accelerator, module: CausalLMLoss, dataset: TokenDataset, cfg: TrainOptions,
                 fingerprint: dict, resume_from: Path | None = None):
        self.acc, self.module, self.dataset, self.cfg = accelerator, module, dataset, cfg
        self.out = Path(cfg.output)
        self.resume_from = resume_from
        world = accelerator.num_processes
        if cfg.batch_size % (cfg.micro_batch_size * world):
            raise DepthpruneError(
                f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch-size {cfg.micro_batch_size} "
                f"x {world} process(es)"
            )
        self.accum = cfg.batch_size // (cfg.micro_batch_size * world)
        self.plan = DataPlan(dataset, cfg.batch_size, cfg.seed)
        self.total = self.plan.total_steps(cfg.epochs, cfg.max_steps, cfg.max_tokens)
        self.fingerprint = fingerprint | {"batch_size": cfg.batch_size, "seed": cfg.seed, "examples": len(dataset)}
        self.callbacks: list[Callable[[TrainState], None]] = []
        self.model = self.optimizer = self.scheduler = None

    # ------------------------------------------------------------------ setup
    def _init_output(self) -> None:
        if self.acc.is_main_process and not self.cfg.resume:
            if self.out.exists() and self.cfg.overwrite:
                remove_tree(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()

    def _setup(self) -> None:
        acc = self.acc
        if self.cfg.gradient_checkpointing:
            set_activation_checkpointing(self.module.lm, True)
        self.module.train()
        optimizer = build_optimizer(self.module, self.cfg)
        self.model, self.optimizer = acc.prepare(self.module, optimizer)
        self.scheduler = build_scheduler(self.optimizer.optimizer, self.cfg, self.total)
        acc.register_for_checkpointing(self.scheduler)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    def _save_hook(self, models, weights, output_dir) -> None:
        if weights:  # plain / DDP model: keep only what trains (LoRA adapters, or everything for CPT)
            weights.clear()
            if self.acc.is_main_process:
                save_trainable(self.acc.unwrap_model(models[0]), Path(output_dir) / TRAINABLE_FILE)

    def _load_hook(self, models, input_dir) -> None:
        if models:
            load_trainable(self.acc.unwrap_model(models.pop()), Path(input_dir) / TRAINABLE_FILE)

    # ------------------------------------------------------------- checkpoints
    def save(self, state: TrainState) -> Path:
        """Checkpoint into a temporary directory, renamed when every process has written its part."""
        acc = self.acc
        root = checkpoint_root(self.out)
        final = root / checkpoint_name(state.step)
        tmp = root / f".tmp-{final.name}"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            info = asdict(state) | {"total_steps": self.total, "fingerprint": self.fingerprint,
                                    "num_processes": acc.num_processes}
            (tmp / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n")
            replace_dir(tmp, final)
            prune_old(self.out, max(1, self.cfg.keep_checkpoints))
        acc.wait_for_everyone()
        return final

    def _resume(self, ckpt: Path) -> TrainState:
        saved = read_state(ckpt)
        diff = {k: (saved["fingerprint"].get(k), v) for k, v in self.fingerprint.items()
                if saved["fingerprint"].get(k) != v}
        if diff:
            what = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
            raise DepthpruneError(f"--resume: {ckpt} was made with other settings ({what}); "
                                  "resume with the same data and batch settings, or use a new --output")
        self.acc.load_state(str(ckpt))
        with warnings.catch_warnings():  # recompute this step's lr from the schedule (e.g. a raised --max-steps)
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.last_epoch -= 1
            self.scheduler.step()
        state = TrainState(saved["step"], saved["tokens_seen"], saved["elapsed_s"])
        if self.acc.is_main_process:
            self._truncate_log(state.step)
        if self.acc.is_local_main_process:
            print(f"Resumed from {ckpt} at step {state.step}/{self.total}", flush=True)
        return state

    def _truncate_log(self, step: int) -> None:
        log = self.out / LOG_FILE
        if not log.is_file():
            return
        keep = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        tmp = log.with_name(f".{LOG_FILE}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, log)

    # -------------------------------------------------------------------- loop
    def _micro_batches(self, indices: list[int]) -> list[list[int]]:
        world, rank, m = self.acc.num_processes, self.acc.process_index, self.cfg.micro_batch_size
        return [indices[(k * world + rank) * m : (k * world + rank + 1) * m] for k in range(self.accum)]

    def _step(self, indices: list[int], n_pred: int) -> torch.Tensor:
        """Forward/backward over this process's micro-batches; returns their summed NLL."""
        acc, model, world = self.acc, self.model, self.acc.num_processes
        local = torch.zeros((), device=acc.device, dtype=torch.float32)
        parts = self._micro_batches(indices)
        for k, mb in enumerate(parts):
            batch = {key: value.to(acc.device) for key, value in self.dataset.batch(mb).items()}
            sync = k == len(parts) - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                nll, _ = model(**batch)
                acc.backward(nll * (world / n_pred))
            local += nll.detach().float()
        return local

    def _update(self) -> float | None:
        grad_norm = None
        if self.cfg.max_grad_norm > 0:
            grad_norm = float(self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def fit(self) -> TrainResult:
        """Train to the planned number of steps; Ctrl-C checkpoints and re-raises KeyboardInterrupt."""
        acc, cfg = self.acc, self.cfg
        self._init_output()
        self._setup()
        state = self._resume(self.resume_from) if self.resume_from is not None else TrainState()
        start_step = state.step
        main = acc.is_main_process
        log_f = open(self.out / LOG_FILE, "a") if main else None  # noqa: SIM115
        bar = tqdm(total=self.total, initial=state.step, unit="step", dynamic_ncols=True,
                   desc="train", disable=not (cfg.progress and acc.is_local_main_process))
        t_run = time.perf_counter()
        win = {"nll": 0.0, "pred": 0, "tokens": 0, "t": t_run}
        history, last_loss = [], None
        saved_at = state.step if self.resume_from is not None else None  # that checkpoint exists already
        snap, in_update = None, False
        try:
            with StopRequest(announce=acc.is_local_main_process) as stop:
                while state.step < self.total:
                    snap = rng_snapshot()
                    _, indices = self.plan.step(state.step)
                    n_pred = int(self.plan.predicted[indices].sum())
                    n_tok = int(self.plan.tokens[indices].sum())
                    lr = self.scheduler.get_last_lr()[0]
                    local = self._step(indices, n_pred)
                    in_update = True
                    grad_norm = self._update()
                    flags = torch.stack([local, torch.tensor(float(stop.requested), device=acc.device)])
                    if acc.num_processes > 1:
                        flags = acc.reduce(flags, reduction="sum")
                    state.step += 1
                    state.tokens_seen += n_tok
                    state.elapsed_s += time.perf_counter() - t_run
                    t_run = time.perf_counter()
                    snap, in_update = None, False  # the step is complete: the current RNG state is the one to keep
                    last_loss = float(flags[0]) / n_pred
                    win["nll"] += float(flags[0])
                    win["pred"] += n_pred
                    win["tokens"] += n_tok
                    now = time.perf_counter()
                    tps = win["tokens"] / max(now - win["t"], 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
                    if state.step % cfg.log_every == 0 or state.step == self.total:
                        rec = {"step": state.step, "epoch": round(state.step / self.plan.steps_per_epoch, 4),
                               "loss": win["nll"] / win["pred"], "lr": lr, "grad_norm": grad_norm,
                               "tokens_seen": state.tokens_seen, "tokens_per_s": tps,
                               "elapsed_s": round(state.elapsed_s, 3)}
                        history.append(rec)
                        if log_f:
                            log_f.write(json.dumps(rec) + "\n")
                            log_f.flush()
                        win = {"nll": 0.0, "pred": 0, "tokens": 0, "t": now}
                    for cb in self.callbacks:
                        cb(state)
                    if cfg.save_every and state.step % cfg.save_every == 0:
                        self.save(state)
                        saved_at = state.step
                    if float(flags[1]) > 0:
                        if saved_at != state.step:
                            self.save(state)
                            saved_at = state.step
                        raise KeyboardInterrupt
            if cfg.save_every and saved_at != state.step:
                self.save(state)
        except KeyboardInterrupt:
            self._on_interrupt(state, snap, in_update, saved_at)
            raise
        finally:
            bar.close()
            if log_f:
                log_f.close()
        return TrainResult(steps=state.step, total_steps=self.total,
                           epochs=state.step / self.plan.steps_per_epoch, tokens_seen=state.tokens_seen,
                           wall_s=state.elapsed_s, final_loss=last_loss,
                           resumed_from=start_step if self.resume_from is not None else None, history=history)

    def _on_interrupt(self, state: TrainState, snap: dict | None, in_update: bool, saved_at: int | None) -> None:
        """A raw KeyboardInterrupt (second Ctrl-C, or raised mid-step): checkpoint the last finished step."""
        say = print if self.acc.is_local_main_process else (lambda *a, **k: None)
        if saved_at == state.step:
            say(f"Interrupted: checkpoint of step {state.step} saved in {checkpoint_root(self.out)}; "
                "continue with --resume", flush=True)
            return
        if self.acc.num_processes > 1 or in_update:
            say("Interrupted mid-update; the last saved checkpoint is kept", flush=True)
            return
        if snap is not None:
            rng_restore(snap)  # rewind the unfinished step so a resumed run replays it exactly
        self.optimizer.zero_grad(set_to_none=True)
        path = self.save(state)
        say(f"Interrupted: checkpoint of step {state.step} saved in {path}; continue with --resume", flush=True)

    # ------------------------------------------------------------------ export
    def final_module(self, rebuild: Callable[[], CausalLMLoss] | None = None) -> CausalLMLoss | None:
        """The trained module, whole, on the main process (None elsewhere); FSDP shards are gathered first."""
        acc = self.acc
        if acc.distributed_type == DistributedType.FSDP:
            state = acc.get_state_dict(self.model)
            if not acc.is_main_process:
                return None
            if rebuild is None:
                raise DepthpruneError("cannot export an FSDP-trained model without a rebuild function")
            module = rebuild()
            module.load_state_dict(state)
            return module
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        return acc.unwrap_model(self.model)
