"""Inference efficiency: latency / throughput / peak memory per (batch, length), and the ideal-speedup model."""

from depthprune.speed.ideal import CostModel, attention_flops_per_token, cost_model
from depthprune.speed.measure import generate_exact, is_oom, make_prompt, measure_setting
from depthprune.speed.options import BenchOptions
from depthprune.speed.report import add_comparisons, markdown_report, markdown_table, plot_latency_throughput
from depthprune.speed.runner import bench, parse_int_list, run_benchmark
from depthprune.speed.sources import load_bench_model

__all__ = [
    "BenchOptions", "CostModel", "add_comparisons", "attention_flops_per_token", "bench", "cost_model",
    "generate_exact", "is_oom", "load_bench_model", "make_prompt", "markdown_report", "markdown_table",
    "measure_setting", "parse_int_list", "plot_latency_throughput", "run_benchmark",
]
