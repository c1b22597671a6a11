"""Width pruning (Wanda-sp, Taylor-sp): exact slicing, stock checkpoints, GQA groups, rounding, bad input."""

import copy
import json

import pytest
import torch
from tiny import SAMPLE_TEXT, save_tiny, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from depthprune.data.calibration import Calibration, CalibrationSpec
from depthprune.errors import DepthpruneError
from depthprune.importance.width import WidthScores
from depthprune.models import block_params, count_params
from depthprune.models.specs import get_blocks
from depthprune.models.width_layout import layout, model_dims
from depthprune.pruning import PRUNING_FILE, Target, save_checkpoint
from depthprune.pruning.width import Dims, head_shapes, plan_width, prune_width, score_width
from depthprune.pruning.width_surgery import apply_width, select_units

PROMPT = torch.tensor([[1, 17, 42, 99, 5, 230, 64]])
GEN = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)


def calib(n: int = 4, seq: int = 24, seed: int = 0) -> Calibration:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 320, (n, seq), generator=g)
    ids[:, 0] = 1
    return Calibration(ids, CalibrationSpec("random", n, seq, seed))


def masked_dense(dense, keeps, before: Dims):
    """The dense model with pruned heads' o_proj columns and pruned channels' down_proj columns zeroed."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for block, k in zip(get_blocks(ref), keeps):
            o = block.self_attn.o_proj.weight
            for h in set(range(before.heads)) - set(k.heads):
                o[:, h * before.head_dim : (h + 1) * before.head_dim] = 0
            down = block.mlp.down_proj.weight
            down[:, sorted(set(range(before.channels)) - set(k.channels))] = 0
    return ref


def check_stock(model, after: Dims) -> None:
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (
        after.heads, after.kv_heads, after.head_dim, after.channels)
    for s in layout(model, after):
        for block in get_blocks(model):
            w = block.get_submodule(s.module).weight
            assert w.shape[s.dim] >= s.offset + s.count * s.size


@pytest.mark.parametrize("model_type, criterion, ratio", [
    ("llama", "wanda-sp", 0.3), ("llama", "taylor-sp", 0.3), ("qwen2", "taylor-sp", 0.3),
    ("gemma3_text", "wanda-sp", 0.35), ("phi3", "taylor-sp", 0.3), ("phi3", "wanda-sp", 0.2),
])
def test_width_prune_is_exact_and_saves_a_stock_model(tmp_path, model_type, criterion, ratio):
    model = tiny_model(model_type, layers=3)
    dense = copy.deepcopy(model)
    plan = plan_width(model, Target(ratio=ratio), round_to=8)
    assert plan.after.heads < plan.before.heads and plan.after.channels < plan.before.channels
    assert plan.params_after <= plan.params_before * (1 - ratio)
    res = prune_width(model, score_width(model, criterion, calib()), plan)
    assert count_params(model) == plan.params_after == res.info["params_after"]
    check_stock(model, plan.after)
    # slicing == zeroing the pruned heads' / channels' output columns of the dense model
    ref = masked_dense(dense, res.keeps, plan.before)
    torch.testing.assert_close(model(PROMPT).logits, ref(PROMPT).logits, atol=1e-5, rtol=1e-5)
    in_memory = model.generate(PROMPT, **GEN)
    out = save_checkpoint(model, tiny_tokenizer(), tmp_path / "w", res.info)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert count_params(reloaded) == plan.params_after
    assert torch.equal(reloaded.generate(PROMPT, **GEN), in_memory)
    info = json.loads((out / PRUNING_FILE).read_text())
    assert info["method"] == "width" and info["criterion"] == criterion
    assert len(info["kept"]) == 3
    assert all(len(k["heads"]) == plan.after.heads and len(k["channels"]) == plan.after.channels
               for k in info["kept"])


def test_gqa_kv_heads_only_go_with_their_whole_group():
    model = tiny_model("llama", layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    before = model_dims(model)
    assert before.group == 4
    # feasible shapes: g kv heads, each with the same number q <= 4 of its own query heads
    assert sorted(head_shapes(before, 8)) == sorted((g * q, g) for g in (1, 2) for q in range(1, 5))
    scores = WidthScores("manual", [
        {"q": torch.tensor([1., 2, 3, 4, 9, 8, 7, 6]), "kv": torch.zeros(2), "ch": torch.arange(128.)},
        {"q": torch.tensor([9., 9, 9, 1, 0, 0, 0, 5]), "kv": torch.tensor([0., 1]), "ch": -torch.arange(128.)},
    ])
    after = Dims(3, 1, 8, 64)
    keeps = select_units(scores, before, after)
    assert (keeps[0].heads, keeps[0].kv_heads) == ([4, 5, 6], [1])
    assert (keeps[1].heads, keeps[1].kv_heads) == ([0, 1, 2], [0])
    assert keeps[0].channels == list(range(64, 128)) and keeps[1].channels == list(range(64))
    dense = copy.deepcopy(model)
    apply_width(model, keeps, before, after)
    check_stock(model, after)
    assert get_blocks(model)[0].self_attn.k_proj.weight.shape == (8, 64)
    assert get_blocks(model)[0].self_attn.num_key_value_groups == 3
    torch.testing.assert_close(model(PROMPT).logits, masked_dense(dense, keeps, before)(PROMPT).logits,
                               atol=1e-5, rtol=1e-5)
    bad = copy.deepcopy(keeps)
    bad[0].heads = [3, 4, 5]  # head 3 belongs to group 0, which is not kept
    with pytest.raises(DepthpruneError, match="equal groups"):
        apply_width(tiny_model("llama", layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8),
                    bad, before, after)


@pytest.mark.parametrize("model_type", ["gemma3_text", "llama"])
def test_plan_skips_head_counts_the_config_rejects(tmp_path, model_type):
    # hidden 64 with head_dim 16: 3 heads is the nearest count at this ratio, but transformers' LLaMA and
    # Gemma 3 configs refuse hidden_size % num_attention_heads != 0 on save and load
    model = tiny_model(model_type, layers=3, num_key_value_heads=1)
    assert (3, 1) in head_shapes(model_dims(model), 8)
    assert (3, 1) not in head_shapes(model_dims(model), 8, model.config)
    plan = plan_width(model, Target(ratio=0.2), round_to=8)
    assert model.config.hidden_size % plan.after.heads == 0
    res = prune_width(model, score_width(model, "wanda-sp", calib()), plan)
    out = save_checkpoint(model, tiny_tokenizer(), tmp_path / "w", res.info)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_attention_heads == plan.after.heads
    assert torch.equal(reloaded.generate(PROMPT, **GEN), model.generate(PROMPT, **GEN))


def test_plan_prunes_query_heads_before_kv_heads():
    model = tiny_model("llama", layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    shapes = {}
    for ratio in (0.1, 0.2, 0.3, 0.4, 0.5):
        p = plan_width(model, Target(ratio=ratio), round_to=8)
        shapes[ratio] = (p.after.heads, p.after.kv_heads)
        assert p.after.heads % p.after.kv_heads == 0
        assert p.after.kv_heads == 2 or p.after.heads < 2 or p.after.heads % 2  # kv pruned only when forced
    assert len(set(shapes.values())) > 2


@pytest.mark.parametrize("round_to", [1, 8, 16])
def test_round_to_keeps_dims_multiples(round_to):
    model = tiny_model("qwen2", layers=3)
    seen = set()
    for ratio in (0.05, 0.13, 0.21, 0.29, 0.37):
        p = plan_width(model, Target(ratio=ratio), round_to=round_to)
        assert p.after.channels % round_to == 0
        assert (p.after.heads * p.after.head_dim) % round_to == 0
        assert (p.after.kv_heads * p.after.head_dim) % round_to == 0
        assert p.params_after <= p.params_before * (1 - ratio)
        seen.add(p.after.channels)
    if round_to == 1:
        assert any(c % 8 for c in seen)
    # head rule when head_dim is not a multiple of round_to: kept dims must still be multiples
    assert all((h * 12) % 8 == 0 and (g * 12) % 8 == 0 for h, g in head_shapes(Dims(8, 4, 12, 64), 8))
    assert (2, 2) in head_shapes(Dims(8, 4, 12, 64), 8) and (3, 3) not in head_shapes(Dims(8, 4, 12, 64), 8)


def test_targets_match_depth_accounting():
    model = tiny_model("gemma3_text", layers=6)
    total, per_block = count_params(model), block_params(model)
    for k in (1, 2):
        p = plan_width(model, Target(num_blocks=k), round_to=8)
        goal = total - k * per_block[0]
        assert p.params_after <= goal
        assert goal - p.params_after < 8 * 6 * p.costs["ch"]  # within one rounding step of the MLP
    p = plan_width(model, Target(target_params=total - 2 * per_block[0]), round_to=1)
    assert total - 2 * per_block[0] - p.params_after < 6 * p.costs["ch"]


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(target=Target(ratio=0.75)), "every attention head"),
    (dict(target=Target(ratio=0.9)), "width pruning cannot reach it"),
    (dict(target=Target(ratio=0.3), protect=(1, 0)), "protect.*cannot be used with --method width"),
    (dict(target=Target(target_params=10**9)), "nothing to prune"),
    (dict(target=Target(ratio=0.2), round_to=0), "--round-to must be"),
    (dict(target=Target(num_blocks=6)), "only 6 blocks"),
])
def test_bad_width_targets_are_clear_errors(kwargs, pattern):
    model = tiny_model("llama", layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DepthpruneError, match=pattern):
        plan_width(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unsupported_family_and_criterion():
    with pytest.raises(DepthpruneError, match="width pruning does not support model_type 'opt'"):
        plan_width(tiny_model("opt", layers=2), Target(ratio=0.2))
    with pytest.raises(DepthpruneError, match="is a depth criterion; with method width choose one of"):
        score_width(tiny_model("llama", layers=2), "ppl", calib())


def test_cli_width_prune(tmp_path, capsys, monkeypatch):
    from depthprune.cli import main

    (tmp_path / "data" / "wikitext2").mkdir(parents=True)  # a short stand-in WikiText-2: fast PPL preview
    (tmp_path / "data" / "wikitext2" / "wiki.test.raw").write_text(SAMPLE_TEXT)
    monkeypatch.setenv("DEPTHPRUNE_DATA", str(tmp_path / "data"))
    src = save_tiny("llama", tmp_path / "src", layers=4)
    argv = ["prune", "--model", str(src), "--method", "width", "--criterion", "wanda-sp", "--num-blocks", "1",
            "--round-to", "8", "--calib", "self", "--calib-samples", "3", "--calib-seq-len", "16",
            "--eval-windows", "2", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Parameters:" in out and "WikiText-2 PPL" in out
    info = json.loads((tmp_path / "out" / PRUNING_FILE).read_text())
    assert info["method"] == "width" and info["shape_after"]["intermediate_size"] % 8 == 0
    assert info["params_after"] <= info["params_before"] - block_params(tiny_model("llama", layers=4))[0]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert count_params(reloaded) == info["params_after"]
    bad = argv[:-1] + [str(tmp_path / "bad")]
    bad[bad.index("wanda-sp")] = "ppl"
    assert main(bad) == 2
    assert "is a depth criterion; with method width" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.real_model
def test_embedded_gemma_width_prune(tmp_path):
    from depthprune.evaluation.perplexity import perplexity_of_windows, windows_for
    from depthprune.models import load_model

    lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
    model = lm.model
    windows = windows_for(lm.tokenizer, "wikitext2", 32, limit=6)
    ids, windows = windows[-3:], windows[:2]
    dense_nll, n = perplexity_of_windows(model, windows, progress=False)
    plan = plan_width(model, Target(num_blocks=4), round_to=8)
    # 3 of 4 heads would be nearest, but Gemma 3's config needs hidden_size (640) % heads == 0
    assert (plan.after.heads, plan.after.kv_heads, plan.after.head_dim) == (4, 1, 256)
    assert plan.after.channels % 8 == 0 and plan.after.channels < 2048
    prune_width(model, score_width(model, "wanda-sp", Calibration(ids, CalibrationSpec("wikitext2", 3, 32))), plan)
    nll, n2 = perplexity_of_windows(model, windows, progress=False)
    dense_ppl, ppl = float(torch.tensor(dense_nll / n).exp()), float(torch.tensor(nll / n2).exp())
    assert dense_ppl < ppl < 50 * dense_ppl
    out = model.generate(ids[:1, :8], max_new_tokens=4, do_sample=False)
    assert out.shape[1] == 12
    saved = save_checkpoint(model, lm.tokenizer, tmp_path / "w", {"method": "width"})
    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    assert torch.equal(reloaded.generate(ids[:1, :8], max_new_tokens=4, do_sample=False), out)


def test_wanda_scope_out_is_reference_and_all_adds_rows():
    from depthprune.importance.width import wanda_sp

    model, ids = tiny_model("qwen2", layers=2), calib().input_ids
    out, full = wanda_sp(model, ids), wanda_sp(model, ids, scope="all")
    assert all(float(b["kv"].abs().sum()) == 0 for b in out) and all(float(b["kv"].min()) > 0 for b in full)
    assert all(bool((f["q"] > o["q"]).all()) and bool((f["ch"] > o["ch"]).all()) for o, f in zip(out, full))
