"""The public Python API: the README's block runs as written, and CLI, pipeline and API prune identically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import save_tiny

import depthprune as dp
from depthprune.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


SMALLER = (("samples=10", "samples=2"), ("limit=200", "limit=8"), ("limit=100", "limit=10"),
           ("output_lengths=[128]", "output_lengths=[4]"))
"""Sizes cut so that the block runs in seconds; everything else is the README's text."""


def shrunk(code: str, extra: tuple = ()) -> str:
    for old, new in SMALLER + extra:
        assert old in code, old
        code = code.replace(old, new)
    return code


def run_block(code: str, cwd: Path, monkeypatch) -> dict:
    monkeypatch.chdir(cwd)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own example
    return scope


def test_readme_python_api_block_runs_on_a_tiny_model(tmp_path, monkeypatch):
    src = save_tiny("gemma3_text", tmp_path / "tiny", layers=8, max_position_embeddings=4096)
    code = shrunk(readme_api_block(), (("max_steps=10", "max_steps=10, batch_size=4"),))
    code = code.replace('"gemma-3-270m"', repr(str(src)))
    scope = run_block(code, tmp_path, monkeypatch)
    result = scope["result"]
    assert len(result.removed) == 4 and result.params_after < result.params_before
    saved = json.loads((tmp_path / "runs" / "p4" / "pruning.json").read_text())
    assert saved["removed_blocks"] == result.removed and saved["source_model"] == str(src)
    assert scope["scores"].criterion == "taylor" and len(scope["scores"].scores) == 8
    assert [m["num_blocks"] for m in scope["speed"]["models"]] == [8, 4]
    assert scope["tuned"].summary["steps"] == 10 and scope["tuned"].model is result.model


@pytest.mark.real_model
def test_readme_python_api_block_runs_on_the_embedded_model(tmp_path, monkeypatch):
    """As written, with smaller sizes only (fewer windows, examples, tokens and steps) to stay in minutes."""
    code = shrunk(readme_api_block(), (("max_steps=10", "max_steps=1, batch_size=4"),))
    code = code.replace('criterion="ppl", num_blocks=4', 'criterion="ppl", num_blocks=4, samples=2, seq_len=32')
    scope = run_block(code, tmp_path, monkeypatch)
    assert len(scope["result"].removed) == 4 and scope["result"].params_after < 250_000_000
    assert (tmp_path / "runs" / "p4" / "model.safetensors").is_file()


def test_cli_pipeline_and_api_prune_identically(tmp_path, monkeypatch):
    src = save_tiny("llama", tmp_path / "src", layers=8)
    calib = {"calibration": "war_and_peace", "samples": 4, "seq_len": 16}
    api = dp.prune(str(src), criterion="taylor+", num_blocks=2, log=None, **calib)
    api.save(tmp_path / "api")
    assert main(["prune", "--model", str(src), "--criterion", "taylor+", "--num-blocks", "2", "--calib",
                 "war_and_peace", "--calib-samples", "4", "--calib-seq-len", "16", "--eval-windows", "0",
                 "--output", str(tmp_path / "cli")]) == 0
    cfg = {"name": "same", "model": {"source": str(src), "device": "cpu"},
           "calibration": {"source": "war_and_peace", "samples": 4, "seq_len": 16},
           "prune": {"criterion": "taylor+", "target": {"num_blocks": 2}}}
    (tmp_path / "same.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "same.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 0
    dirs = [tmp_path / "api", tmp_path / "cli", tmp_path / "runs" / "same" / "pruned"]
    infos = [json.loads((d / "pruning.json").read_text()) for d in dirs]
    assert api.removed == [4, 5]  # "+" protects the first 4 and last 2 of the 8 blocks on every path
    assert all(i["removed_blocks"] == [4, 5] and i["protected_blocks"] == [0, 1, 2, 3, 6, 7] for i in infos)
    weights = [load_file(str(d / "model.safetensors")) for d in dirs]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in other)
