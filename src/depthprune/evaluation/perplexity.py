"""Perplexity on non-overlapping windows, BOS at each window's start, loss computed in chunks."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from depthprune.core.loss import sequence_nll
from depthprune.data.sources import load_text
from depthprune.data.tokens import bos_id, bos_windows, effective_bos_mode, tokenize
from depthprune.errors import DepthpruneError
from depthprune.models.loading import input_device


@dataclass
class PerplexityResult:
    dataset: str
    ppl: float
    nll: float
    tokens: int
    windows: int
    seq_len: int
    bos: bool
    bos_mode: str
    batch_size: int
    wall_s: float
    tokens_per_s: float
    dtype: str = ""
    model: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for people: dataset, PPL, windows, speed."""
        return (f"{self.dataset}: PPL {self.ppl:.3f} on {self.windows} windows of {self.seq_len} tokens "
                f"(BOS {self.bos_mode}, {self.dtype}), {self.tokens_per_s:,.0f} tokens/s")


def windows_for(tokenizer, dataset: str, seq_len: int = 128, limit: int | None = None,
                text_field: str = "text", bos: str = "every") -> torch.Tensor:
    """Model inputs for ``dataset``: windows of ``seq_len`` tokens with BOS placed as ``bos`` says (bos_windows)."""
    ids = tokenize(tokenizer, load_text(dataset, text_field))
    return bos_windows(ids, bos_id(tokenizer), seq_len, bos, limit)


@torch.no_grad()
def perplexity_of_windows(model, windows: torch.Tensor, batch_size: int = 8, progress: bool = True,
                          desc: str = "ppl") -> tuple[float, int]:
    """Total NLL and predicted-token count over ``windows`` (rows of input ids)."""
    if batch_size < 1:
        raise DepthpruneError(f"--batch-size must be >= 1, got {batch_size}")
    device = input_device(model)
    total, count = 0.0, 0
    bar = tqdm(total=windows.shape[0], desc=desc, unit="win", disable=not progress, leave=False)
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        nll, n = sequence_nll(model, batch)
        total += float(nll)
        count += n
        bar.update(batch.shape[0])
        bar.set_postfix(ppl=f"{math.exp(total / count):.2f}")
    bar.close()
    return total, count


def evaluate_perplexity(model, tokenizer, dataset: str = "wikitext2", seq_len: int = 128,
                        limit: int | None = None, batch_size: int = 8, progress: bool = True,
                        text_field: str = "text", bos: str = "every") -> PerplexityResult:
    """PPL of ``model`` on ``dataset`` (a named corpus or a local/hub text source); ``bos``: see bos_windows."""
    windows = windows_for(tokenizer, dataset, seq_len, limit, text_field, bos)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    total, count = perplexity_of_windows(model, windows, batch_size, progress, desc=f"ppl {dataset}")
    wall = time.perf_counter() - t0
    model.train(was_training)
    return PerplexityResult(
        dataset=dataset, ppl=math.exp(total / count), nll=total / count, tokens=count,
        windows=int(windows.shape[0]), seq_len=seq_len, bos=bos_id(tokenizer) is not None,
        bos_mode=effective_bos_mode(tokenizer, bos),
        batch_size=batch_size, wall_s=wall, tokens_per_s=count / wall if wall > 0 else float("nan"),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
    )
