"""Families without a named spec: the spec is inferred from the loaded model, and depth, module and width
pruning work on it; the named specs stay overrides that inference agrees with."""

import copy
from dataclasses import asdict

import pytest
import torch
import torch.nn as nn
from tiny import MODEL_TYPES, tiny_model, tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from depthprune.data import CalibrationSpec, build_calibration
from depthprune.errors import DepthpruneError
from depthprune.importance import score_model
from depthprune.models import get_blocks, load_model, spec_for
from depthprune.models.infer_spec import infer_spec
from depthprune.models.infer_trace import _Trace
from depthprune.models.params import count_params
from depthprune.models.specs import SPECS, ArchSpec, final_modules
from depthprune.models.width_layout import model_dims
from depthprune.pruning import Target, remove_blocks, save_checkpoint
from depthprune.pruning.module_surgery import remote_code_files, remove_modules
from depthprune.pruning.width import plan_width, prune_width, score_width

MOE = dict(num_experts_per_tok=2)
OVERRIDES = {
    "mixtral": dict(MOE, num_local_experts=4),
    "qwen2_moe": dict(MOE, num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64),
}
LLAMA_NORMS = (("input_layernorm",), ("post_attention_layernorm",))
# family: (attention norms, MLP norms, final norm) as inferred; every one keeps model.layers/self_attn/mlp
FAMILIES = {
    "gemma": (*LLAMA_NORMS, "model.norm"),
    "granite": (*LLAMA_NORMS, "model.norm"),
    "olmo2": (("post_attention_layernorm",), ("post_feedforward_layernorm",), "model.norm"),  # post-norms only
    "starcoder2": (*LLAMA_NORMS, "model.norm"),  # LayerNorms with bias, c_fc/c_proj MLP
    "mixtral": (*LLAMA_NORMS, "model.norm"),  # MoE, fused experts
    "qwen2_moe": (*LLAMA_NORMS, "model.norm"),  # MoE + shared expert
    "smollm3": (*LLAMA_NORMS, "model.norm"),  # no_rope_layers: a per-layer list
    "cohere": ((), (), "model.norm"),  # parallel block: one input_layernorm shared by both branches
    "stablelm": (*LLAMA_NORMS, "model.norm"),
    "phi": ((), (), "model.final_layernorm"),  # parallel block, dense output projection, fc1/fc2 MLP
    "helium": (*LLAMA_NORMS, "model.norm"),
    "glm": (*LLAMA_NORMS, "model.norm"),  # separate q/k/v, fused gate_up_proj
}
WIDTH_OK = ["glm", "granite", "cohere"]
WIDTH_REFUSED = {"olmo2": r"q_norm.weight has shape \(64,\)",  # RMSNorm over all heads, not per head
                 "starcoder2": "gate/up", "mixtral": "gate/up", "phi": "gate/up"}
MODULE_FAMILIES = ["olmo2", "cohere", "mixtral", "starcoder2", "phi"]
PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44]])


def family_model(model_type: str, **kw):
    return tiny_model(model_type, **{**OVERRIDES.get(model_type, {}), **kw})


def calib():
    return build_calibration(tiny_tokenizer(), CalibrationSpec("war_and_peace", 4, 24, 0))


def greedy(model, use_cache=True, n=10):
    return model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=use_cache, pad_token_id=0)


def test_families_are_beyond_the_named_ones():
    assert not set(FAMILIES) & set(SPECS) and len(FAMILIES) >= 6


@pytest.mark.parametrize("model_type", FAMILIES)
def test_inferred_spec_is_sane(model_type):
    model = family_model(model_type)
    spec = spec_for(model)
    attn_norms, mlp_norms, final = FAMILIES[model_type]
    assert (spec.blocks, spec.attention, spec.mlp) == ("model.layers", ("self_attn",), ("mlp",))
    assert (spec.attn_norms, spec.mlp_norms, spec.final_norm) == (attn_norms, mlp_norms, (final,))
    assert spec.num_layers_key == "num_hidden_layers"
    blocks = get_blocks(model)
    assert len(blocks) == 6 and blocks is model.model.layers
    for block in blocks:
        for path in spec.attention + spec.mlp + spec.attn_norms + spec.mlp_norms + spec.projections:
            assert isinstance(block.get_submodule(path), nn.Module)
    assert final_modules(model) == [model.get_submodule(final)]
    per_layer = {k for k, v in model.config.to_dict().items() if isinstance(v, list) and len(v) == 6}
    assert per_layer <= set(spec.per_layer_keys)
    # LoRA targets: the attention and MLP linears, no MoE router
    leaves = {p.rsplit(".", 1)[-1] for p in spec.projections}
    assert {"q_proj", "k_proj", "v_proj"} <= leaves and not leaves & {"gate", "shared_expert_gate"}
    assert spec_for(model) is spec_for(model)  # cached


@pytest.mark.parametrize("model_type", FAMILIES)
def test_depth_prune_save_reload_same_generation(model_type, tmp_path):
    model = family_model(model_type)
    remove_blocks(model, [1, 4])
    assert len(get_blocks(model)) == 4 == model.config.num_hidden_layers
    for new, block in enumerate(get_blocks(model)):
        assert block.self_attn.layer_idx == new
    expected = greedy(model)
    assert torch.equal(greedy(model, use_cache=False), expected)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "p", {})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert reloaded.config.num_hidden_layers == 4 and count_params(reloaded) == count_params(model)
    assert torch.equal(greedy(reloaded), expected)
    assert torch.equal(greedy(reloaded, use_cache=False), expected)  # the KV cache addresses the right layers
    assert torch.equal(greedy(load_model(str(tmp_path / "p"), device="cpu").model), expected)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_scoring_works(model_type):
    model = family_model(model_type)
    cal = calib()
    cached = score_model(model, "ppl", cal).scores
    naive = score_model(model, "ppl", cal, cache_prefix=False).scores  # only equal if the final norm is right
    assert cached == pytest.approx(naive, rel=1e-4)
    mag = score_model(model, "magnitude").scores
    assert len(cached) == len(mag) == 6 and all(torch.isfinite(torch.tensor(cached + mag)))
    assert len(get_blocks(model)) == 6


def _zero_branches(model, attn_block: int, mlp_block: int):
    """The dense model with block ``attn_block``'s attention output and ``mlp_block``'s MLP output zeroed."""
    ref = copy.deepcopy(model)
    blocks = get_blocks(ref)
    spec = spec_for(ref)
    with torch.no_grad():
        for p in blocks[attn_block].get_submodule(spec.o_proj).parameters():
            p.zero_()
        for name, p in blocks[mlp_block].get_submodule(spec.mlp[0]).named_parameters():
            if any(w in name for w in ("down_proj", "c_proj", "fc2")):
                p.zero_()
    return ref


@pytest.mark.parametrize("model_type", MODULE_FAMILIES)
def test_module_pruning_round_trips(model_type, tmp_path):
    model = family_model(model_type)
    zeroed = _zero_branches(model, 1, 2)
    info = remove_modules(model, ["1.attn", "2.mlp"])
    assert info == {"removed_blocks": [], "removed_attn": [1], "removed_mlp": [2]}
    block1 = get_blocks(model)[1]
    assert type(block1.self_attn).__name__ == "SkippedAttention"
    if model_type in ("cohere", "phi"):  # the shared pre-norm still feeds the MLP
        assert type(block1.input_layernorm).__name__ != "Identity"
    with torch.no_grad():  # skipping a branch == its output being zero
        torch.testing.assert_close(model(PROMPT).logits, zeroed(PROMPT).logits, atol=1e-5, rtol=1e-5)
    expected = greedy(model)
    assert torch.equal(greedy(model, use_cache=False), expected)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "m", info, extra_files=remote_code_files(model))
    assert torch.equal(greedy(load_model(str(tmp_path / "m"), device="cpu").model), expected)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    assert torch.equal(greedy(remote), expected)
    assert count_params(remote) == count_params(model)


def _masked_dense(dense, keeps, before):
    ref = copy.deepcopy(dense)
    spec = spec_for(ref)
    with torch.no_grad():
        for block, k in zip(get_blocks(ref), keeps):
            o = block.get_submodule(spec.o_proj).weight
            for h in set(range(before.heads)) - set(k.heads):
                o[:, h * before.head_dim : (h + 1) * before.head_dim] = 0
            down = block.get_submodule(spec.down_proj).weight
            down[:, sorted(set(range(before.channels)) - set(k.channels))] = 0
    return ref


@pytest.mark.parametrize("model_type", WIDTH_OK)
def test_width_prune_inferred_family(model_type, tmp_path):
    model = family_model(model_type, layers=3)
    dense = copy.deepcopy(model)
    plan = plan_width(model, Target(ratio=0.3), round_to=8)
    res = prune_width(model, score_width(model, "wanda-sp", calib()), plan)
    assert count_params(model) == plan.params_after
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, _masked_dense(dense, res.keeps, plan.before)(PROMPT).logits,
                                   atol=1e-5, rtol=1e-5)
    expected = greedy(model)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "w", res.info)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "w").eval()
    assert count_params(reloaded) == plan.params_after and torch.equal(greedy(reloaded), expected)


@pytest.mark.parametrize("model_type", WIDTH_REFUSED)
def test_width_refuses_families_whose_shapes_do_not_fit(model_type):
    with pytest.raises(DepthpruneError, match=f"width pruning does not support model_type '{model_type}'.*"
                                              f"{WIDTH_REFUSED[model_type]}"):
        model_dims(family_model(model_type, layers=2))


class _Toy(nn.Module):
    def __init__(self, lists: int):
        super().__init__()
        self.config = AutoConfig.for_model("llama", num_hidden_layers=3)
        self.config.model_type = "toy"
        for i in range(lists):
            setattr(self, f"stack{i}", nn.ModuleList(nn.Linear(2, 2) for _ in range(3)))
        self.other = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))


def test_refuses_a_model_without_an_unambiguous_block_list():
    with pytest.raises(DepthpruneError, match=r"_Toy \(model_type 'toy'\).*no nn.ModuleList has as many entries"
                                              r".*other \(5\).*num_hidden_layers=3.*ArchSpec"):
        spec_for(_Toy(0))
    with pytest.raises(DepthpruneError, match="several nn.ModuleLists .*stack0, stack1"):
        spec_for(_Toy(2))
    xlm = AutoModelForCausalLM.from_config(AutoConfig.for_model("xlm", emb_dim=32, n_layers=2, n_heads=2,
                                                                vocab_size=100))
    with pytest.raises(DepthpruneError, match="XLMWithLMHeadModel.*transformer.attentions, transformer.layer_norm1"):
        spec_for(xlm)


def test_module_pruning_refuses_blocks_without_attention_or_mlp():
    from depthprune.models import infer_spec as inf

    model = family_model("gemma", layers=2)
    inf._BY_MODEL[model] = ArchSpec(**{**asdict(spec_for(model)), "attention": ()})
    with pytest.raises(DepthpruneError, match="no attention submodule was found"):
        remove_modules(model, ["0.attn"])


# the 9 named specs as they were before inference existed (fields of that time)
_LLAMA = dict(blocks="model.layers", attention=("self_attn",), mlp=("mlp",), final_norm=("model.norm",),
              num_layers_key="num_hidden_layers", per_layer_keys=(), attn_norms=("input_layernorm",),
              mlp_norms=("post_attention_layernorm",),
              projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
_GEMMA = dict(_LLAMA, attn_norms=("input_layernorm", "post_attention_layernorm"),
              mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"), per_layer_keys=("layer_types",))
OLD_SPECS = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": dict(_LLAMA, per_layer_keys=("layer_types",)),
    "qwen3": dict(_LLAMA, per_layer_keys=("layer_types",)), "gemma2": _GEMMA, "gemma3_text": _GEMMA,
    "phi3": dict(_LLAMA, projections=("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")),
    "opt": dict(blocks="model.decoder.layers", attention=("self_attn",), mlp=("fc1", "fc2"),
                final_norm=("model.decoder.final_layer_norm", "model.decoder.project_out"),
                num_layers_key="num_hidden_layers", per_layer_keys=(), attn_norms=("self_attn_layer_norm",),
                mlp_norms=("final_layer_norm",),
                projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                             "fc1", "fc2")),
    "gpt_neox": dict(blocks="gpt_neox.layers", attention=("attention",), mlp=("mlp",),
                     final_norm=("gpt_neox.final_layer_norm",), num_layers_key="num_hidden_layers", per_layer_keys=(),
                     attn_norms=("input_layernorm",), mlp_norms=("post_attention_layernorm",),
                     projections=("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                  "mlp.dense_4h_to_h")),
}
WIDTH_FIELDS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
                "gate_up_proj")


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_named_specs_are_unchanged_overrides_that_inference_agrees_with(model_type):
    assert set(OLD_SPECS) == set(SPECS)
    named = asdict(SPECS[model_type])
    assert {k: v for k, v in named.items() if k not in WIDTH_FIELDS} == OLD_SPECS[model_type]
    model = tiny_model(model_type)
    assert spec_for(model) is SPECS[model_type]  # the override wins, no inference
    inferred = asdict(infer_spec(model))
    for key in ("blocks", "attention", "mlp", "attn_norms", "mlp_norms", "num_layers_key", "per_layer_keys",
                *WIDTH_FIELDS):
        assert inferred[key] == named[key], key
    assert set(inferred["projections"]) == set(named["projections"])
    present = [p for p in named["final_norm"] if getattr(model.get_submodule(p.rpartition(".")[0]),
                                                         p.rpartition(".")[2], None) is not None]
    assert list(inferred["final_norm"]) == present  # OPT's project_out is None in this config


def test_opt_final_chain_includes_project_out():
    model = tiny_model("opt", word_embed_proj_dim=32)
    assert infer_spec(model).final_norm == ("model.decoder.final_layer_norm", "model.decoder.project_out")


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "opt", "gpt_neox", "olmo2", "gemma", "starcoder2"])
def test_names_alone_agree_with_the_trace(model_type, monkeypatch):
    """Without a trace (meta weights, a failing forward) names decide; they agree where blocks are sequential."""
    model = family_model(model_type)
    traced = infer_spec(model)
    monkeypatch.setattr(_Trace, "run", classmethod(lambda cls, *a: None))
    by_name = infer_spec(model)
    assert (by_name.attn_norms, by_name.mlp_norms) == (traced.attn_norms, traced.mlp_norms)
    assert by_name.final_norm == traced.final_norm[:1]


def test_meta_device_model_is_inferred_by_name():
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(family_model("olmo2", layers=2).config)
    spec = infer_spec(model)
    assert (spec.blocks, spec.attn_norms, spec.mlp_norms) == (
        "model.layers", ("post_attention_layernorm",), ("post_feedforward_layernorm",))


def test_cache_is_per_class_and_config():
    seq, par = family_model("stablelm", layers=2), family_model("stablelm", layers=2, use_parallel_residual=True)
    assert spec_for(seq).mlp_norms == ("post_attention_layernorm",)
    assert spec_for(par).attn_norms == () and spec_for(par).mlp_norms == ()  # input_layernorm shared
    assert spec_for(family_model("stablelm", layers=2, seed=1)) is spec_for(seq)  # same class + config: reused


def test_lora_default_targets_come_from_the_inferred_spec():
    from depthprune.retraining.lora import default_targets

    assert default_targets(family_model("qwen2_moe", layers=2)) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert default_targets(family_model("phi", layers=2)) == ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]


def test_dense_then_moe_blocks(tmp_path):
    """Qwen2-MoE with dense MLPs in blocks 0 and 3: width names need every block (refused), depth pruning
    renumbers mlp_only_layers and the reload matches."""
    model = family_model("qwen2_moe", mlp_only_layers=[0, 3])
    assert type(get_blocks(model)[0].mlp).__name__ != type(get_blocks(model)[1].mlp).__name__
    assert spec_for(model).gate_proj is None
    with pytest.raises(DepthpruneError, match="gate/up"):
        model_dims(model)
    remove_blocks(model, [1, 3])
    assert model.config.mlp_only_layers == [0]
    expected = greedy(model)
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "p", {})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    assert torch.equal(greedy(reloaded), expected) and torch.equal(greedy(reloaded, use_cache=False), expected)
