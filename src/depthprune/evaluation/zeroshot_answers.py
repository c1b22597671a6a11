"""What a zero-shot run answered: per-option answer counts from lm-eval's logged samples, and how many requests
the model itself computed (the rest came from the resumable cache). lm-eval reports neither."""

from __future__ import annotations


def answer_counts(task_obj, logged: list[dict], metric: str) -> list[int]:
    """How many documents got each option as their answer, as lm-eval's multiple-choice metric picks it:
    highest loglikelihood (acc), or highest loglikelihood per character of the choice (acc_norm)."""
    counts: list[int] = []
    for sample in logged:
        lls = [r[0] for r in sample["filtered_resps"]]
        if metric == "acc_norm":
            lens = [float(len(c)) for c in task_obj.doc_to_choice(sample["doc"])]
            lls = [ll / n for ll, n in zip(lls, lens)]
        pick = max(range(len(lls)), key=lls.__getitem__)  # first maximum, as numpy's argmax
        counts += [0] * (len(lls) - len(counts))
        counts[pick] += 1
    return counts


def count_computed(lm) -> list[int]:
    """Count the loglikelihood requests ``lm`` itself answers (lm-eval's cache passes it only the uncached ones)."""
    counter = [0]
    inner = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):
        counter[0] += len(requests)
        return inner(requests, *args, **kwargs)

    lm.loglikelihood = loglikelihood  # an instance attribute: CachingLM's getattr finds it
    return counter
