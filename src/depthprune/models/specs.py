"""Architecture specs: where each model family keeps its blocks, attention, MLP and per-layer config.

A new family is a new ``ArchSpec`` entry in ``SPECS``, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from depthprune.errors import DepthpruneError


@dataclass(frozen=True)
class ArchSpec:
    """Where the pieces of one ``model_type`` live, as attribute paths from the ``*ForCausalLM`` root."""

    blocks: str
    """Dotted path of the ``nn.ModuleList`` of decoder blocks."""
    attention: tuple[str, ...]
    """Submodules of a block forming its attention branch (the first one holds ``layer_idx``)."""
    mlp: tuple[str, ...]
    """Submodules of a block forming its MLP branch."""
    final_norm: tuple[str, ...]
    """Modules applied, in order, between the last block and the LM head (missing/None ones skipped)."""
    num_layers_key: str = "num_hidden_layers"
    per_layer_keys: tuple[str, ...] = ()
    """Config lists with one entry per block, sliced when blocks are removed."""
    attn_norms: tuple[str, ...] = ()
    """Norms that only feed (or only post-process) the attention branch."""
    mlp_norms: tuple[str, ...] = ()
    """Norms that only feed (or only post-process) the MLP branch."""
    projections: tuple[str, ...] = field(default=())
    """Names of the linear projections inside a block (LoRA targets), relative to the block."""


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
    ),
    "gpt_neox": ArchSpec(
        blocks="gpt_neox.layers",
        attention=("attention",),
        mlp=("mlp",),
        final_norm=("gpt_neox.final_layer_norm",),
        attn_norms=("input_layernorm",),
        mlp_norms=("post_attention_layernorm",),
        projections=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
}


def get_spec(model_type: str) -> ArchSpec:
    """The spec for ``model_type``, or a clear error listing the supported ones."""
    try:
        return SPECS[model_type]
    except KeyError:
        raise DepthpruneError(
            f"unsupported model_type '{model_type}'. Supported: {', '.join(sorted(SPECS))}. "
            "To add one, add an ArchSpec entry to depthprune.models.specs.SPECS "
            "(block list path, attention/MLP submodule names, final norm, per-layer config lists)."
        ) from None


def spec_for(model: nn.Module) -> ArchSpec:
    return get_spec(model.config.model_type)


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
