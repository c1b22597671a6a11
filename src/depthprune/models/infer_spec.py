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

import torch
import torch.nn as nn

from depthprune.errors import DepthpruneError
from depthprune.models.specs import ArchSpec

log = logging.getLogger(__name__)

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
ATTENTION_NAMES = ("self_attn", "attention", "attn", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "feedforward", "ff", "mlp_block")
MLP_CLASS_WORDS = ("mlp", "moe", "feedforward", "ffn", "expert")
DIRECT_MLP = (("fc1", "fc2"), ("c_fc", "c_proj"), ("dense_h_to_4h", "dense_4h_to_h"))

ATTN_NORM_NAMES = ("input_layernorm", "ln_1", "attention_norm", "attn_norm", "self_attn_layer_norm",
                   "pre_attention_layernorm", "pre_attn_norm", "norm1", "ln_attn", "attention_layernorm",
                   "post_attn_norm", "post_attention_norm", "post_self_attn_layernorm")
MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_feedforward_layernorm", "ln_2", "ffn_norm", "mlp_norm",
                  "norm2", "pre_mlp_layernorm", "post_mlp_layernorm", "ln_mlp", "ffn_layernorm", "post_ffn_norm",
                  "pre_ff_layernorm", "post_ff_layernorm", "final_layer_norm")
AMBIGUOUS_NORM = "post_attention_layernorm"
FEEDFORWARD_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
FINAL_NORM_NAMES = ("norm", "final_norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f", "ln_out")
ROUTER_NAMES = ("gate", "router", "shared_expert_gate", "expert_gate", "moe_gate")
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")

WIDTH_ATTN = {"q_proj": ("q_proj", "query"), "k_proj": ("k_proj", "key"), "v_proj": ("v_proj", "value"),
              "o_proj": ("o_proj", "out_proj", "dense"), "qkv_proj": ("qkv_proj",)}
WIDTH_MLP = {"gate_proj": ("gate_proj",), "up_proj": ("up_proj", "fc1", "c_fc", "dense_h_to_4h"),
             "down_proj": ("down_proj", "fc2", "c_proj", "dense_4h_to_h"), "gate_up_proj": ("gate_up_proj",)}
NOT_PER_LAYER = ("architectures", "eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "forced_decoder_ids", "label2id", "id2label")
SKIPPED_CLASSES = ("SkippedAttention", "SkippedBranch", "Identity")
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


def _in_every_block(blocks, name: str) -> bool:
    return all(isinstance(getattr(b, name, None), nn.Module) for b in blocks)


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
