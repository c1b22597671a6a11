"""Evaluation: perplexity (and zero-shot tasks through lm-eval)."""

from depthprune.evaluation.perplexity import PerplexityResult, evaluate_perplexity, windows_for

__all__ = ["PerplexityResult", "evaluate_perplexity", "windows_for"]
