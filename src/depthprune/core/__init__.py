"""Primitives every stage may use: atomic file writes, vocabulary-sliced losses, block tracing/replay,
skip modules, library versions. Nothing here imports a stage package."""
