"""``depthprune bench``: latency, throughput and peak memory of one or more models (the first is the baseline)."""

from __future__ import annotations

from pathlib import Path

from depthprune.errors import DepthpruneError
from depthprune.models.loading import DEVICE_HELP, DEVICES


def register(sub) -> None:
    p = sub.add_parser("bench", help="inference efficiency: latency / throughput / peak memory vs the first model",
                       description=__doc__)
    p.add_argument("--model", action="append", required=True,
                   help="repeatable; local HF directory, .gguf, hub id, 'gemma-3-270m', or config:PATH[,key=value...] "
                        "(random weights from a config.json, e.g. config:bench/configs/llama-7b.json,"
                        "num_hidden_layers=24). The first model is the baseline for speedups")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: float32 on CPU, the checkpoint's/config's dtype on GPU)")
    p.add_argument("--device", default="auto", choices=list(DEVICES), help=DEVICE_HELP)
    p.add_argument("--cache-dir", default=None, help="where the embedded model's HF checkpoint is cached")
    p.add_argument("--batch-sizes", default="1,4,16", help="batch sizes M, comma-separated (default 1,4,16)")
    p.add_argument("--output-lengths", default="128,512", help="output lengths L, comma-separated (default 128,512)")
    p.add_argument("--input-tokens", type=int, default=12, help="prompt length (default 12)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per setting (default 10)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per setting (default 20)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", default=None, help="write every setting with raw per-run latencies here "
                                                "(rewritten after each model, so a stopped run keeps its results)")
    p.add_argument("--plot", default=None, help="latency-vs-throughput plot (.png/.pdf/.svg)")
    p.add_argument("--markdown", default=None, help="write the Markdown table here")
    p.set_defaults(func=run)


def _check_outputs(args) -> None:
    for flag, value in (("--json", args.json), ("--plot", args.plot), ("--markdown", args.markdown)):
        if value is not None and Path(value).is_dir():
            raise DepthpruneError(f"{flag} {value} is a directory; give a file path")
    from depthprune.bench.report import PLOT_SUFFIXES

    if args.plot is not None and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise DepthpruneError(f"--plot {args.plot}: use one of the suffixes {', '.join(PLOT_SUFFIXES)}")


def run(args) -> int:
    import torch

    from depthprune.bench import BenchOptions, markdown_report, markdown_table, parse_int_list, run_benchmark
    from depthprune.bench.report import plot_latency_throughput
    from depthprune.commands.common import positive_int
    from depthprune.core.io import write_json_atomic, write_text_atomic

    opts = BenchOptions(parse_int_list("--batch-sizes", args.batch_sizes),
                        parse_int_list("--output-lengths", args.output_lengths),
                        args.input_tokens, args.warmup, args.runs, args.dtype, args.device, args.cache_dir)
    opts.validate()
    positive_int("--threads", args.threads)
    _check_outputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)

    def save_partial(result: dict) -> None:
        if args.json:
            write_json_atomic(args.json, result)

    result = run_benchmark(args.model, opts, on_model_done=save_partial, log=lambda s: print(s, flush=True))
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
