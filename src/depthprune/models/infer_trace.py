"""The forward-hook trace behind spec inference: which norms feed or post-process each branch, and the final norm.

A 4-token dummy forward records every norm's input and output storage and each branch's input and output;
a norm whose output *is* a branch's input (or whose input is a branch's output) belongs to that branch. Where the
trace cannot run (meta weights, a forward that fails) names decide; see ``infer_spec``'s docstring.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

ATTN_NORM_NAMES = ("input_layernorm", "ln_1", "attention_norm", "attn_norm", "self_attn_layer_norm",
                   "pre_attention_layernorm", "pre_attn_norm", "norm1", "ln_attn", "attention_layernorm",
                   "post_attn_norm", "post_attention_norm", "post_self_attn_layernorm")
MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_feedforward_layernorm", "ln_2", "ffn_norm", "mlp_norm",
                  "norm2", "pre_mlp_layernorm", "post_mlp_layernorm", "ln_mlp", "ffn_layernorm", "post_ffn_norm",
                  "pre_ff_layernorm", "post_ff_layernorm", "final_layer_norm")
AMBIGUOUS_NORM = "post_attention_layernorm"
FEEDFORWARD_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
FINAL_NORM_NAMES = ("norm", "final_norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "ln_out")
SKIPPED_CLASSES = ("SkippedAttention", "SkippedBranch", "Identity")


def _in_every_block(blocks, name: str) -> bool:
    return all(isinstance(getattr(b, name, None), nn.Module) for b in blocks)


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        return next((t for t in x if isinstance(t, torch.Tensor)), None)
    if isinstance(x, dict):
        return next((t for t in x.values() if isinstance(t, torch.Tensor)), None)
    return None


def _same(a, b) -> bool:
    """``a`` and ``b`` are the same tensor (or views of the same memory with the same layout)."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and a.stride() == b.stride()
            and a.numel() > 0 and a.data_ptr() == b.data_ptr())


def _norm_like(name: str, module: nn.Module) -> bool:
    low = name.lower()
    return "norm" in type(module).__name__.lower() or "norm" in low or low.startswith("ln")


class _Trace:
    """Inputs and outputs (first tensors) of the traced block's children, and the final norm chain."""

    def __init__(self):
        self.io: dict[str, tuple] = {}
        self.final_norm: tuple[str, ...] | None = None

    @classmethod
    def run(cls, model, blocks_path: str, blocks, attention, mlp) -> _Trace | None:
        if any(p.device.type == "meta" for p in model.parameters()):
            return None
        idx = next((i for i, b in enumerate(blocks) if all(
            type(b.get_submodule(p)).__name__ not in SKIPPED_CLASSES for p in attention + mlp)), None)
        try:
            head = model.get_output_embeddings()
            emb = model.get_input_embeddings()
            finals = _final_candidates(model, blocks_path)
        except Exception:  # noqa: BLE001 - no head/embeddings to hook: names decide
            return None
        if idx is None or head is None or emb is None:
            return None
        tr = cls()
        mods = {f"block.{n}": c for n, c in blocks[idx].named_children()}
        mods["last_block"] = blocks[-1]
        mods["head"] = head
        mods.update({f"final.{p}": m for p, m in finals.items()})
        handles = []

        def hook(key):
            def pre(module, args, kwargs):
                x = _first_tensor(args) if args else None
                if x is None:
                    x = kwargs.get("hidden_states") if isinstance(kwargs.get("hidden_states"), torch.Tensor) \
                        else _first_tensor(kwargs)
                tr.io.setdefault(key, [None, None])[0] = x

            def post(module, args, kwargs, out):
                tr.io.setdefault(key, [None, None])[1] = _first_tensor(out)

            return pre, post

        modes = [(m, m.training) for m in model.modules()]
        try:
            for key, mod in mods.items():
                pre, post = hook(key)
                handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(mod.register_forward_hook(post, with_kwargs=True))
            model.eval()
            vocab = getattr(emb, "num_embeddings", None) or getattr(model.config, "vocab_size", None) or 8
            ids = (torch.arange(1, 5) % max(int(vocab), 1)).unsqueeze(0)
            if isinstance(getattr(emb, "weight", None), torch.Tensor):
                ids = ids.to(emb.weight.device)
            with torch.no_grad():
                try:
                    model(input_ids=ids, use_cache=False)
                except TypeError:
                    model(input_ids=ids)
        except Exception as exc:  # noqa: BLE001 - no trace: names decide
            log.debug("no inference trace for %s: %s: %s", type(model).__name__, type(exc).__name__, exc)
            return None
        finally:
            for h in handles:
                h.remove()
            for m, training in modes:
                m.training = training
        tr.final_norm = tr._final_chain(finals)
        return tr

    def inp(self, key):
        return self.io.get(key, (None, None))[0]

    def out(self, key):
        return self.io.get(key, (None, None))[1]

    def branch_io(self, paths) -> tuple:
        return self.inp(f"block.{paths[0]}"), self.out(f"block.{paths[-1]}")

    def _final_chain(self, finals: dict) -> tuple[str, ...] | None:
        """Modules from the last block's output to the LM head's input, in order (None: not traceable)."""
        x, chain = self.inp("head"), []
        end = self.out("last_block")
        for _ in range(len(finals) + 1):
            if _same(x, end):
                return tuple(reversed(chain))
            step = next((p for p in finals if p not in chain and _same(self.out(f"final.{p}"), x)), None)
            if step is None:
                return None
            chain.append(step)
            x = self.inp(f"final.{step}")
        return None


def _final_candidates(model, blocks_path: str) -> dict[str, nn.Module]:
    """Children of the modules above the block list (the base model, the root), except the blocks' ancestors,
    the embeddings and the head."""
    skip = {id(model.get_input_embeddings())}
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        skip.add(id(model.get_output_embeddings()))
    parts = blocks_path.split(".")
    ancestors = {".".join(parts[:i]) for i in range(len(parts) + 1)}
    out = {}
    for anc in sorted(ancestors - {blocks_path}, key=len):
        parent = model.get_submodule(anc) if anc else model
        for name, child in parent.named_children():
            path = f"{anc}.{name}" if anc else name
            if path in ancestors or id(child) in skip:
                continue
            out[path] = child
    return out


def _final_by_name(model, blocks_path: str) -> tuple[str, ...]:
    parent_path = blocks_path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    for name in FINAL_NORM_NAMES:
        if isinstance(getattr(parent, name, None), nn.Module):
            return (f"{parent_path}.{name}" if parent_path else name,)
    return ()


# --- norms ----------------------------------------------------------------------------------------------------


def _name_role(name: str, siblings: set[str]) -> str | None:
    if name in ATTN_NORM_NAMES:
        return "attn"
    if name in MLP_NORM_NAMES:
        return "mlp"
    if name == AMBIGUOUS_NORM:  # Gemma 2 / OLMo 2: after the attention; LLaMA: before the MLP
        return "attn" if siblings & set(FEEDFORWARD_NORMS) else "mlp"
    return None


def _assign_norms(blocks, attention, mlp, trace: _Trace | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    parts = set(attention) | set(mlp)
    children = dict(blocks[0].named_children())
    names = [n for n, c in children.items() if n not in parts and _norm_like(n, c) and _in_every_block(blocks, n)]
    branches = {"attn": attention, "mlp": mlp}
    attn_norms, mlp_norms = [], []
    for name in names:
        by_name = _name_role(name, set(children))
        if trace is None:
            role = by_name
        else:
            touched = set()
            for part, paths in branches.items():
                if not paths:
                    continue
                b_in, b_out = trace.branch_io(paths)
                if _same(trace.out(f"block.{name}"), b_in) or _same(trace.inp(f"block.{name}"), b_out):
                    touched.add(part)
            # both: shared by the branches (parallel blocks); none: on the residual stream (post-norm blocks).
            # Either way removing one branch must keep it.
            role = touched.pop() if len(touched) == 1 else None
            if role != by_name:
                log.debug("norm %s: the trace says %s, its name %s; the trace wins", name, role, by_name)
        if role == "attn" and attention:
            attn_norms.append(name)
        elif role == "mlp" and mlp:
            mlp_norms.append(name)
    return tuple(attn_norms), tuple(mlp_norms)
