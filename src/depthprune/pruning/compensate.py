"""Training-free linear compensation of removed blocks, fused into the kept block before each cut.

For each maximal run of consecutive removed blocks ``i+1..j`` whose preceding kept block ``i`` exists, a
linear map is fitted on calibration activations so that block ``i`` reproduces the residual stream after the
cut (the input of block ``j+1`` in the original model, or its last block's output), and is fused into block
``i``'s weights: the checkpoint stays a stock one (same class, same parameter count).

Block ``i``'s output is ``Y + M``: ``M`` is what its last module writes into the residual stream and ``Y``
everything else (the residual before the MLP is added). With the target ``L`` and ``R = L - Y``:

* ``full`` (LLaMA, Mistral, Qwen2/3, Phi-3, pre-norm OPT, GPT-NeoX: ``M`` = the MLP's last linear layer's
  output): ``T`` minimising ``||M T - R||^2 + lam ||T - I||^2``; then ``W <- T^T W`` and ``b <- T^T b`` for
  ``M = z W^T + b``, so ``M <- M T`` exactly. (The idea of ReplaceMe, arXiv 2505.02819; written here.)
* ``scale`` (Gemma 2/3: a ``post_feedforward_layernorm`` sits between the last linear layer and the residual,
  so no matrix can be fused without a new module): per channel ``s_c`` minimising
  ``sum (M_c s_c - R_c)^2 + lam (s_c - 1)^2``, folded into the norm's weight: ``w <- (1 + w) s - 1`` for the
  Gemma form ``x_hat (1 + w)`` (detected by running the norm), ``w <- w s`` (and its bias) for ``x_hat w``.

The ridge ``lam`` = ``ridge`` x the mean diagonal of ``M^T M`` shrinks towards the identity, i.e. towards the
uncompensated model (``ridge`` -> inf gives no compensation), not towards zero. Fits run in float64 on
normal equations accumulated over calibration batches (``M^T M``, ``M^T R``: d x d, or d numbers for
``scale``), so the fit's memory does not grow with the number of samples; the calibration activations kept
between spans are one hidden state per batch plus one target per span.

Spans are processed in order: span k is fitted on the activations of the model with spans < k already
removed and compensated; every target comes from one traced forward of the unpruned model. After fusing, the
block is re-run: its output must equal ``Y + M T`` (else the family's layout is not the assumed one, and the
weights are restored and an error raised), and the fit residual after fusion is measured exactly.

A span starting at block 0 has no kept block before it: it is skipped and recorded (``skipped``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from depthprune.errors import DepthpruneError
from depthprune.models.loading import input_device
from depthprune.models.specs import get_blocks, spec_for
from depthprune.models.trace import Trace, run_block, trace_blocks
from depthprune.pruning.surgery import remove_blocks, restore_blocks

MODES = ("none", "linear")
DEFAULT_RIDGE = 1e-4
"""Relative ridge: lam = DEFAULT_RIDGE x mean diagonal of M^T M (a numerical guard; raise it for little data)."""


@dataclass(frozen=True)
class Writer:
    """What a block writes last into the residual stream, relative to the block, and how a map is fused in."""

    mode: str  # "full": a Linear whose output is added to the residual; "scale": a norm whose output is
    path: str


_DOWN = Writer("full", "mlp.down_proj")
_GEMMA = Writer("scale", "post_feedforward_layernorm")
WRITERS: dict[str, Writer] = {
    "llama": _DOWN, "mistral": _DOWN, "qwen2": _DOWN, "qwen3": _DOWN, "phi3": _DOWN,
    "gemma2": _GEMMA, "gemma3_text": _GEMMA,
    "opt": Writer("full", "fc2"),
    "gpt_neox": Writer("full", "mlp.dense_4h_to_h"),
}


@dataclass
class BlockSnapshot:
    """The block list and per-layer config of an unpruned model (what ``restore_blocks`` puts back)."""

    blocks: list
    config: dict


def snapshot_blocks(model) -> BlockSnapshot:
    """Remember ``model``'s blocks before pruning, so compensation can see the removed ones afterwards."""
    spec = spec_for(model)
    cfg = model.config
    saved = {spec.num_layers_key: getattr(cfg, spec.num_layers_key)}
    for key in spec.per_layer_keys:
        value = getattr(cfg, key, None)
        if value is not None:
            saved[key] = list(value)
    return BlockSnapshot(list(get_blocks(model)), saved)


def writer_for(model) -> Writer:
    """The fusion rule of ``model``'s family, or a clear refusal."""
    mt = model.config.model_type
    if mt not in WRITERS:
        raise DepthpruneError(f"--compensate linear: no fusion rule for model_type {mt!r} (supported: "
                              f"{', '.join(sorted(WRITERS))}); use --compensate none")
    if mt == "opt" and not getattr(model.config, "do_layer_norm_before", True):
        raise DepthpruneError("--compensate linear: this OPT model is post-norm (do_layer_norm_before=false, "
                              "like opt-350m): a LayerNorm follows each residual addition, so no map fused into "
                              "fc2 or a norm reproduces the removed blocks; use --compensate none")
    writer = WRITERS[mt]
    block = get_blocks(model)[0]
    try:
        mod = block.get_submodule(writer.path)
    except AttributeError:
        raise DepthpruneError(f"--compensate linear: {mt} blocks have no {writer.path}; this layout is not "
                              "supported") from None
    hidden = model.config.hidden_size
    if writer.mode == "full" and not (isinstance(mod, torch.nn.Linear) and mod.out_features == hidden):
        raise DepthpruneError(f"--compensate linear: {writer.path} of {mt} is not a Linear layer writing "
                              f"{hidden} channels; this layout is not supported")
    if writer.mode == "scale" and getattr(getattr(mod, "weight", None), "shape", None) != (hidden,):
        raise DepthpruneError(f"--compensate linear: {writer.path} of {mt} has no per-channel weight")
    return writer


def check_compensable(model, unit: str = "block", method: str = "depth") -> Writer:
    """Refuse what compensation cannot handle before any work is done; returns the family's fusion rule."""
    if method != "depth":
        raise DepthpruneError("--compensate linear applies to depth pruning (whole blocks), not --method width")
    if unit != "block":
        raise DepthpruneError("--compensate linear fits a map for removed whole blocks; it cannot be combined "
                              "with --unit module")
    if getattr(model.config, "depthprune_removed_modules", None):
        raise DepthpruneError("--compensate linear: this model already has removed attention/MLP modules "
                              "(module pruning); compensate a block-pruned model instead")
    return writer_for(model)


def block_spans(removed: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices, as (first, last)."""
    spans: list[list[int]] = []
    for i in sorted(set(removed)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return [(a, b) for a, b in spans]


def _norm_form(norm: torch.nn.Module, hidden: int) -> str:
    """``offset`` for ``x_hat (1 + w)`` (Gemma), ``plain`` for ``x_hat w (+ b)``: run the norm with w = 0."""
    w = norm.weight
    saved = w.detach().clone()
    x = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    try:
        w.zero_()
        y = norm(x).float()
    finally:
        w.copy_(saved)
    bias = getattr(norm, "bias", None)
    if bias is not None:
        y = y - bias.detach().float()
    return "plain" if float(y.abs().max()) < 1e-6 else "offset"


class _Capture:
    """Records the output of one module (the writer) during a forward."""

    def __init__(self, module: torch.nn.Module):
        self.out = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.out = out[0] if isinstance(out, (tuple, list)) else out

    def remove(self) -> None:
        self.handle.remove()


def _writer_out(block, writer: Writer, hidden: torch.Tensor, model, trace, idx) -> tuple[torch.Tensor, torch.Tensor]:
    """Run block ``idx`` on ``hidden``: its output and what its writer added (shaped like the output)."""
    cap = _Capture(block.get_submodule(writer.path))
    try:
        out = run_block(model, trace, idx, hidden)
    finally:
        cap.remove()
    return out, cap.out.reshape(out.shape)


def _solve(stats: dict, mode: str, ridge: float, d: int) -> torch.Tensor:
    if mode == "full":
        a, b = stats["a"].cpu(), stats["b"].cpu()
        eye = torch.eye(d, dtype=torch.float64)
        lam = ridge * float(torch.diagonal(a).mean())
        if lam == 0 and stats["tokens"] < d:
            warnings.warn(f"--compensate linear: {stats['tokens']} calibration tokens for a {d} x {d} map with no "
                          "ridge: the fit is underdetermined (minimum-norm solution); use more samples or "
                          "--compensate-ridge", stacklevel=3)
        return torch.linalg.lstsq(a + lam * eye, b + lam * eye, driver="gelsd").solution
    a, b = stats["a"], stats["b"]
    lam = ridge * float(a.mean())
    den = a + lam
    s = torch.where(den > 0, (b + lam) / den.clamp_min(1e-300), torch.ones_like(a))
    return s.cpu()


def _apply(mod: torch.nn.Module, mode: str, form: str | None, sol: torch.Tensor) -> None:
    """Fuse the fitted map into ``mod`` (the writer) in place."""
    w = mod.weight
    sol = sol.to(w.device)
    if mode == "full":  # output z W^T + b  ->  (z W^T + b) T  =  z (T^T W)^T + T^T b
        w.copy_((sol.t() @ w.double()).to(w.dtype))
        if getattr(mod, "bias", None) is not None:
            mod.bias.copy_((mod.bias.double() @ sol).to(mod.bias.dtype))
    elif form == "offset":  # x_hat (1 + w) s  =  x_hat (1 + w')  with  w' = (1 + w) s - 1
        w.copy_(((1.0 + w.double()) * sol - 1.0).to(w.dtype))
    else:
        w.copy_((w.double() * sol).to(w.dtype))
        if getattr(mod, "bias", None) is not None:
            mod.bias.copy_((mod.bias.double() * sol).to(mod.bias.dtype))


def _predict(y: torch.Tensor, m: torch.Tensor, mode: str, sol: torch.Tensor) -> torch.Tensor:
    sol = sol.to(m.device)
    mt = m.double() @ sol if mode == "full" else m.double() * sol
    return y.double() + mt


@torch.no_grad()
def compensate_removed(model, snapshot: BlockSnapshot, removed: list[int], input_ids: torch.Tensor,
                       ridge: float = DEFAULT_RIDGE, batch_size: int = 16, progress: bool = True,
                       skip_first: int = 0) -> dict:
    """Fit and fuse compensation for the ``removed`` blocks (original numbering) of a pruned ``model``.

    ``snapshot`` (taken before pruning) gives back the removed blocks for the duration of the fit; the model
    leaves pruned, with the kept blocks before each span changed in place. Returns what ``pruning.json``
    records under ``compensation``. ``skip_first``: positions at the start of every sequence left out of the
    fit (1 = the BOS position, whose hidden state can be an order of magnitude larger than the others').
    """
    if ridge < 0 or ridge != ridge:
        raise DepthpruneError(f"--compensate-ridge must be >= 0, got {ridge}")
    removed = sorted(set(int(i) for i in removed))
    if not removed:
        raise DepthpruneError("--compensate linear: no block was removed, so there is nothing to compensate")
    writer = writer_for(model)
    expected = [blk for i, blk in enumerate(snapshot.blocks) if i not in set(removed)]
    if len(get_blocks(model)) != len(expected) or any(x is not y for x, y in zip(get_blocks(model), expected)):
        raise DepthpruneError(f"compensation: the model's blocks are not its snapshot's minus blocks {removed}; "
                              "take the snapshot before pruning and pass the removed blocks in original numbering")
    spans = block_spans(removed)
    todo = [(a, b) for a, b in spans if a > 0]
    if skip_first < 0 or skip_first >= input_ids.shape[1]:
        raise DepthpruneError(f"skip_first must be in [0, {input_ids.shape[1]}), got {skip_first}")
    info = {"method": "linear", "mode": writer.mode, "writer": writer.path, "ridge": ridge,
            "skip_first_positions": skip_first,
            "ridge_meaning": "lam = ridge x mean diagonal of M^T M, shrinking the map towards the identity",
            "fit_dtype": "float64", "spans": [],
            "skipped": [{"removed": list(range(a, b + 1)),
                         "reason": "starts at block 0: no kept block before it to fuse a map into"}
                        for a, b in spans if a == 0]}
    if info["skipped"]:
        warnings.warn(f"--compensate linear: removed blocks {info['skipped'][0]['removed']} start at block 0; "
                      "nothing precedes them to fuse a map into, so they are left uncompensated", stacklevel=2)
    if not todo:
        return info
    restore_blocks(model, snapshot)
    blocks = get_blocks(model)
    backups: dict[int, dict] = {}
    try:
        _fit_all(model, blocks, writer, todo, set(removed), input_ids, ridge, batch_size, progress, info, backups,
                 skip_first)
    except BaseException:
        for i, state in backups.items():
            blocks[i].get_submodule(writer.path).load_state_dict(state)
        raise
    finally:
        remove_blocks(model, removed)
    return info


def _fit_all(model, blocks, writer, todo, removed, input_ids, ridge, batch_size, progress, info, backups,
             skip_first):
    device = input_device(model)
    d = model.config.hidden_size
    # the pruned model's residual stream equals the original one up to whichever comes first: the first fused
    # block's input, or the first removed block's input (block 0 removed: the embeddings)
    first = min(todo[0][0] - 1, min(removed))
    # one traced forward of the unpruned model per batch: the calls, the hidden state at ``first``, and every
    # span's target
    batches = []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        trace = trace_blocks(model, ids)
        targets = [trace.state(b + 1) for _, b in todo]
        batches.append({"trace": Trace([], None, trace.calls), "h": trace.inputs[first], "targets": targets})
        del trace
    cursor = first
    bar = tqdm(total=len(todo) * len(batches), desc="compensation fit", disable=not progress, leave=False)
    for k, (a, b) in enumerate(todo):
        i = a - 1
        mod = blocks[i].get_submodule(writer.path)
        form = _norm_form(mod, d) if writer.mode == "scale" else None
        shape = (d, d) if writer.mode == "full" else (d,)
        stats = {"a": torch.zeros(shape, dtype=torch.float64, device=device),
                 "b": torch.zeros(shape, dtype=torch.float64, device=device),
                 "before": 0.0, "elements": 0, "tokens": 0, "target_ms": 0.0}
        check = None
        for bi, batch in enumerate(batches):
            h = batch["h"]
            for j in range(cursor, i):  # advance to the input of block i through kept blocks
                if j not in removed:
                    h = run_block(model, batch["trace"], j, h)
            batch["h"] = h
            out, m = _writer_out(blocks[i], writer, h, model, batch["trace"], i)
            y = out - m
            target = batch["targets"][k]
            md = m[:, skip_first:].reshape(-1, d).double()
            rd = (target - y)[:, skip_first:].reshape(-1, d).double()
            if writer.mode == "full":
                stats["a"] += md.t() @ md
                stats["b"] += md.t() @ rd
            else:
                stats["a"] += (md * md).sum(dim=0)
                stats["b"] += (md * rd).sum(dim=0)
            stats["before"] += float(((out - target)[:, skip_first:].double() ** 2).sum())
            stats["target_ms"] += float((target[:, skip_first:].double() ** 2).sum())
            stats["elements"] += target[:, skip_first:].numel()
            stats["tokens"] += md.shape[0]
            if bi == 0:
                check = (y, m)
            bar.update()
        cursor = i
        sol = _solve(stats, writer.mode, ridge, d)
        backups[i] = {key: v.detach().clone() for key, v in mod.state_dict().items()}
        _apply(mod, writer.mode, form, sol)
        after = 0.0
        for bi, batch in enumerate(batches):
            out = run_block(model, batch["trace"], i, batch["h"])
            after += float(((out - batch["targets"][k])[:, skip_first:].double() ** 2).sum())
            if bi == 0:
                pred = _predict(*check, writer.mode, sol)
                rel = float((out.double() - pred).norm() / pred.norm().clamp_min(1e-30))
                tol = 1e-3 if out.dtype == torch.float32 else 3e-2
                if rel > tol:
                    raise DepthpruneError(
                        f"--compensate linear: after fusing into {writer.path} of block {i}, the block's output "
                        f"differs from residual + fitted {writer.path} output by {rel:.2e} (relative); this "
                        f"{model.config.model_type} block does not add {writer.path} straight into the residual "
                        "stream, so it cannot be compensated this way; use --compensate none")
        el = stats["elements"]
        span = {"removed": list(range(a, b + 1)), "fused_into": i, "tokens": stats["tokens"],
                "mse_before": stats["before"] / el, "mse_after": after / el,
                "relative_residual": after / stats["before"] if stats["before"] > 0 else 0.0,
                "target_mean_square": stats["target_ms"] / el}
        if writer.mode == "full":
            eye = torch.eye(d, dtype=torch.float64)
            span["map_distance_from_identity"] = float((sol - eye).norm() / eye.norm())
        else:
            span["norm_form"] = form
            span["scale_min"], span["scale_max"] = float(sol.min()), float(sol.max())
            span["scale_mean"] = float(sol.mean())
        info["spans"].append(span)
    bar.close()


class CompensationRun:
    """Compensation around a pruning call: checks and calibration before it (model whole), the fit after.

    ``calib`` (a :class:`~depthprune.data.Calibration`) was drawn from the unpruned model.
    """

    def __init__(self, model, calib, ridge: float = DEFAULT_RIDGE, batch_size: int = 16, unit: str = "block",
                 skip_first: int = 0, progress: bool = True):
        if ridge < 0 or ridge != ridge:
            raise DepthpruneError(f"--compensate-ridge must be >= 0, got {ridge}")
        check_compensable(model, unit)
        self.ridge, self.batch_size, self.skip_first, self.progress = ridge, batch_size, skip_first, progress
        self.calib = calib
        self.snapshot = snapshot_blocks(model)

    def apply(self, model, removed: list[int]) -> dict:
        """Fit and fuse for the ``removed`` blocks; returns the ``pruning.json`` record (calibration included)."""
        t0 = time.perf_counter()
        info = compensate_removed(model, self.snapshot, removed, self.calib.input_ids, ridge=self.ridge,
                                  batch_size=self.batch_size, progress=self.progress, skip_first=self.skip_first)
        return info | {"calibration": self.calib.to_json(), "wall_s": round(time.perf_counter() - t0, 3)}
