"""Model loading, dtype/device placement, architecture specs and parameter accounting."""

from depthprune.models.loading import LoadedModel, ensure_loaded, input_device, load, load_model, model_source
from depthprune.models.params import block_params, count_params
from depthprune.models.specs import SPECS, ArchSpec, get_blocks, get_spec, spec_for

__all__ = ["SPECS", "ArchSpec", "LoadedModel", "block_params", "count_params", "ensure_loaded", "get_blocks",
           "get_spec", "input_device", "load", "load_model", "model_source", "spec_for"]
