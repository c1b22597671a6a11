"""depthprune: depth pruning for Hugging Face causal LMs (Shortened LLaMA, Kim et al. 2024)."""

__version__ = "0.1.0"
