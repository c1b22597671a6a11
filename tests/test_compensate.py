"""Training-free linear compensation (``prune --compensate linear``) on tiny llama and gemma3_text models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import SAMPLE_TEXT, save_tiny, tiny_model, tiny_tokenizer

from depthprune.cli import main
from depthprune.core.kd_loss import sequence_kl
from depthprune.core.loss import sequence_nll
from depthprune.errors import DepthpruneError
from depthprune.models.specs import get_blocks
from depthprune.models.trace import trace_blocks
from depthprune.pruning.compensate import (
    DEFAULT_RIDGE,
    WRITERS,
    block_spans,
    compensate_removed,
    snapshot_blocks,
)
from depthprune.pruning.surgery import remove_blocks

CALIB = ["--criterion", "ppl", "--calib-samples", 12, "--calib-seq-len", 32, "--eval-windows", 0,
         "--protect-first", 1]


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Tiny 6-block llama and gemma3_text models trained briefly on the sample text, so that their NLL on it
    means something (a random model's NLL is no yardstick for what pruning loses)."""
    root = tmp_path_factory.mktemp("compensate")
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    models = {}
    for mt in ("llama", "gemma3_text"):
        models[mt] = root / f"{mt}_trained"
        assert run("retrain", "cpt", "--model", save_tiny(mt, root / mt, layers=6), "--data", text, "--output",
                   models[mt], "--max-steps", 40, "--seq-len", 32, "--batch-size", 4, "--micro-batch-size", 4,
                   "--lr", "3e-3", "--warmup-steps", 2, "--no-progress", "--save-every", 0) == 0
    return {"root": root, "text": text, **models}


def _calibration_ids(n: int = 12, seq: int = 32, seed: int = 0) -> torch.Tensor:
    """Calibration windows of the sample text, drawn as ``prune --calib <sample text file>`` draws them."""
    from depthprune.data.tokens import bos_id, sample_windows, tokenize, with_bos

    tok = tiny_tokenizer()
    return with_bos(sample_windows(tokenize(tok, SAMPLE_TEXT), n, seq, seed), bos_id(tok))


def _nll_kl(path: Path, ids: torch.Tensor, reference: Path) -> tuple[float, float]:
    """Token-mean NLL of ``path`` on ``ids``, and its KL from the ``reference`` (unpruned) model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        total, count = sequence_nll(model, ids)
    return float(total) / count, sequence_kl(model, AutoModelForCausalLM.from_pretrained(reference).eval(), ids)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_compensated_checkpoint_is_stock_same_size_and_lowers_calibration_nll(files, model_type):
    from transformers import AutoModelForCausalLM

    root, src = files["root"], files[model_type]
    plain, comp = root / f"{model_type}_plain", root / f"{model_type}_comp"
    common = ["prune", "--model", src, *CALIB, "--calib", files["text"], "--num-blocks", 2]
    assert run(*common, "--output", plain) == 0
    assert run(*common, "--output", comp, "--compensate", "linear", "--compensate-ridge", 0) == 0
    a = AutoModelForCausalLM.from_pretrained(plain)
    b = AutoModelForCausalLM.from_pretrained(comp)  # plain transformers, no remote code
    assert type(a) is type(b) and b.config.num_hidden_layers == 4
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    wa, wb = load_file(plain / "model.safetensors"), load_file(comp / "model.safetensors")
    assert wa.keys() == wb.keys()
    changed = sorted(k for k in wa if not torch.equal(wa[k], wb[k]))
    info = json.loads((comp / "pruning.json").read_text())
    c = info["compensation"]
    writer = WRITERS[model_type]
    assert c["mode"] == writer.mode and c["writer"] == writer.path and c["ridge"] == 0
    kept = info["kept_blocks"]
    # only the writers of the blocks fused into changed (current numbering of the kept blocks)
    fused = [kept.index(s["fused_into"]) for s in c["spans"]]
    assert changed == sorted(f"model.layers.{i}.{writer.path}.weight" for i in fused)
    assert [r for s in c["spans"] for r in s["removed"]] == info["removed_blocks"]
    for span in c["spans"]:
        assert span["fused_into"] == span["removed"][0] - 1 and span["mse_after"] < span["mse_before"]
    assert c["calibration"]["samples"] == 12 and c["calibration"]["num_tokens"] == 12 * 33
    ids = _calibration_ids()  # the windows the fit saw
    (nll_plain, kl_plain), (nll_comp, kl_comp) = _nll_kl(plain, ids, src), _nll_kl(comp, ids, src)
    assert nll_comp < nll_plain - 0.02 and kl_comp < 0.9 * kl_plain, (nll_plain, nll_comp, kl_plain, kl_comp)


class _ExactBlock(torch.nn.Module):
    """A stand-in for block ``i+1``: returns ``Y + M T`` from block ``i``'s output ``Y + M`` (M recorded by a hook),
    i.e. exactly what a fitted map fused into block ``i`` can produce."""

    def __init__(self, writer_module, mode: str, t: torch.Tensor):
        super().__init__()
        self.mode, self.t, self.m = mode, t, None
        writer_module.register_forward_hook(self._record)

    def _record(self, module, args, out):
        self.m = out

    def forward(self, hidden_states, *args, **kwargs):
        m = self.m.reshape(hidden_states.shape)
        extra = m @ (self.t - torch.eye(self.t.shape[0])) if self.mode == "full" else m * (self.t - 1)
        return hidden_states + extra


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_exactly_linear_removed_block_is_recovered_exactly(model_type):
    torch.manual_seed(0)
    model = tiny_model(model_type, layers=5)
    writer = WRITERS[model_type]
    blocks = get_blocks(model)
    d = model.config.hidden_size
    maps = {}
    for i in (1, 3):  # blocks 2 and 4 become exactly compensable by blocks 1 and 3
        t = torch.eye(d) + 0.4 * torch.randn(d, d) / d**0.5 if writer.mode == "full" else 1 + 0.3 * torch.randn(d)
        maps[i] = t
        blocks[i + 1] = _ExactBlock(blocks[i].get_submodule(writer.path), writer.mode, t)
    ids = _calibration_ids(8, 32)
    held_out = torch.randint(4, 320, (2, 40))
    with torch.no_grad():
        want = model(held_out).logits
    before = {i: blocks[i].get_submodule(writer.path).weight.detach().clone() for i in maps}
    snap = snapshot_blocks(model)
    remove_blocks(model, [2, 4])
    with torch.no_grad():
        uncompensated = model(held_out).logits
    info = compensate_removed(model, snap, [2, 4], ids, ridge=0.0, batch_size=3, progress=False)
    with torch.no_grad():
        got = model(held_out).logits
    assert model.config.num_hidden_layers == 3 and len(get_blocks(model)) == 3
    scale = float(want.abs().max())
    assert float((uncompensated - want).abs().max()) > 1e-2 * scale  # the cut does matter
    assert float((got - want).abs().max()) < 1e-5 * scale, float((got - want).abs().max())
    assert [s["fused_into"] for s in info["spans"]] == [1, 3]
    for span, i in zip(info["spans"], (1, 3)):
        assert span["relative_residual"] < 1e-9
        w = snap.blocks[i].get_submodule(writer.path).weight.detach()
        if writer.mode == "full":
            assert torch.allclose(w, maps[i].t() @ before[i], atol=1e-5)
        else:
            assert span["norm_form"] == "offset"
            assert torch.allclose(w, (1 + before[i]) * maps[i] - 1, atol=1e-5)


def test_spans_in_order_on_compensated_activations_and_block0_skipped():
    """Removed [0, 2, 3, 5] of 6: block 0 cannot be compensated (recorded), [2, 3] goes into 1, [5] into 4, and
    the second fit's recorded residual is the one of the final model (earlier span already compensated)."""
    model = tiny_model("llama", layers=6)
    ids = _calibration_ids(10, 32)
    with torch.no_grad():
        target = trace_blocks(model, ids).output  # input of block 6 = the last block's output
    snap = snapshot_blocks(model)
    remove_blocks(model, [0, 2, 3, 5])
    with pytest.warns(UserWarning, match="start at block 0"):
        info = compensate_removed(model, snap, [0, 2, 3, 5], ids, ridge=1e-3, batch_size=4, progress=False)
    assert info["skipped"][0]["removed"] == [0] and "block 0" in info["skipped"][0]["reason"]
    assert [(s["removed"], s["fused_into"]) for s in info["spans"]] == [([2, 3], 1), ([5], 4)]
    with torch.no_grad():
        final = trace_blocks(model, ids).output  # output of kept block 4, now the last one
    mse = float(((final - target).double() ** 2).mean())
    assert abs(mse - info["spans"][1]["mse_after"]) < 1e-6 * mse
    assert info["spans"][1]["mse_after"] < info["spans"][1]["mse_before"]
    assert block_spans([7, 1, 2, 9, 8]) == [(1, 2), (7, 9)]


def test_non_additive_layout_is_refused_and_weights_restored():
    """A block whose output is not residual + writer output: the post-fusion check refuses and undoes."""
    model = tiny_model("llama", layers=4)
    blocks = get_blocks(model)
    forward = blocks[1].forward
    blocks[1].forward = lambda *a, **k: torch.tanh(forward(*a, **k))  # a norm-like squash after the residual add
    w = blocks[1].mlp.down_proj.weight.detach().clone()
    snap = snapshot_blocks(model)
    remove_blocks(model, [2])
    with pytest.raises(DepthpruneError, match="does not add mlp.down_proj straight into the residual stream"):
        compensate_removed(model, snap, [2], _calibration_ids(6, 32), ridge=0.0, progress=False)
    assert torch.equal(blocks[1].mlp.down_proj.weight, w) and len(get_blocks(model)) == 3
    with pytest.raises(DepthpruneError, match="no block was removed"):
        compensate_removed(model, snap, [], _calibration_ids(6, 32))
    with pytest.raises(DepthpruneError, match="not its snapshot's minus blocks"):  # block 2 was removed, not 3
        compensate_removed(model, snap, [3], _calibration_ids(6, 32))


@pytest.mark.parametrize("case", ["module", "width", "ridge", "post_norm_opt", "samples"])
def test_bad_compensation_input_is_a_clear_error(files, case, capsys):
    root = files["root"]
    out = root / f"bad_{case}"
    base = ["prune", "--model", files["llama"], "--calib", files["text"], "--calib-samples", 4, "--calib-seq-len", 16,
            "--eval-windows", 0, "--num-blocks", 1, "--output", out, "--compensate", "linear"]
    argv, expected = {
        "module": (base + ["--unit", "module", "--criterion", "ppl"], "it needs method depth and unit block"),
        "width": (base + ["--method", "width", "--criterion", "wanda-sp"], "it needs method depth and unit block"),
        "ridge": (base + ["--compensate-ridge", -1], "--compensate-ridge must be >= 0"),
        "samples": (base + ["--compensate-samples", 0], "--compensate-samples must be >= 1"),
        "post_norm_opt": (["prune", "--model", save_tiny("opt", root / "opt_post", layers=3,
                                                         do_layer_norm_before=False),
                           *base[3:]], "post-norm (do_layer_norm_before=false"),
    }[case]
    assert run(*argv) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_pipeline_compensate_then_kd(files, tmp_path):
    """``compensate: linear`` in the prune spec and a ``kind: kd`` step (teacher from pruning.json)."""
    from depthprune.pipeline import load_config, run_experiment

    cfg = {"name": "comp", "model": {"source": str(files["gemma3_text"]), "device": "cpu"},
           "calibration": {"source": str(files["text"]), "samples": 4, "seq_len": 16, "batch_size": 4},
           "prune": {"criterion": "magnitude", "protect_first": 1, "target": {"num_blocks": 2},
                     "compensate": "linear", "compensate_samples": 6},
           "retrain": [{"kind": "kd", "data": str(files["text"]), "seq_len": 24, "max_steps": 2, "batch_size": 2,
                        "micro_batch_size": 1, "lr": 1e-3, "temperature": 2.0, "save_every": 0}]}
    path = tmp_path / "comp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "comp"
    info = json.loads((run_dir / "pruned" / "pruning.json").read_text())
    assert info["compensation"]["spans"] and info["compensation"]["calibration"]["samples"] == 6
    assert info["compensation"]["ridge"] == DEFAULT_RIDGE
    kd = json.loads((run_dir / "retrained" / "1-kd" / "retrain.json").read_text())
    assert kd["method"] == "kd" and kd["kd"]["temperature"] == 2.0
    assert Path(kd["teacher"]["source"]) == files["gemma3_text"].resolve()
    bad = dict(cfg, prune=dict(cfg["prune"], unit="module"),
               retrain=[{"kind": "kd", "temperature": 0}, {"kind": "kd", "rank": 4}, {"kind": "cpt", "ce_weight": 0.5}])
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(DepthpruneError) as err:
        load_config(path)
    for expected in ("prune.compensate: compensation fits removed blocks; it needs method depth and unit block",
                     "retrain.0.temperature: must be > 0", "retrain.1.rank: applies with lora: true",
                     "retrain.2.ce_weight: applies to kind kd only"):
        assert expected in str(err.value), (expected, str(err.value))


def test_pipeline_kd_lora_step_merges_its_adapters():
    from depthprune.pipeline.config import retrain_step

    step = retrain_step({"kind": "kd", "lora": True, "rank": 4})
    assert step.merge is True  # later stages load a plain checkpoint, as for kind lora
    assert retrain_step({"kind": "kd"}).merge is False  # full weights: nothing to merge
    with pytest.raises(ValueError, match="must be true: evaluation, benchmark and later steps load the merged"):
        retrain_step({"kind": "kd", "lora": True, "merge": False})
