"""Infer an ``ArchSpec`` from a loaded model, so families without a named spec work without code.

What is decided, and how:

- **blocks**: the one ``nn.ModuleList`` (outermost: lists nested in another candidate, such as experts, are
  ignored) whose length equals a layer count of the config (``num_hidden_layers``, ``n_layer``, ``num_layers``,
  ``n_layers``). None or several: refused with a ``DepthpruneError`` naming the lists and counts found.
  ``num_layers_key`` is the first of those keys holding that length.
- **attention / MLP**: the first block child named ``self_attn``, ``attention``, ``attn``, ``self_attention``
  (else the one child whose class name contains "Attention") and ``mlp``, ``feed_forward``, ``ffn``,
  ``block_sparse_moe``, ... (else the one child whose class name says MLP/MoE/FeedForward); a block without
  an MLP module but with direct ``fc1``/``fc2`` linears (OPT-like) gets ``("fc1", "fc2")``. A name must exist
  in every block; when none qualifies the field is empty and module pruning refuses the model.
- **attn_norms / mlp_norms**: norm-like children of a block (class or name says norm/``ln*``), assigned by a
  forward-hook trace on a 4-token dummy input: a norm whose output *is* (same storage) a branch's input, or
  whose input is a branch's output, belongs to that branch; one touching both branches (the shared pre-norm
  of parallel blocks: Cohere, Phi) or neither (a post-norm on the residual stream) belongs to no branch, so
  removing a branch keeps it. Only where the trace cannot run (meta weights, a forward that fails) do names
  decide (``input_layernorm``, ``ln_1`` -> attention; ``pre/post_feedforward_layernorm``, ``ln_2`` -> MLP;
  ``post_attention_layernorm`` -> attention when the block also has feed-forward norms (Gemma 2, OLMo 2),
  else MLP (LLaMA)); names cannot see a shared pre-norm, which then goes with the attention.
- **final_norm**: the trace walks back from the LM head's input through modules of the base model whose
  output it is, until the last block's output; without a trace, the base model's child named ``norm``,
  ``final_layernorm``, ``ln_f``, ....
- **per_layer_keys**: config lists of scalars with one entry per block.
- **projections** (LoRA targets): linear layers inside the attention and MLP of any block, routers (``gate``,
  ``router``, ``*_expert_gate``, or as many outputs as experts) excluded.
- **width names**: direct children of the attention named ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (also
  ``query``/``key``/``value``, ``out_proj``/``dense``) or a fused ``qkv_proj`` ([Q | K | V] rows), and of the
  MLP ``gate_proj``/``up_proj``/``down_proj`` (``fc1``/``c_fc`` up, ``fc2``/``c_proj`` down) or fused
  ``gate_up_proj``. Fused layouts under other names (``query_key_value`` interleaves heads) are left out.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.archspec import ArchSpec
from depthprune.models.infer_trace import _assign_norms, _final_by_name, _in_every_block, _Trace

log = logging.getLogger(__name__)

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
ATTENTION_NAMES = ("self_attn", "attention", "attn", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "feedforward", "ff", "mlp_block")
MLP_CLASS_WORDS = ("mlp", "moe", "feedforward", "ffn", "expert")
DIRECT_MLP = (("fc1", "fc2"), ("c_fc", "c_proj"), ("dense_h_to_4h", "dense_4h_to_h"))

ROUTER_NAMES = ("gate", "router", "shared_expert_gate", "expert_gate", "moe_gate")
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

WIDTH_ATTN = {"q_proj": ("q_proj", "query"), "k_proj": ("k_proj", "key"), "v_proj": ("v_proj", "value"),
              "o_proj": ("o_proj", "out_proj", "dense"), "qkv_proj": ("qkv_proj",)}
WIDTH_MLP = {"gate_proj": ("gate_proj",), "up_proj": ("up_proj", "fc1", "c_fc", "dense_h_to_4h"),
             "down_proj": ("down_proj", "fc2", "c_proj", "dense_4h_to_h"), "gate_up_proj": ("gate_up_proj",)}
NOT_PER_LAYER = ("architectures", "eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "forced_decoder_ids", "label2id", "id2label")
SPEC_KEY = "depthprune_module_spec"  # = depthprune.pruning.modules.SPEC_KEY (not imported: that package needs us)

_BY_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BY_CLASS: dict[tuple[type, str], ArchSpec] = {}


def inferred_spec(model: nn.Module) -> ArchSpec:
    """The inferred spec of ``model``: cached per model object and per (model class, config).

    A module-pruned model's config carries where its skipped parts live (``depthprune_module_spec``); those
    fields win, since the skipped blocks no longer show them.
    """
    spec = _BY_MODEL.get(model)
    if spec is None:
        key = (type(model), _config_fingerprint(model.config))
        spec = _BY_CLASS.get(key)
        if spec is None:
            spec = infer_spec(model)
            _BY_CLASS[key] = spec
        _BY_MODEL[model] = spec
    stored = getattr(model.config, SPEC_KEY, None)
    if isinstance(stored, dict):
        spec = replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()
                                if k in ("blocks", "attention", "mlp", "attn_norms", "mlp_norms")})
    return spec


def _config_fingerprint(config) -> str:
    try:
        return repr(sorted(config.to_dict().items(), key=lambda kv: kv[0]))
    except Exception:  # noqa: BLE001 - an odd config is simply not shared between models
        return f"id:{id(config)}"


def infer_spec(model: nn.Module) -> ArchSpec:
    """Infer where ``model`` keeps its blocks, attention, MLP, norms and projections (no caching)."""
    blocks_path, layers_key = find_blocks(model)
    blocks = model.get_submodule(blocks_path)
    attention = _find_attention(blocks)
    mlp = _find_mlp(blocks, attention)
    trace = _Trace.run(model, blocks_path, blocks, attention, mlp)
    attn_norms, mlp_norms = _assign_norms(blocks, attention, mlp, trace)
    final = trace.final_norm if trace is not None and trace.final_norm is not None else _final_by_name(
        model, blocks_path)
    width = _width_names(blocks, attention, mlp)
    spec = ArchSpec(
        blocks=blocks_path, attention=attention, mlp=mlp, final_norm=final, num_layers_key=layers_key,
        per_layer_keys=_per_layer_keys(model.config, len(blocks)), attn_norms=attn_norms, mlp_norms=mlp_norms,
        projections=_projections(model.config, blocks, attention + mlp), **width,
    )
    log.debug("inferred spec for %s: %s (norms by %s)", type(model).__name__, spec,
              "trace" if trace is not None else "name")
    return spec


# --- the block list -------------------------------------------------------------------------------------------


def layer_counts(config) -> dict[str, int]:
    """The config's layer counts, by key (first key of ``LAYER_COUNT_KEYS`` first)."""
    out = {}
    for key in LAYER_COUNT_KEYS:
        try:
            value = getattr(config, key, None)
        except Exception:  # noqa: BLE001 - some configs raise for unsupported aliases
            value = None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = value
    return out


def find_blocks(model: nn.Module) -> tuple[str, str]:
    """The path of the decoder blocks' ``nn.ModuleList`` and the config key holding their count."""
    counts = layer_counts(model.config)
    lists = [(name, len(mod)) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and name]
    hits = [name for name, n in lists if n in counts.values()]
    hits = [h for h in hits if not any(h.startswith(o + ".") for o in hits if o != h)]
    if len(hits) == 1:
        n = len(model.get_submodule(hits[0]))
        return hits[0], next(k for k, v in counts.items() if v == n)
    mt = getattr(model.config, "model_type", "?")
    found = ", ".join(f"{name} ({n})" for name, n in lists[:12]) or "none"
    if len(lists) > 12:
        found += f", ... ({len(lists)} in all)"
    count_text = ", ".join(f"{k}={v}" for k, v in counts.items()) or f"none of {', '.join(LAYER_COUNT_KEYS)}"
    if not hits:
        why = "no nn.ModuleList has as many entries as the config's layer count"
    else:
        why = f"several nn.ModuleLists have as many entries as the config's layer count ({', '.join(hits)})"
    raise DepthpruneError(
        f"cannot infer where {type(model).__name__} (model_type '{mt}') keeps its decoder blocks: {why}. "
        f"ModuleLists found: {found}; layer counts in the config: {count_text}. Add an ArchSpec entry for "
        f"'{mt}' to depthprune.models.specs.SPECS to name them"
    )


# --- attention and MLP ----------------------------------------------------------------------------------------


def _by_class_word(blocks, words, exclude=()) -> str | None:
    names = [n for n, c in blocks[0].named_children() if n not in exclude
             and any(w in type(c).__name__.lower() for w in words)]
    return names[0] if len(names) == 1 and _in_every_block(blocks, names[0]) else None


def _find_attention(blocks) -> tuple[str, ...]:
    for name in ATTENTION_NAMES:
        if _in_every_block(blocks, name):
            return (name,)
    name = _by_class_word(blocks, ("attention",))
    return (name,) if name else ()


def _find_mlp(blocks, attention) -> tuple[str, ...]:
    for name in MLP_NAMES:
        if name not in attention and _in_every_block(blocks, name):
            return (name,)
    name = _by_class_word(blocks, MLP_CLASS_WORDS, exclude=attention)
    if name:
        return (name,)
    for pair in DIRECT_MLP:
        if all(isinstance(getattr(b, p, None), nn.Linear) for b in blocks for p in pair):
            return pair
    return ()


# --- the trace ------------------------------------------------------------------------------------------------




# --- config lists, projections, width names -------------------------------------------------------------------


def _per_layer_keys(config, n: int) -> tuple[str, ...]:
    keys = []
    for key, value in vars(config).items():
        if key.startswith("_") or key in NOT_PER_LAYER:
            continue
        if (isinstance(value, (list, tuple)) and len(value) == n
                and all(v is None or isinstance(v, (str, int, float, bool)) for v in value)):
            keys.append(key)
    return tuple(keys)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _expert_counts(config) -> set[int]:
    out = {1}
    for key in EXPERT_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 1:
            out.add(value)
    return out


def _projections(config, blocks, parts) -> tuple[str, ...]:
    experts = _expert_counts(config)
    out: dict[str, None] = {}
    for block in blocks:
        for part in parts:
            mod = getattr(block, part, None)
            if mod is None:
                continue
            for name, sub in mod.named_modules():
                if not _is_linear(sub):
                    continue
                leaf = name.rsplit(".", 1)[-1] if name else part
                n_out = getattr(sub, "out_features", None) or getattr(sub, "nf", None)
                if leaf in ROUTER_NAMES or n_out in experts:
                    continue
                out[f"{part}.{name}" if name else part] = None
    return tuple(out)


def _width_names(blocks, attention, mlp) -> dict[str, str | None]:
    """Width projections: linear layers of one of the usual names directly under the attention / MLP of every
    block (a family whose blocks differ, such as dense-then-MoE, gets None where one lacks it)."""
    out: dict[str, str | None] = dict.fromkeys(list(WIDTH_ATTN) + list(WIDTH_MLP))
    groups = []
    if len(attention) == 1:
        groups.append((attention[0], WIDTH_ATTN))
    if len(mlp) == 1:
        groups.append((mlp[0], WIDTH_MLP))
    for prefix, table in groups:
        for field_name, candidates in table.items():
            name = next((c for c in candidates if all(
                isinstance(getattr(b.get_submodule(prefix), c, None), nn.Linear) for b in blocks)), None)
            out[field_name] = f"{prefix}.{name}" if name else None
    if len(mlp) == 2:  # OPT-like fc1/fc2 directly in the block (found only when they are linear in every block)
        out["up_proj"], out["down_proj"] = mlp
    return out
