"""Architecture specs: where each model family keeps its blocks, attention, MLP and per-layer config.

Families are data inferred from the loaded model (``depthprune.models.infer_spec``); ``spec_for(model)`` is the
entry point. The named entries of ``SPECS`` are overrides: a ``model_type`` listed there gets that spec as is,
with no inference. Add one where inference guesses wrong or refuses.
"""

from __future__ import annotations

import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.archspec import ArchSpec
from depthprune.models.infer_spec import LAYER_COUNT_KEYS, inferred_spec, layer_counts

_LLAMA_LIKE = dict(
    blocks="model.layers",
    attention=("self_attn",),
    mlp=("mlp",),
    final_norm=("model.norm",),
    attn_norms=("input_layernorm",),
    mlp_norms=("post_attention_layernorm",),
    projections=(
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ),
    q_proj="self_attn.q_proj", k_proj="self_attn.k_proj", v_proj="self_attn.v_proj", o_proj="self_attn.o_proj",
    gate_proj="mlp.gate_proj", up_proj="mlp.up_proj", down_proj="mlp.down_proj",
)
_GEMMA_LIKE = dict(
    _LLAMA_LIKE,
    attn_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    per_layer_keys=("layer_types",),
)

SPECS: dict[str, ArchSpec] = {
    "llama": ArchSpec(**_LLAMA_LIKE),
    "mistral": ArchSpec(**_LLAMA_LIKE),
    "qwen2": ArchSpec(**dict(_LLAMA_LIKE, per_layer_keys=("layer_types",))),
    "qwen3": ArchSpec(**dict(_LLAMA_LIKE, per_layer_keys=("layer_types",))),
    "gemma2": ArchSpec(**_GEMMA_LIKE),
    "gemma3_text": ArchSpec(**_GEMMA_LIKE),
    "phi3": ArchSpec(
        **dict(
            _LLAMA_LIKE,
            projections=("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
            q_proj=None, k_proj=None, v_proj=None, qkv_proj="self_attn.qkv_proj",
            gate_proj=None, up_proj=None, gate_up_proj="mlp.gate_up_proj",
        )
    ),
    "opt": ArchSpec(
        blocks="model.decoder.layers",
        attention=("self_attn",),
        mlp=("fc1", "fc2"),
        final_norm=("model.decoder.final_layer_norm", "model.decoder.project_out"),
        attn_norms=("self_attn_layer_norm",),
        mlp_norms=("final_layer_norm",),
        projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "fc1", "fc2"),
        q_proj="self_attn.q_proj", k_proj="self_attn.k_proj", v_proj="self_attn.v_proj",
        o_proj="self_attn.out_proj", up_proj="fc1", down_proj="fc2",  # no gate: not width-prunable
    ),
    "gpt_neox": ArchSpec(  # LLaMA's norms and MLP name; its own block path, attention name and projections
        **dict(
            _LLAMA_LIKE, blocks="gpt_neox.layers", attention=("attention",), final_norm=("gpt_neox.final_layer_norm",),
            projections=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
            # query_key_value interleaves q/k/v per head (not [Q | K | V]) and the MLP has no gate: no width pruning
            q_proj=None, k_proj=None, v_proj=None, gate_proj=None,
            o_proj="attention.dense", up_proj="mlp.dense_h_to_4h", down_proj="mlp.dense_4h_to_h",
        )
    ),
}


def get_spec(model_type: str) -> ArchSpec:
    """The named (override) spec for ``model_type``, or a clear error; other families: ``spec_for(model)``."""
    try:
        return SPECS[model_type]
    except KeyError:
        raise DepthpruneError(
            f"no named spec for model_type '{model_type}'. Supported: {', '.join(sorted(SPECS))} by name, any "
            "other family by inference from the loaded model (depthprune.models.spec_for(model)). To override "
            "inference, add an ArchSpec entry to depthprune.models.specs.SPECS "
            "(block list path, attention/MLP submodule names, final norm, per-layer config lists)."
        ) from None


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec of ``model``: its named override if ``SPECS`` has its ``model_type``, else inferred from it
    (cached per model and per model class + config); a ``DepthpruneError`` when its blocks cannot be found."""
    named = SPECS.get(getattr(model.config, "model_type", None))
    if named is not None:
        return named
    return inferred_spec(model)


def num_layers_key(config) -> str:
    """The config key holding the block count, from the config alone (named spec, else the first usual key)."""
    named = SPECS.get(getattr(config, "model_type", None))
    if named is not None:
        return named.num_layers_key
    counts = layer_counts(config)
    if not counts:
        raise DepthpruneError(f"model_type '{config.model_type}': the config has no layer count "
                              f"({', '.join(LAYER_COUNT_KEYS)})")
    return next(iter(counts))


def get_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks."""
    return model.get_submodule(spec_for(model).blocks)


def final_modules(model: nn.Module) -> list[nn.Module]:
    """Modules between the last block and the LM head, in order."""
    mods = []
    for path in spec_for(model).final_norm:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if mod is not None:
            mods.append(mod)
    return mods


def num_blocks(model: nn.Module) -> int:
    return len(get_blocks(model))
