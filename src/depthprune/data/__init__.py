"""Text sources, token windows and calibration sets."""

from depthprune.data.calibration import Calibration, CalibrationSpec, build_calibration
from depthprune.data.sources import NAMED_SOURCES, load_text
from depthprune.data.tokens import eval_windows, sample_windows, tokenize, with_bos

__all__ = [
    "NAMED_SOURCES", "Calibration", "CalibrationSpec", "build_calibration", "eval_windows", "load_text",
    "sample_windows", "tokenize", "with_bos",
]
