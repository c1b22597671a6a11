"""``ArchSpec``: where one model family keeps its blocks, attention, MLP, norms and per-layer config (data only)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    q_proj: str | None = None
    """Width pruning's projections, relative to the block (None when absent): separate query/key/value ..."""
    k_proj: str | None = None
    v_proj: str | None = None
    o_proj: str | None = None
    qkv_proj: str | None = None
    """... or one fused projection whose rows are [all query heads | all key heads | all value heads]."""
    gate_proj: str | None = None
    up_proj: str | None = None
    down_proj: str | None = None
    gate_up_proj: str | None = None
    """A fused MLP input projection whose rows are [gate | up]."""
