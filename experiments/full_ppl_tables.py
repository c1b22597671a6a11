"""Full test-set perplexity (WikiText-2, PTB) of the headline models: dense, ppl one-shot 4 and 6, iterative 4, 4 + CPT.

Each (model, dataset) is one ``depthprune eval ppl`` process on the whole test set (float32, batch 16, windows of
128 text tokens with BOS, the paper's convention) writing ``docs/results/full_ppl/<model>/<dataset>.json``; a
finished file is skipped, so the table fills in across sittings (WikiText-2 is ~290k tokens: ~30 min a model on
one thread). The models are the zero-shot tables' (``zeroshot_tables.MODELS``, made when missing). Then
``docs/results/full_ppl_gemma3_270m.md`` is written from whatever is finished.

    nice -n 10 python experiments/full_ppl_tables.py                 # rerun resumes
    python experiments/full_ppl_tables.py --models dense,ppl-4 --report-only
"""

from __future__ import annotations

import argparse
import json

from _common import RESULTS
from zeroshot_tables import MODELS, depthprune, ensure_model

OUT = RESULTS / "full_ppl"
DATASETS = ("wikitext2", "ptb")


def run(label: str, dataset: str) -> None:
    out = OUT / label / f"{dataset}.json"
    if out.exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    depthprune(["eval", "ppl", "--model", ensure_model(label), "--dataset", dataset, "--dtype", "float32",
                "--batch-size", "16", "--json", str(out)])


def report() -> None:
    lines = ["# Full test-set perplexity (Gemma 3 270M and its pruned / retrained versions)", "",
             "`depthprune eval ppl --dtype float32 --batch-size 16` on the whole WikiText-2 and PTB test sets "
             "(non-overlapping windows of 128 text tokens, BOS before each, every text token predicted once); "
             "the models of [zeroshot_gemma3_270m.md](zeroshot_gemma3_270m.md). A dash: not run yet.", "",
             "| model | WikiText-2 | PTB | tokens (WikiText-2 / PTB) | wall (min, shared CPU) |",
             "|---|---:|---:|---:|---:|"]
    for label in MODELS:
        res = {ds: json.loads((OUT / label / f"{ds}.json").read_text()) for ds in DATASETS
               if (OUT / label / f"{ds}.json").exists()}
        cells = [f"{res[ds]['ppl']:.2f}" if ds in res else "–" for ds in DATASETS]
        tokens = " / ".join(f"{res[ds]['tokens']:,}" if ds in res else "–" for ds in DATASETS)
        wall = " / ".join(f"{res[ds]['wall_s'] / 60:.1f}" if ds in res else "–" for ds in DATASETS)
        lines.append(f"| {label} | {' | '.join(cells)} | {tokens} | {wall} |")
    lines += ["", "Models: " + "; ".join(f"**{k}** `{v[0]}`" for k, v in MODELS.items()) + " (commands in "
              "`experiments/zeroshot_tables.py`).", "",
              "Reproduce: `nice -n 10 python experiments/full_ppl_tables.py` (resumes; `--report-only` rewrites this "
              "file)."]
    path = RESULTS / "full_ppl_gemma3_270m.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="labels, comma-separated")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    if not a.report_only:
        for label in a.models.split(","):
            for ds in DATASETS:
                run(label, ds)
                report()
    report()


if __name__ == "__main__":
    main()
