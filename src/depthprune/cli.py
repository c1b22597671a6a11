"""The ``depthprune`` command line: thin commands over the pipeline stages."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from depthprune.commands import bench, ppl, prune, quantize, report, retrain, run, samples, score, zeroshot
from depthprune.errors import DepthpruneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="eval_command", required=True)
    ppl.register(ev)
    zeroshot.register(ev)
    samples.register(ev)
    score.register(sub)
    prune.register(sub)
    bench.register(sub)
    retrain.register(sub)
    quantize.register(sub)
    run.register(sub)
    report.register(sub)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except DepthpruneError as exc:
        if args.verbose:
            raise
        print(f"depthprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("depthprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
