"""``score``: the one call that scores a model (loaded or by name) with a criterion on calibration text."""

from __future__ import annotations

from pathlib import Path

from depthprune.data.calibration import calibration_for
from depthprune.errors import DepthpruneError
from depthprune.importance.base import BlockScores, resolve_criterion, score_model
from depthprune.models.loading import ensure_loaded


def score(model, tokenizer=None, *, criterion: str = "ppl", calibration=None, unit: str = "block",
          progress: bool = True, resume: str | Path | None = None, **calibration_fields) -> BlockScores:
    """Score every block (or, with ``unit="module"``, every attention and MLP) of ``model``.

    ``model`` is a loaded model or a source (path, hub id, ``.gguf``, ``gemma-3-270m``). ``calibration`` is a
    source name (``war_and_peace``, ``wikitext2``, a file, ``self``), a ``CalibrationSpec`` or a ``Calibration``;
    ``samples``, ``seq_len``, ``seed``, ``text_field``, ``batch_size`` fill the spec. Criteria that need no data
    skip it. ``resume`` (criteria with ``resumable``, e.g. ``ppl``): a file the partial scores are saved to after
    every calibration batch; an interrupted call with the same file continues where it stopped.
    """
    model, tokenizer = ensure_loaded(model, tokenizer)
    crit, _ = resolve_criterion(criterion, "depth")
    if not crit.needs_calibration:
        return score_model(model, criterion, None, unit=unit, progress=progress)
    if resume is not None and not crit.resumable:
        raise DepthpruneError(f"resume: criterion '{criterion}' scores in one pass and cannot resume; drop resume "
                              "or use a resumable criterion (ppl)")
    calib = calibration_for(tokenizer, model, calibration, **calibration_fields)
    extra = {"resume": resume} if resume is not None else {}
    return score_model(model, criterion, calib, unit=unit, batch_size=calib.spec.batch_size, progress=progress,
                       **extra)
