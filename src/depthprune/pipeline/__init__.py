"""One-command experiments: a YAML file describes prune → retrain → evaluate → bench; a run resumes where it stopped.

``load_config`` validates a YAML file (every bad field reported with its dotted path), ``run_experiment``
plans the stages, skips those already done with the same settings, and runs the rest.
"""

from depthprune.pipeline.config import ExperimentConfig, Leaf
from depthprune.pipeline.load import load_config, parse_config
from depthprune.pipeline.runner import Plan, RunSummary, plan_experiment, run_experiment

__all__ = ["ExperimentConfig", "Leaf", "Plan", "RunSummary", "load_config", "parse_config", "plan_experiment",
           "run_experiment"]
