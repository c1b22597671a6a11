"""What ``pruning.json`` records about the model a checkpoint was pruned from (e.g. the default KD teacher)."""

from __future__ import annotations

from pathlib import Path


def source_record(source: str | None, model) -> dict:
    """``source_model_path``: the absolute path of a local source (None for a hub id or the embedded model), so a
    later ``retrain kd`` finds the teacher from any working directory; ``source_vocab_size``: its head's rows."""
    path = Path(source).expanduser() if source else None
    local = str(path.resolve()) if path is not None and (path / "config.json").is_file() else None
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else None
    return {"source_model_path": local, "source_vocab_size": vocab}
