import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tiny import MODEL_TYPES, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    """A saved tiny checkpoint (model + tokenizer) per supported model_type."""
    root = tmp_path_factory.mktemp("tiny")
    return {mt: save_tiny(mt, root / mt) for mt in MODEL_TYPES}


@pytest.fixture(scope="session")
def embedded():
    """The real embedded model (Gemma 3 270M), loaded once from the cache."""
    from depthprune.models import load_model

    return load_model("gemma-3-270m")


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models run far faster on one thread (above all on a busy 2-core CPU); real-model tests keep all."""
    if request.node.get_closest_marker("real_model"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
