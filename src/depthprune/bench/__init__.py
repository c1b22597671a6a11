"""Inference efficiency: latency / throughput / peak memory per (batch, length), and the ideal-speedup model."""

from depthprune.bench.ideal import CostModel, attention_flops_per_token, cost_model
from depthprune.bench.measure import generate_exact, is_oom, make_prompt, measure_setting
from depthprune.bench.report import add_comparisons, markdown_report, markdown_table, plot_latency_throughput
from depthprune.bench.runner import BenchOptions, parse_int_list, run_benchmark
from depthprune.bench.sources import load_bench_model

__all__ = [
    "BenchOptions", "CostModel", "add_comparisons", "attention_flops_per_token", "cost_model", "generate_exact",
    "is_oom", "load_bench_model", "make_prompt", "markdown_report", "markdown_table", "measure_setting",
    "parse_int_list", "plot_latency_throughput", "run_benchmark",
]
