"""Models dispatched by accelerate (device maps with hooks, offloaded weights) and Taylor's exact protocol."""

from __future__ import annotations

import pytest
import torch
from accelerate import dispatch_model
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from tiny import tiny_model, tiny_tokenizer

from depthprune.data import CalibrationSpec, build_calibration
from depthprune.errors import DepthpruneError
from depthprune.importance import score_model
from depthprune.models import get_blocks
from depthprune.pruning import Target
from depthprune.pruning.iterative import iterative_prune
from depthprune.pruning.width import score_width

IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46, 47, 48]])


def calib(samples=4, seq_len=24):
    return build_calibration(tiny_tokenizer(), CalibrationSpec("war_and_peace", samples, seq_len, 0))


def hooked(model_type="llama"):
    """Every block behind an accelerate device-moving hook, as dispatch_model installs for a GPU device map."""
    model = tiny_model(model_type, layers=4)
    for block in get_blocks(model):
        add_hook_to_module(block, AlignDevicesHook(execution_device="cpu", io_same_device=True))
    return model


def offloaded(tmp_path, model_type="llama"):
    """A multi-entry device map with two blocks offloaded to disk (their weights on the meta device)."""
    model = tiny_model(model_type, layers=4)
    names = [n for n, _ in model.named_children()]
    assert names == ["model", "lm_head"]
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return dispatch_model(model, device_map=dm, main_device="cpu", offload_dir=str(tmp_path / "offload"))


@torch.no_grad()
def logits(model):
    return model(IDS).logits


def test_taylor_keeps_accelerate_hooks_and_scores_as_undispatched():
    cal = calib()
    model = hooked()
    forwards = [b.__dict__["forward"] for b in get_blocks(model)]
    before = logits(model)
    scores = score_model(model, "taylor", cal).scores
    assert [b.__dict__.get("forward") for b in get_blocks(model)] == forwards  # the hooks' forwards are back
    assert all(hasattr(b, "_hf_hook") for b in get_blocks(model))
    assert torch.equal(logits(model), before)
    plain = score_model(tiny_model("llama", layers=4), "taylor", cal).scores
    assert scores == pytest.approx(plain, rel=1e-6)
    width = score_width(model, "taylor-sp", cal)
    assert [b.__dict__.get("forward") for b in get_blocks(model)] == forwards
    plain_width = score_width(tiny_model("llama", layers=4), "taylor-sp", cal)
    assert torch.equal(width.blocks[0]["q"], plain_width.blocks[0]["q"])


def test_forward_criteria_and_iterative_work_on_a_disk_offloaded_model(tmp_path):
    cal = calib()
    plain = tiny_model("llama", layers=4)
    model = offloaded(tmp_path)
    before = logits(model)
    assert torch.allclose(before, logits(plain), atol=1e-6)
    assert score_model(model, "ppl", cal).scores == pytest.approx(score_model(plain, "ppl", cal).scores, rel=1e-5)
    assert torch.equal(logits(model), before)
    with pytest.raises(DepthpruneError, match="offloaded"):
        score_model(model, "taylor", cal)
    assert torch.equal(logits(model), before)
    it = iterative_prune(model, "ppl", cal, Target(num_blocks=2), progress=False)
    ref = iterative_prune(plain, "ppl", cal, Target(num_blocks=2), progress=False)
    assert it.info["removal_order"] == ref.info["removal_order"]
    assert torch.allclose(logits(model), logits(plain), atol=1e-5)


@pytest.mark.parametrize("unit", ["block", "module"])
def test_taylor_is_independent_of_batch_size(unit):
    """As the official code: grad*W summed (signed) over all samples, |.| once; batch 2 and 8 agree."""
    cal = calib(samples=8)
    model = tiny_model("llama", layers=4)
    one = score_model(model, "taylor", cal, unit=unit, batch_size=8).scores
    four = score_model(model, "taylor", cal, unit=unit, batch_size=2).scores
    assert four == pytest.approx(one, rel=1e-5)


@pytest.mark.parametrize("where", ["bf16 weights", "disk-offloaded dispatch"])
def test_ppl_scoring_resumes_on_bf16_and_on_an_offloaded_model(tmp_path, monkeypatch, where):
    """Stopped after its first batch and resumed, ppl scoring equals an uninterrupted run on the same model."""
    import json

    from depthprune.importance import ppl

    model = tiny_model("llama", layers=4).to(torch.bfloat16) if where == "bf16 weights" else offloaded(tmp_path)
    cal = calib(samples=6)
    whole = score_model(model, "ppl", cal, batch_size=2).scores
    state, real, calls = tmp_path / "partial.json", ppl.trace_blocks, []

    def stop_at_second(m, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(m, batch)

    monkeypatch.setattr(ppl, "trace_blocks", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        score_model(model, "ppl", cal, batch_size=2, resume=state)
    assert json.loads(state.read_text())["batches"] == 1
    monkeypatch.setattr(ppl, "trace_blocks", real)
    assert score_model(model, "ppl", cal, batch_size=2, resume=state).scores == pytest.approx(whole, rel=1e-6)
