"""Module-level pruning: blocks whose attention or MLP is removed (skipped, not zeroed).

This file only imports torch: depthprune copies it verbatim into module-pruned checkpoints as
``modeling_depthprune.py`` so that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
rebuilds the model without depthprune installed. The checkpoint's config.json carries
``depthprune_removed_modules`` ({"attn": [...], "mlp": [...]}, block indices of the saved model) and
``depthprune_module_spec`` (where the block list, attention, MLP and their norms live).
"""

from __future__ import annotations

import re

import torch.nn as nn

REMOVED_KEY = "depthprune_removed_modules"
SPEC_KEY = "depthprune_module_spec"


class SkippedAttention(nn.Module):
    """A removed attention: adds nothing to the residual stream and computes nothing.

    It still appends a one-float-per-token placeholder to the KV cache so the cache's length bookkeeping
    (which transformers reads from layer 0) stays right.
    """

    def __init__(self, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states=None, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        if cache is not None and self.layer_idx is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return hidden_states.new_zeros(hidden_states.shape), None


class SkippedBranch(nn.Module):
    """A removed MLP (or its last projection): contributes zeros of its input's shape."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states.new_zeros(hidden_states.shape)


def _set(root: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, name)
    setattr(parent, name, module)
    return old


def skip_part(block: nn.Module, part: str, spec: dict) -> list[tuple[str, nn.Module]]:
    """Replace one block's attention (``part='attn'``) or MLP (``'mlp'``) and the norms only it uses.

    Returns (path, original module) pairs so the change can be undone.
    """
    undo = []
    if part == "attn":
        first, *rest = spec["attention"]
        layer_idx = getattr(block.get_submodule(first), "layer_idx", None)
        undo.append((first, _set(block, first, SkippedAttention(layer_idx))))
        undo += [(p, _set(block, p, nn.Identity())) for p in rest]
        norms = spec["attn_norms"]
    elif part == "mlp":
        *leading, last = spec["mlp"]
        undo += [(p, _set(block, p, nn.Identity())) for p in leading]
        undo.append((last, _set(block, last, SkippedBranch())))
        norms = spec["mlp_norms"]
    else:
        raise ValueError(f"unknown module part {part!r} (use 'attn' or 'mlp')")
    undo += [(p, _set(block, p, nn.Identity())) for p in norms]
    return undo


def restore_parts(block: nn.Module, undo: list[tuple[str, nn.Module]]) -> None:
    for path, module in reversed(undo):
        _set(block, path, module)


def apply_removed_modules(model: nn.Module, removed: dict, spec: dict) -> None:
    """Skip the modules listed in ``removed`` ({"attn": [block indices], "mlp": [...]})."""
    blocks = model.get_submodule(spec["blocks"])
    for part in ("attn", "mlp"):
        for idx in removed.get(part, []):
            if not 0 <= int(idx) < len(blocks):
                raise ValueError(
                    f"config lists removed {part} module of block {idx}, but the model has {len(blocks)} blocks"
                )
            skip_part(blocks[int(idx)], part, spec)


def removed_key_patterns(removed: dict, spec: dict) -> list[str]:
    """Regexes of the checkpoint keys of the removed modules (absent on purpose: not reported as missing)."""
    out = []
    for part, paths in (("attn", spec["attention"] + spec["attn_norms"]), ("mlp", spec["mlp"] + spec["mlp_norms"])):
        for idx in removed.get(part, []):
            for path in paths:
                out.append(rf"{re.escape(spec['blocks'])}\.{int(idx)}\.{re.escape(path)}\.")
    return out


def make_pruned_class(base: type) -> type:
    """A subclass of ``base`` (a ``*ForCausalLM``) that skips the modules its config lists."""

    class DepthPrunedForCausalLM(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            apply_removed_modules(self, getattr(config, REMOVED_KEY, {}) or {}, getattr(config, SPEC_KEY))

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            # load as the stock class (so transformers applies its checkpoint key mappings), then skip; the
            # removed modules' weights are absent from the checkpoint on purpose, so they are not reported missing
            config = kwargs.get("config")
            if config is None:
                config = base.config_class.from_pretrained(*args[:1], **{k: v for k, v in kwargs.items()
                                                                         if k in ("cache_dir", "revision")})
            patterns = removed_key_patterns(getattr(config, REMOVED_KEY, {}) or {}, getattr(config, SPEC_KEY))
            old = base.__dict__.get("_keys_to_ignore_on_load_missing", None)
            base._keys_to_ignore_on_load_missing = list(old or []) + patterns
            try:
                model = base.from_pretrained(*args, **kwargs)
            finally:
                if old is None:
                    del base._keys_to_ignore_on_load_missing
                else:
                    base._keys_to_ignore_on_load_missing = old
            apply_removed_modules(model, getattr(model.config, REMOVED_KEY, {}) or {}, getattr(model.config, SPEC_KEY))
            return model

    # keep the base's name: transformers keys checkpoint key renames (e.g. GPT-NeoX embed_out) on it
    DepthPrunedForCausalLM.__name__ = DepthPrunedForCausalLM.__qualname__ = base.__name__
    return DepthPrunedForCausalLM

