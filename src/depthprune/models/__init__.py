"""Model loading and architecture specs."""

from depthprune.models.loading import LoadedModel, input_device, load_model
from depthprune.models.specs import SPECS, ArchSpec, get_blocks, get_spec, spec_for

__all__ = ["SPECS", "ArchSpec", "LoadedModel", "get_blocks", "get_spec", "input_device", "load_model", "spec_for"]
