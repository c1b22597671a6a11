"""Importance criteria, selection, surgery and saving of depth-pruned models."""

import json

import pytest
import torch
from tiny import MODEL_TYPES, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM

from depthprune.data import CalibrationSpec, build_calibration
from depthprune.errors import DepthpruneError
from depthprune.importance import CRITERIA, score_model
from depthprune.importance.base import BlockScores
from depthprune.models import count_params, get_blocks
from depthprune.pruning import Target, prune_blocks, save_checkpoint, select_blocks

ALL_CRITERIA = ["magnitude", "magnitude+", "taylor", "taylor+", "ppl", "block_influence", "angular"]


def calib(seed=0, samples=4, seq_len=24):
    return build_calibration(tiny_tokenizer(), CalibrationSpec("war_and_peace", samples, seq_len, seed))


def test_registry_has_paper_criteria():
    assert {"magnitude", "taylor", "ppl", "block_influence", "angular"} <= set(CRITERIA)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_criterion_scores_every_block(model_type):
    model = tiny_model(model_type)
    cal = calib()
    for name in ALL_CRITERIA:
        s = score_model(model, name, cal, batch_size=2) if name != "magnitude" else score_model(model, name)
        assert len(s.scores) == 6 and all(torch.isfinite(torch.tensor(s.scores))), name
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "opt", "gpt_neox"])
def test_ppl_prefix_cache_equals_naive(model_type):
    model = tiny_model(model_type)
    cal = calib(samples=5)
    cached = score_model(model, "ppl", cal, batch_size=2, cache_prefix=True).scores
    naive = score_model(model, "ppl", cal, batch_size=2, cache_prefix=False).scores
    for a, b in zip(cached, naive):
        assert abs(a - b) / b < 1e-4
    assert len(get_blocks(model)) == 6  # naive path restored the model


def test_taylor_matches_full_gradient():
    """Freed-as-they-arrive gradients give the same scores as a plain full backward."""
    from depthprune.core.loss import sequence_nll

    model = tiny_model("llama")
    cal = calib()
    scores = score_model(model, "taylor", cal, batch_size=16).scores
    nll, n = sequence_nll(model, cal.input_ids)
    (nll / n).backward()
    ref = [sum(float((m.weight.grad * m.weight).abs().sum()) for m in b.modules()
               if isinstance(m, torch.nn.Linear)) for b in get_blocks(model)]
    for a, b in zip(scores, ref):
        assert abs(a - b) / b < 1e-4


def test_same_seed_same_scores_and_selection():
    a = score_model(tiny_model("qwen3"), "ppl", calib(seed=1))
    b = score_model(tiny_model("qwen3"), "ppl", calib(seed=1))
    c = score_model(tiny_model("qwen3"), "ppl", calib(seed=2))
    assert a.scores == b.scores and a.scores != c.scores
    sel = lambda s: select_blocks(s, [1] * 6, 10, Target(num_blocks=2)).removed  # noqa: E731
    assert sel(a) == sel(b)


def _greedy(model, ids, n=12):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prune_save_reload_same_generation(model_type, tmp_path):
    model = tiny_model(model_type, layers=6)
    scores = score_model(model, "magnitude")
    res = prune_blocks(model, scores, Target(num_blocks=2))
    assert len(get_blocks(model)) == 4 == model.config.num_hidden_layers
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "out", res.info)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.config.num_hidden_layers == 4
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    assert torch.equal(_greedy(model, ids), _greedy(reloaded, ids))
    nocache = reloaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                                do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(_greedy(reloaded, ids), nocache)  # the KV cache addresses the right layers
    info = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert info["removed_blocks"] == res.selection.removed and info["params_after"] == count_params(reloaded)


def test_layer_types_sliced_and_layer_idx_renumbered(tmp_path):
    model = tiny_model("gemma3_text", layers=6)
    types = list(model.config.layer_types)
    scores = BlockScores("manual", [5, 0, 5, 5, 0, 5], [str(i) for i in range(6)])
    prune_blocks(model, scores, Target(num_blocks=2))
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 5)]
    assert [b.self_attn.layer_idx for b in get_blocks(model)] == [0, 1, 2, 3]
    assert [b.self_attn.is_sliding for b in get_blocks(model)] == [t == "sliding_attention" for t in
                                                                   model.config.layer_types]


def test_per_layer_config_settings_follow_the_kept_blocks(tmp_path):
    """Qwen 2 with sliding windows above max_window_layers: the lists are sliced, the count renumbered."""
    model = tiny_model("qwen2", layers=6, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    types = list(model.config.layer_types)
    assert types == ["full_attention"] * 3 + ["sliding_attention"] * 3
    model.config.mlp_only_layers = [1, 4]  # an index list (as in Qwen-MoE configs)
    scores = BlockScores("manual", [5, 0, 5, 5, 0, 5], [str(i) for i in range(6)])
    prune_blocks(model, scores, Target(num_blocks=2))
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 5)]
    assert model.config.max_window_layers == 2 and model.config.mlp_only_layers == []
    save_checkpoint(model, tiny_tokenizer(), tmp_path / "q", {})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    assert reloaded.config.layer_types == model.config.layer_types
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])
    nocache = reloaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                use_cache=False, pad_token_id=0)
    assert torch.equal(_greedy(reloaded, ids, 10), nocache)


def test_cached_generation_equals_no_cache_after_pruning():
    model = tiny_model("gemma3_text", layers=6)
    prune_blocks(model, score_model(model, "magnitude"), Target(num_blocks=3))
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])
    cached = _greedy(model, ids, 10)
    nocache = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                             use_cache=False, pad_token_id=0)
    assert torch.equal(cached, nocache)


def test_protection_and_plus_aliases():
    from depthprune.pruning import resolve_protection

    scores = BlockScores("magnitude", [0.0] * 10, [str(i) for i in range(10)])
    sel = select_blocks(scores, [1] * 10, 100, Target(num_blocks=4), *resolve_protection("magnitude+", None, None))
    assert sel.protected == [0, 1, 2, 3, 8, 9] and sel.removed == [4, 5, 6, 7]
    sel = select_blocks(scores, [1] * 10, 100, Target(num_blocks=2), 1, 1)
    assert sel.removed == [1, 2]
    assert resolve_protection("taylor+", 2, None) == (2, 2)


def test_ratio_and_target_params():
    scores = BlockScores("x", [3, 1, 2, 4], ["0", "1", "2", "3"])
    sel = select_blocks(scores, [10] * 4, 100, Target(ratio=0.15))
    assert sel.removed == [1, 2] and sel.params_after == 80
    sel = select_blocks(scores, [10] * 4, 100, Target(target_params=90))
    assert sel.removed == [1] and sel.params_after == 90


@pytest.mark.parametrize(
    "target, protect, message",
    [
        (dict(num_blocks=5), (0, 0), "exceeds the 4 removable"),
        (dict(num_blocks=3), (1, 1), "exceeds the 2 removable"),
        (dict(ratio=1.5), (0, 0), "must lie in"),
        (dict(target_params=50), (0, 0), "below the 60 parameters outside the blocks"),
        (dict(num_blocks=1), (3, 2), "nothing left to remove"),
    ],
)
def test_impossible_targets(target, protect, message):
    scores = BlockScores("x", [3, 1, 2, 4], ["0", "1", "2", "3"])
    with pytest.raises(DepthpruneError, match=message):
        select_blocks(scores, [10] * 4, 100, Target(**target), *protect)


def test_angular_removes_contiguous_span():
    model = tiny_model("llama", layers=8)
    s = score_model(model, "angular", calib())
    sel = select_blocks(s, [1] * 8, 100, Target(num_blocks=3), 1, 1)
    assert sel.removed == list(range(sel.removed[0], sel.removed[0] + 3)) and sel.removed[0] >= 1
    dists = s.metadata["span_distances"]["3"]
    allowed = [i for i in range(len(dists)) if i >= 1 and i + 3 <= 7]
    assert sel.removed[0] == min(allowed, key=lambda i: dists[i])


def test_plus_criterion_protects_through_the_python_entry_points():
    """A Python caller naming taylor+/magnitude+ gets the first 4 / last 2 blocks protected without asking."""
    from depthprune.pruning.iterative import iterative_prune

    cal = calib(samples=2)
    for name in ("magnitude+", "taylor+"):
        model = tiny_model("llama", layers=8)
        res = prune_blocks(model, score_model(model, name, cal), Target(num_blocks=2))
        assert res.selection.protected == [0, 1, 2, 3, 6, 7]
        assert set(res.selection.removed) == {4, 5}
        assert (res.info["protect_first"], res.info["protect_last"]) == (4, 2)
    it = iterative_prune(tiny_model("llama", layers=8), "magnitude+", cal, Target(num_blocks=2), progress=False)
    assert sorted(it.info["removal_order"]) == [4, 5] and it.info["protected_blocks"] == [0, 1, 2, 3, 6, 7]


def test_ppl_scoring_resumes_from_its_partial_sums(tmp_path, monkeypatch):
    """Stopped after 2 of 3 batches, a rerun scores only the last and equals an uninterrupted run; the partial
    file of another calibration set is refused."""
    from depthprune.importance import ppl

    model, cal = tiny_model("gemma3_text"), calib(samples=5)
    whole = score_model(model, "ppl", cal, batch_size=2).scores
    state = tmp_path / "partial.json"
    real, made = ppl.trace_blocks, []

    def stop_after_two(m, batch):
        if len(made) == 2:
            raise KeyboardInterrupt
        made.append(batch.shape[0])
        return real(m, batch)

    monkeypatch.setattr(ppl, "trace_blocks", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        score_model(model, "ppl", cal, batch_size=2, resume=state)
    saved = json.loads(state.read_text())
    assert saved["batches"] == 2 and saved["wall_s"] > 0
    made.clear()
    monkeypatch.setattr(ppl, "trace_blocks", lambda m, batch: made.append(batch.shape[0]) or real(m, batch))
    resumed = score_model(model, "ppl", cal, batch_size=2, resume=state)
    assert made == [1]  # only the last batch (the 5th sample) was traced
    assert resumed.scores == pytest.approx(whole, rel=1e-6)
    meta = resumed.metadata
    assert meta["resumed_from_batch"] == 2 and meta["batches"] == 3 and meta["scoring_wall_s"] > saved["wall_s"]
    with pytest.raises(DepthpruneError, match="another model or calibration set"):
        score_model(model, "ppl", calib(samples=5, seed=3), batch_size=2, resume=state)


def test_score_refuses_resume_for_a_criterion_that_cannot(tmp_path):
    from depthprune.importance.scoring import score

    with pytest.raises(DepthpruneError, match="cannot resume"):
        score(tiny_model("llama"), tiny_tokenizer(), criterion="taylor", calibration=calib(), resume=tmp_path / "x")
