"""Primitives every stage may use: atomic file writes, vocabulary-sliced losses, skip modules, options,
library versions. Nothing here imports a stage package (block tracing needs the architecture spec: models/trace.py)."""
