"""``perplexity`` and ``zeroshot``: one call each, on a loaded model or a source, options as in the CLI."""

from __future__ import annotations

from depthprune.core.options import build
from depthprune.evaluation.options import PerplexityOptions, ZeroShotOptions
from depthprune.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from depthprune.evaluation.zeroshot import ZeroShotResult, evaluate_zeroshot
from depthprune.models.loading import ensure_loaded, model_source


def perplexity(model, tokenizer=None, *, progress: bool = True, **options) -> PerplexityResult:
    """Perplexity of ``model`` (loaded, or a source) on ``dataset`` (default wikitext2); see PerplexityOptions."""
    opts = build(PerplexityOptions, options)
    model, tokenizer = ensure_loaded(model, tokenizer)
    res = evaluate_perplexity(model, tokenizer, opts.dataset, opts.seq_len, opts.limit, opts.batch_size,
                              progress=progress, text_field=opts.text_field, bos=opts.bos)
    res.model = model_source(model)
    return res


def zeroshot(model, tokenizer=None, *, quiet: bool = True, **options) -> ZeroShotResult:
    """Zero-shot accuracy of ``model`` (loaded, or a source) on the paper's tasks; see ZeroShotOptions."""
    opts = build(ZeroShotOptions, options)
    model, tokenizer = ensure_loaded(model, tokenizer)
    return evaluate_zeroshot(model, tokenizer, opts.tasks, limit=opts.limit, docs=opts.docs, batch_size=opts.batch_size,
                             source=opts.source, quiet=quiet, backend=opts.backend, cache_dir=opts.cache_dir)
