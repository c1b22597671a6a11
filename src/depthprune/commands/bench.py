"""``depthprune bench``: latency, throughput and peak memory of one or more models (the first is the baseline)."""

from __future__ import annotations

from pathlib import Path

from depthprune.commands.common import check_output_file
from depthprune.core.io import write_json_atomic, write_text_atomic
from depthprune.core.options import add_options, build, given_options
from depthprune.errors import DepthpruneError
from depthprune.models.options import ModelOptions
from depthprune.speed.options import BenchOptions
from depthprune.speed.report import PLOT_SUFFIXES, markdown_report, markdown_table, plot_latency_throughput
from depthprune.speed.runner import check_source, run_benchmark


def register(sub) -> None:
    p = sub.add_parser("bench", help="inference efficiency: latency / throughput / peak memory vs the first model",
                       description=__doc__)
    p.add_argument("--model", action="append", required=True,
                   help="repeatable; local HF directory, .gguf, hub id, 'gemma-3-270m', or config:PATH[,key=value...] "
                        "(random weights from a config.json, e.g. config:experiments/configs/llama-7b.json,"
                        "num_hidden_layers=24). The first model is the baseline for speedups")
    add_options(p, ModelOptions, exclude=("source",))
    add_options(p, BenchOptions)
    p.add_argument("--json", default=None, help="write every setting with raw per-run latencies here "
                                                "(rewritten after each model, so a stopped run keeps its results)")
    p.add_argument("--plot", default=None, help="latency-vs-throughput plot (.png/.pdf/.svg)")
    p.add_argument("--markdown", default=None, help="write the Markdown table here")
    p.set_defaults(func=run)


def _check_outputs(args) -> None:
    for flag, value in (("--json", args.json), ("--plot", args.plot), ("--markdown", args.markdown)):
        check_output_file(flag, value)
    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise DepthpruneError(f"--plot {args.plot}: use one of the suffixes {', '.join(PLOT_SUFFIXES)}")


def run(args) -> int:
    opts = build(BenchOptions, given_options(args, BenchOptions), flags=True)
    load = build(ModelOptions, given_options(args, ModelOptions), flags=True)
    _check_outputs(args)
    for src in args.model:
        check_source(src)

    def save_partial(result: dict) -> None:
        if args.json:
            write_json_atomic(args.json, result)

    result = run_benchmark(args.model, opts, load, on_model_done=save_partial, log=lambda s: print(s, flush=True))
    save_partial(result)
    print()
    print(markdown_table(result))
    if args.markdown:
        write_text_atomic(args.markdown, markdown_report(result))
    if args.plot:
        plot_latency_throughput(result, args.plot)
    written = [p for p in (args.json, args.markdown, args.plot) if p]
    if written:
        print(f"Wrote {', '.join(written)}")
    return 0
