"""Loading through the user path, architecture specs, and bad model sources."""

import pytest
import torch
from tiny import MODEL_TYPES, tiny_config

from depthprune.errors import DepthpruneError
from depthprune.models import get_blocks, get_spec, load_model, spec_for
from depthprune.models.specs import SPECS


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_load_dir_forward_and_spec(tiny_dirs, model_type):
    lm = load_model(str(tiny_dirs[model_type]), dtype="float32", device="cpu")
    assert lm.model.config.model_type == model_type
    out = lm.model(torch.tensor([[1, 5, 6, 7]]))
    assert torch.isfinite(out.logits).all()
    spec = spec_for(lm.model)
    blocks = get_blocks(lm.model)
    assert len(blocks) == lm.model.config.num_hidden_layers == 6
    for block in blocks:
        for path in spec.attention + spec.mlp + spec.attn_norms + spec.mlp_norms + spec.projections:
            assert block.get_submodule(path) is not None


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_spec_lists_every_per_layer_config_list(model_type):
    """Any config list with one entry per block must be named in the spec (or surgery would miss it)."""
    cfg = tiny_config(model_type, layers=7).to_dict()
    per_layer = {k for k, v in cfg.items() if isinstance(v, list) and len(v) == 7}
    assert per_layer <= set(SPECS[model_type].per_layer_keys)


def test_unsupported_model_type_lists_supported():
    with pytest.raises(DepthpruneError, match="Supported: .*llama.*add an ArchSpec"):
        get_spec("mamba")


@pytest.mark.parametrize(
    "src, message",
    [
        ("/nonexistent/model", "no such file or directory"),
        ("./missing.gguf", "no such .gguf file"),
    ],
)
def test_bad_model_sources(src, message):
    with pytest.raises(DepthpruneError, match=message):
        load_model(src, device="cpu")


def test_dir_without_config(tmp_path):
    with pytest.raises(DepthpruneError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_unsupported_model_type_dir(tmp_path):
    """Unnamed families are inferred; XLM keeps 4 lists of n_layers entries (no unambiguous block list)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("xlm", emb_dim=32, n_layers=2, n_heads=2, vocab_size=100)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(DepthpruneError, match="model_type 'xlm'.*several nn.ModuleLists.*transformer.attentions"):
        load_model(str(tmp_path), device="cpu")


def test_offline_hub_id_names_the_id(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it too
    with pytest.raises(DepthpruneError, match="someorg/some-model.*local"):
        load_model("someorg/some-model", device="cpu")


def test_device_policy_keeps_a_model_that_fits_on_one_gpu():
    from depthprune.models.placement import plan_device_map

    gib = 2**30
    assert plan_device_map("auto", 1 * gib, []) is None  # no GPU: the CPU
    assert plan_device_map("cpu", 1 * gib, [80 * gib] * 8) is None
    assert plan_device_map("auto", 1 * gib, [80 * gib] * 8) == {"": 0}  # a 270M model stays on one GPU
    assert plan_device_map("auto", 1 * gib, [10 * gib, 40 * gib]) == {"": 1}  # the GPU with the most room
    assert plan_device_map("cuda", 13 * gib, [24 * gib, 24 * gib]) == {"": 0}
    assert plan_device_map("auto", 30 * gib, [24 * gib, 24 * gib]) == "auto"  # too large for one: split
    assert plan_device_map("auto", 21 * gib, [24 * gib]) == "auto"  # over 85% of the free memory: split/offload
    assert plan_device_map("multi", 1 * gib, [80 * gib] * 2) == "auto"  # asked for
    with pytest.raises(DepthpruneError, match="no CUDA device"):
        plan_device_map("multi", 1 * gib, [])
    with pytest.raises(DepthpruneError, match="not one of"):
        plan_device_map("gpu", 1 * gib, [])


def test_model_bytes_estimate_matches_the_real_model():
    from tiny import tiny_config, tiny_model

    from depthprune.models import count_params
    from depthprune.models.placement import estimate_model_bytes

    for mt in ("llama", "gemma3_text"):
        n = count_params(tiny_model(mt))
        assert estimate_model_bytes(tiny_config(mt), torch.bfloat16) == 2 * n


def test_auto_dtype_on_cpu_is_what_the_help_says(monkeypatch):
    """--dtype auto on a CPU: float32 even where bf16 is native (bf16 changed which blocks ppl scoring removes,
    docs/results/dtype_gemma3_270m.md), and the option's help text says so."""
    import torch

    from depthprune.models import placement
    from depthprune.models.options import DTYPE_HELP

    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: True)
    assert placement.resolve_dtype("auto", "cpu") is torch.float32
    assert "on CPUs float32" in DTYPE_HELP
    assert placement.resolve_dtype("bfloat16", "cpu") is torch.bfloat16
