"""Shared helpers for the experiments/ scripts: the embedded model, paper windows, and a resumable PPL cache."""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from depthprune.evaluation.perplexity import perplexity_of_windows, windows_for

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
WINDOWS = 200
SEQ_LEN = 128


class PaperSetup:
    """The embedded model in float32 on CPU, the paper's calibration set and PPL windows, and the PPL cache."""

    def __init__(self):
        from depthprune.data import CalibrationSpec, build_calibration
        from depthprune.models import block_params, count_params, load_model

        lm = load_model("gemma-3-270m", dtype="float32", device="cpu")
        self.model, self.tokenizer = lm.model, lm.tokenizer
        self.calib = build_calibration(self.tokenizer, CalibrationSpec("war_and_peace", 10, 128, 0))
        self.windows = paper_windows(self.tokenizer)
        self.cache = PPLCache(RESULTS / "ppl_cache_gemma3_270m.json")
        self.total, self.bparams = count_params(self.model), block_params(self.model)


def paper_windows(tokenizer, limit: int = WINDOWS) -> dict[str, torch.Tensor]:
    """The first ``limit`` windows of WikiText-2 and PTB used by every results table."""
    return {d: windows_for(tokenizer, d, SEQ_LEN, limit) for d in ("wikitext2", "ptb")}


class PPLCache:
    """Perplexities keyed by a model variant name, stored in a JSON file so long runs can resume."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def _reload(self) -> None:
        """Pick up entries that another bench process wrote since this one last read the file."""
        if self.path.exists():
            self.data = {**json.loads(self.path.read_text()), **self.data}

    def _wait_for_other(self, key: str) -> None:
        """If another live bench process is computing ``key`` (see :meth:`_claim`), wait for its result."""
        claim = self._claim_path(key)
        while key not in self.data and claim.exists():
            try:
                os.kill(int(claim.read_text() or 0), 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(10)
            self._reload()

    def _claim_path(self, key: str) -> Path:
        import hashlib

        return self.path.with_name(f".{self.path.stem}.{hashlib.sha1(key.encode()).hexdigest()[:12]}.claim")

    def get(self, key: str, model, windows: dict[str, torch.Tensor], batch_size: int = 16) -> dict:
        if key not in self.data:
            self._reload()
            self._wait_for_other(key)
        if key not in self.data:
            claim = self._claim_path(key)
            claim.write_text(str(os.getpid()))
            out = {}
            for name, w in windows.items():
                t0 = time.perf_counter()
                total, count = perplexity_of_windows(model, w, batch_size, progress=False)
                out[name] = float(torch.tensor(total / count).exp())
                out[f"{name}_s"] = time.perf_counter() - t0
            self._reload()
            self.data[key] = out
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=2))
            os.replace(tmp, self.path)
            claim.unlink(missing_ok=True)
            print(f"  {key}: " + ", ".join(f"{k}={v:.2f}" for k, v in out.items()), flush=True)
        return self.data[key]


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def merge_committed_rows(data: dict, committed: Path, key: Callable[[dict], tuple], measured: str) -> dict:
    """``data`` ({"dense": {...}, "rows": [...]}) with each row that lacks ``measured`` taken from ``committed``.

    runs/ is not committed, so a new checkout's run directory starts empty: rows measured in an earlier sitting
    keep their figures from the committed JSON, and a table grows across sittings and machines.
    """
    if not committed.is_file():
        return data
    old = json.loads(committed.read_text())
    done = {key(r): r for r in old["rows"] if measured in r}
    rows = [r if measured in r else done.get(key(r), r) for r in data["rows"]]
    return {"dense": old.get("dense", {}) | data["dense"], "rows": rows}


def run_table_cli(doc: str, name: str, run_default: str, build: Callable[[Path], dict],
                  pending: Callable[[dict], list[str]], markdown: Callable[[dict, Path], str],
                  plot: Callable[[dict, Path], None] | None = None) -> None:
    """The command line of a results table kept across sittings: ``--run DIR`` (runs/<run_default>) and
    ``--pending`` (print the ``depthprune run --only`` pattern of each unit not measured yet, and ``base/eval``
    while the table has no dense row; write nothing);
    otherwise ``docs/results/<name>.{json,md}`` (and ``.png`` with ``plot``) from ``build(run)``."""
    root = RESULTS.parent.parent
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--run", default=str(root / "runs" / run_default))
    p.add_argument("--pending", action="store_true", help="print the --only pattern of each unit not measured "
                                                          "yet, cheapest first, and write nothing")
    a = p.parse_args()
    run = Path(a.run).resolve()
    data = build(run)
    if a.pending:  # the unpruned model's evaluation last, and only while the committed table lacks it
        base = ["base/eval"] if "dense" in data and "wikitext2" not in data["dense"] else []
        print("\n".join(pending(data) + base))
        return
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    if plot is not None:
        plot(data, RESULTS / f"{name}.png")
    (RESULTS / f"{name}.md").write_text(markdown(data, run.relative_to(root) if run.is_relative_to(root) else run))
    print(f"wrote {RESULTS / f'{name}.md'}")
