"""FastHFLM (evaluation/fast_lm.py) against lm-eval's stock HFLM: same numbers, bounded memory, resumable runs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from tiny import save_tiny, tiny_model, tiny_tokenizer

from depthprune.cli import main
from depthprune.errors import DepthpruneError
from depthprune.evaluation import zeroshot
from depthprune.evaluation.fast_lm import FastHFLM
from depthprune.evaluation.lm_eval_tasks import local_data
from depthprune.evaluation.zeroshot import PAPER_TASKS, evaluate_zeroshot, make_lm
from depthprune.evaluation.zeroshot_cache import CacheMismatchError, cache_identity, open_cache, weights_fingerprint

HAVE_DATA = all(local_data.data_files(t) is not None for t in PAPER_TASKS)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="local commonsense data not found (set DEPTHPRUNE_DATA)")
FAMILIES = ["llama", "gemma3_text", "qwen2", "gemma2"]
SLICE_BUDGET = 16 * 1024  # bytes of vocabulary-slice temporaries: a few dozen of the 320 columns per slice
LIMIT = 8


@pytest.fixture(scope="module")
def cached_tasks():
    """lm-eval's Task objects for the 7 local tasks, loaded once for this module (loading takes ~2 s a time)."""
    if not HAVE_DATA:
        pytest.skip("local commonsense data not found")
    loaded = {}

    def load(tasks, sources):
        key = tuple(tasks)
        if key not in loaded:
            loaded[key] = real_load(tasks, sources)
        return loaded[key]

    real_load = zeroshot._load_tasks
    return load


@pytest.fixture
def fast_tasks(cached_tasks, monkeypatch):
    monkeypatch.setattr(zeroshot, "_load_tasks", cached_tasks)


@pytest.fixture(scope="module")
def requests_limit8(cached_tasks):
    """Every loglikelihood request lm-eval builds for the first 8 documents of each of the 7 tasks."""
    tasks, _ = cached_tasks(PAPER_TASKS, {t: "local" for t in PAPER_TASKS})
    out = []
    for task in tasks.values():
        task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
        out += task.instances
    return out


MODELS: dict = {}


def model_of(family: str, dtype=torch.float32):
    if (family, dtype) not in MODELS:
        MODELS[family, dtype] = tiny_model(family, layers=4).to(dtype)
    return MODELS[family, dtype]


def fast_lm(model, **kw) -> FastHFLM:
    kw.setdefault("logits_budget_bytes", SLICE_BUDGET)
    return make_lm(model, tiny_tokenizer(), kw.pop("batch_size", 8), backend="fast", **kw)


def reference_f64(model, hf, reqs) -> list[float]:
    """Per-request loglikelihood from the model's own full logits, one request at a time, summed in float64.

    HFLM sums a continuation's float32 log-probs in float32: for the tiny tokenizer's long continuations
    (|loglik| up to ~800, where one float32 step is 6e-5) that rounding alone reaches ~1e-4.
    """
    out = []
    with torch.no_grad():
        for r in reqs:
            ctx, cont = hf._encode_pair(*r.args)
            inp = (ctx + cont)[-(hf.max_length + 1):][:-1]
            logp = torch.log_softmax(model(torch.tensor([inp])).logits[0, -len(cont):].float(), dim=-1)
            out.append(float(logp.gather(1, torch.tensor(cont)[:, None]).double().sum()))
    return out


# --- exactness ---------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_loglikelihoods_equal_hf(family, requests_limit8):
    model = model_of(family)
    hf = make_lm(model, tiny_tokenizer(), 8)
    fast = fast_lm(model)
    want = hf.loglikelihood(requests_limit8, disable_tqdm=True)
    got = fast.loglikelihood(requests_limit8, disable_tqdm=True)
    exact = reference_f64(model, hf, requests_limit8)
    assert fast.stats.mode == "packed"
    assert len(got) == len(want) == len(requests_limit8) == 176
    for (g, gg), (w, wg), e in zip(got, want, exact):
        assert abs(g - e) <= 1e-4  # the same computation as HF's, summed exactly
        assert abs(g - w) <= 1e-4 + 2.0**-22 * abs(w)  # HFLM's own float32 sum: 1e-4 plus two float32 steps
        assert gg == wg
    # the vocabulary was sliced, contexts were shared, the head ran only at scored positions
    assert fast.stats.max_logits_bytes <= SLICE_BUDGET
    assert fast.stats.head_slices >= 2 * fast.stats.head_calls
    hf_tokens = sum(len(c) + len(x) - 1 for c, x in (hf._encode_pair(*r.args) for r in requests_limit8))
    assert fast.stats.tokens < 0.75 * hf_tokens
    assert fast.stats.head_positions < fast.stats.scored_tokens


@needs_data
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_accuracies_equal_hf(family, fast_tasks):
    model = model_of(family)
    res = {b: evaluate_zeroshot(model, tiny_tokenizer(), limit=LIMIT, batch_size=8, backend=b) for b in ("hf", "fast")}
    for t in PAPER_TASKS:
        a, b = res["hf"].tasks[t], res["fast"].tasks[t]
        assert (a.n, a.acc, a.acc_norm) == (b.n, b.acc, b.acc_norm), t
    assert res["fast"].backend == "fast" and res["hf"].backend == "hf" and res["fast"].dtype == "float32"
    assert res["fast"].to_json()["backend"] == "fast"


def greedy_continuation(model, ctx: list[int], n: int) -> list[int]:
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(ctx):]


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_is_greedy_true_and_false_like_hf(family):
    model = model_of(family)
    hf = make_lm(model, tiny_tokenizer(), 4)
    fast = fast_lm(model, batch_size=4)
    ctx = tiny_tokenizer()("The quick brown fox jumps over the lazy dog").input_ids
    cont = greedy_continuation(model, ctx, 6)
    wrong_last = cont[:-1] + [(cont[-1] + 1) % 320]
    reqs = [(None, ctx, cont), (None, ctx, cont[:3]), (None, ctx, wrong_last), (None, ctx[:4], cont)]
    got = fast._loglikelihood_tokens(reqs, disable_tqdm=True)
    want = hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    assert got[0][1] and got[1][1] and not got[2][1]
    assert all(abs(a - b) <= 1e-4 for (a, _), (b, _) in zip(got, want))


def test_slice_argmax_ties_go_to_lowest_index():
    model = tiny_model("llama", layers=1)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head[290] = head[7]  # an exact tie in a later slice than token 7
        head[150] = head[7] * 0.5
    fast = fast_lm(model, logits_budget_bytes=2 * 1024)  # 2 positions x 4 bytes: 256-wide slices
    h = torch.stack([head[7] * 40, torch.randn(64)])
    lp, greedy = fast._score_hidden(h, torch.tensor([0, 0, 1, 1]), torch.tensor([7, 290, 5, 300]))
    logits = torch.nn.functional.linear(h, head)
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(lp, ref[[0, 0, 1, 1], [7, 290, 5, 300]], atol=1e-5)
    am = logits.argmax(-1)
    assert am[0] == 7 and greedy.tolist() == [True, False, bool(am[1] == 5), bool(am[1] == 300)]


def test_rolling_loglikelihood_equals_hf():
    """lm-eval's perplexity-style requests (max_length windows) go through the same scoring path."""
    from lm_eval.api.instance import Instance
    from tiny import SAMPLE_TEXT

    model = model_of("gemma3_text")
    texts = [SAMPLE_TEXT[:3000], "The quick brown fox.", SAMPLE_TEXT[500:1400]]
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    want = make_lm(model, tiny_tokenizer(), 4).loglikelihood_rolling(reqs, disable_tqdm=True)
    got = fast_lm(model, batch_size=4).loglikelihood_rolling(reqs, disable_tqdm=True)
    assert len(tiny_tokenizer()(texts[0]).input_ids) > 2 * 256  # several max_length windows
    assert all(abs(a - b) <= 1e-4 + 2.0**-21 * abs(b) for a, b in zip(got, want))


# --- fallbacks ---------------------------------------------------------------------------------------------------


@needs_data
def test_unpacked_paths_equal_hf(requests_limit8):
    reqs = requests_limit8[::3]
    llama = model_of("llama")
    want = make_lm(llama, tiny_tokenizer(), 8).loglikelihood(reqs, disable_tqdm=True)
    off = fast_lm(llama, pack=False)
    got = off.loglikelihood(reqs, disable_tqdm=True)
    assert off.stats.mode == "unpacked" and off.stats.rows == len(reqs)
    assert all(abs(a - b) <= 1e-4 + 2.0**-22 * abs(b) and ga == gb for (a, ga), (b, gb) in zip(got, want))
    opt = tiny_model("opt", layers=2)  # learned positions from the 2D mask: never packed
    lm = fast_lm(opt)
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    want = make_lm(opt, tiny_tokenizer(), 8).loglikelihood(reqs, disable_tqdm=True)
    assert lm.stats.mode == "unpacked"
    assert all(abs(a - b) <= 1e-4 + 2.0**-22 * abs(b) and ga == gb for (a, ga), (b, gb) in zip(got, want))


def test_probe_catches_broken_packing(monkeypatch):
    """If the body ignored the packed mask (here: a plain causal mask instead), the probe must fall back."""
    model = model_of("gemma3_text")

    def causal_only(self, pos, seg, layout):
        n = pos.shape[1]
        allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(pos.shape[0], 1, n, n)
        return {name: allowed for name in layout[1]}

    monkeypatch.setattr(FastHFLM, "_masks", causal_only)
    lm = fast_lm(model)
    ctx = list(range(5, 40))
    reqs = [(None, ctx, [50, 60, 70]), (None, ctx, [80, 90])]
    with pytest.warns(UserWarning, match="running unpacked"):
        got = lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert lm.stats.mode == "unpacked" and lm.probe_diffs["isolation"] > 1e-3
    want = make_lm(model, tiny_tokenizer(), 8)._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert all(abs(a - b) <= 1e-4 for (a, _), (b, _) in zip(got, want))


# --- memory bound ------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("batch_size", [100_000, "auto"])
def test_memory_bound_at_any_batch_size(batch_size, requests_limit8):
    model = model_of("gemma2")
    budget, logits = 8 * 2**20, 32 * 1024
    lm = fast_lm(model, batch_size=batch_size, memory_budget_bytes=budget, logits_budget_bytes=logits)
    biggest = [0]
    head_calls = [0]

    def record(mod, args, out):
        for t in out if isinstance(out, tuple) else (getattr(out, "last_hidden_state", out),):
            if isinstance(t, torch.Tensor):
                biggest[0] = max(biggest[0], t.numel() * t.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    hooks.append(model.get_output_embeddings().register_forward_hook(lambda *a: head_calls.__setitem__(0, 1)))
    lm._mode = "packed"  # skip the probe: its reference call runs the full model (and the head) on purpose
    lm._layout = lm._mask_layout()
    try:
        got = lm.loglikelihood(requests_limit8, disable_tqdm=True)
    finally:
        for h in hooks:
            h.remove()
    small = fast_lm(model).loglikelihood(requests_limit8, disable_tqdm=True)
    s = lm.stats
    assert s.max_logits_bytes <= logits
    assert s.max_est_activation_bytes <= budget - logits and s.over_budget_rows == 0
    assert 0 < biggest[0] <= budget - logits  # measured: no module output exceeded the activation budget
    assert head_calls[0] == 0  # the LM head module never ran on full sequences
    assert s.model_calls > 3  # the budget, not batch_size, cut the batches
    assert all(abs(a - b) <= 1e-4 + 2.0**-22 * abs(b) and ga == gb for (a, ga), (b, gb) in zip(got, small))


def test_budget_arguments_validated():
    with pytest.raises(DepthpruneError, match="logits budget"):
        fast_lm(model_of("llama"), memory_budget_bytes=1000, logits_budget_bytes=5000)


# --- resume ------------------------------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


@needs_data
def test_resume_after_interrupt(tmp_path, monkeypatch, fast_tasks):
    model = model_of("qwen2")
    tasks = "piqa,hellaswag,boolq"
    plain = evaluate_zeroshot(model, tiny_tokenizer(), tasks, limit=LIMIT, batch_size=4)

    computed = []  # requests answered per head pass (after the probe)
    passed = []  # requests handed to the model by lm-eval's cache, per run
    score, ll_tokens = FastHFLM._score_pending, FastHFLM._loglikelihood_tokens
    stop_after = [3]

    def counting_score(self, parts):
        if self._mode is None:  # the probe
            return score(self, parts)
        if len(computed) == stop_after[0]:
            raise Interrupted("stopped")
        out = score(self, parts)
        computed.append(sum(len(e.requests) for e, _, _ in out))
        return out

    def counting_ll(self, requests, **kw):
        passed.append(len(requests))
        return ll_tokens(self, requests, **kw)

    monkeypatch.setattr(FastHFLM, "_score_pending", counting_score)
    monkeypatch.setitem(FastHFLM.__init__.__kwdefaults__, "head_positions", 64)  # several head passes
    monkeypatch.setattr(FastHFLM, "_loglikelihood_tokens", counting_ll)
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        evaluate_zeroshot(model, tiny_tokenizer(), tasks, limit=LIMIT, batch_size=4, cache_dir=str(cache))
    done_first = sum(computed)
    total = passed[0]
    assert 0 < done_first < total and len(computed) == 3

    computed.clear()
    stop_after[0] = -1
    resumed = evaluate_zeroshot(model, tiny_tokenizer(), tasks, limit=LIMIT, batch_size=4, cache_dir=str(cache))
    assert passed[1] == total - done_first  # the finished requests came from the cache
    assert sum(computed) == total - done_first
    drop = {"wall_s", "cache_dir", "requests_from_cache"}
    assert {k: v for k, v in resumed.to_json().items() if k not in drop} == \
           {k: v for k, v in plain.to_json().items() if k not in drop}
    assert resumed.cache_dir == str(cache)
    assert (plain.requests, plain.requests_from_cache) == (total, 0)
    assert (resumed.requests, resumed.requests_from_cache) == (total, done_first)  # what wall_s did not cover
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["backend"] == "fast" and manifest["dtype"] == "float32" and manifest["num_layers"] == 4

    computed.clear()
    again = evaluate_zeroshot(model, tiny_tokenizer(), tasks, limit=LIMIT, batch_size=4, cache_dir=str(cache))
    assert len(passed) == 2 and computed == []  # everything cached: the model is not called at all
    assert again.tasks == resumed.tasks and again.requests_from_cache == total


@needs_data
def test_cache_of_a_disk_offloaded_dispatch_is_the_plain_models(tmp_path, monkeypatch, fast_tasks):
    """A model dispatched by accelerate with blocks offloaded to disk (meta placeholders on the model) gets the
    same cache identity as the same weights in memory: a cache the plain model filled answers it without a
    forward pass, and changing one offloaded weight changes the identity."""
    from accelerate import dispatch_model

    tok, tasks = tiny_tokenizer(), "piqa,arc_easy"
    plain = tiny_model("llama", layers=4)
    cache = tmp_path / "cache"
    first = evaluate_zeroshot(plain, tok, tasks, limit=6, batch_size=4, cache_dir=str(cache))
    ident = cache_identity(plain, tok, "fast")
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(tiny_model("llama", layers=4), device_map=dm, main_device="cpu",
                           offload_dir=str(tmp_path / "offload"))
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert cache_identity(model, tok, "fast") == ident
    calls = []
    ll_tokens = FastHFLM._loglikelihood_tokens
    monkeypatch.setattr(FastHFLM, "_loglikelihood_tokens", lambda self, reqs, **kw: calls.append(len(reqs))
                        or ll_tokens(self, reqs, **kw))
    again = evaluate_zeroshot(model, tok, tasks, limit=6, batch_size=4, cache_dir=str(cache))
    assert calls == []  # every answer came from the plain model's cache: the model was not called
    assert again.tasks == first.tasks and again.requests_from_cache == again.requests == first.requests > 0
    other = tiny_model("llama", layers=4)
    with torch.no_grad():
        other.model.layers[3].mlp.up_proj.weight[0, 0] += 1.0
    other = dispatch_model(other, device_map=dm, main_device="cpu", offload_dir=str(tmp_path / "offload2"))
    assert cache_identity(other, tok, "fast")["weights_sha256"] != ident["weights_sha256"]


def test_cache_refuses_another_model(tmp_path):
    from depthprune.pruning import remove_blocks

    tok = tiny_tokenizer()
    model = tiny_model("llama", layers=4)
    ident = cache_identity(model, tok, "fast")
    path = open_cache(tmp_path / "c", ident)
    assert open_cache(tmp_path / "c", cache_identity(model, tok, "fast")) == path  # same model: reused

    other = tiny_model("llama", layers=4, seed=1)
    with pytest.raises(CacheMismatchError, match="weights_sha256.*refusing"):
        open_cache(tmp_path / "c", cache_identity(other, tok, "fast"))
    with pytest.raises(CacheMismatchError, match="backend"):
        open_cache(tmp_path / "c", cache_identity(model, tok, "hf"))
    with pytest.raises(CacheMismatchError, match="dtype"):
        open_cache(tmp_path / "c", cache_identity(tiny_model("llama", layers=4).to(torch.bfloat16), tok, "fast"))
    pruned = tiny_model("llama", layers=4)
    remove_blocks(pruned, [2])
    with pytest.raises(CacheMismatchError, match="num_layers"):
        open_cache(tmp_path / "c", cache_identity(pruned, tok, "fast"))

    before = weights_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3  # one element, likely outside the strided sample
    assert weights_fingerprint(model) != before

    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "lm_cache_rank0.db").write_bytes(b"")
    with pytest.raises(CacheMismatchError, match="no manifest.json"):
        open_cache(tmp_path / "stray", ident)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input(tmp_path, capsys):
    model = model_of("llama")
    with pytest.raises(DepthpruneError, match="available: boolq, piqa, hellaswag"):
        evaluate_zeroshot(model, tiny_tokenizer(), tasks="piqa,mmlu", backend="fast")
    with pytest.raises(DepthpruneError, match="--limit must be a positive integer"):
        evaluate_zeroshot(model, tiny_tokenizer(), tasks="piqa", limit=0, backend="fast")
    with pytest.raises(DepthpruneError, match="--backend 'vllm' is not one of: fast, hf"):
        evaluate_zeroshot(model, tiny_tokenizer(), tasks="piqa", backend="vllm")
    with pytest.raises(DepthpruneError, match="--batch-size"):
        evaluate_zeroshot(model, tiny_tokenizer(), tasks="piqa", batch_size="big")
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--limit", "0", "--backend", "fast"]) == 2
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--resume"]) == 2
    assert "--resume needs --json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "zeroshot", "--model", "/nonexistent", "--backend", "vllm"])
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--batch-size", "big"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["eval", "zeroshot", "--model", "/nonexistent", "--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer or auto" in capsys.readouterr().err


@needs_data
def test_cli_fast_auto_batch_resume_and_refusal(tmp_path, capsys):
    d = save_tiny("gemma3_text", tmp_path / "tiny", layers=2)
    out = tmp_path / "zs.json"
    args = ["eval", "zeroshot", "--model", str(d), "--tasks", "piqa,arc_easy", "--limit", "3", "--json", str(out)]
    assert main(args + ["--batch-size", "auto", "--resume"]) == 0
    res = json.loads(out.read_text())
    assert res["backend"] == "fast" and res["dtype"] == "float32" and res["batch_size"] == "auto"
    assert res["cache_dir"] == str(out) + ".cache" and (tmp_path / "zs.json.cache" / "manifest.json").is_file()
    assert res["requests"] > 0 and res["requests_from_cache"] == 0
    capsys.readouterr()
    assert main(args + ["--batch-size", "auto", "--resume"]) == 0  # a finished run again: all from the cache
    again = json.loads(out.read_text())
    assert again["requests_from_cache"] == again["requests"] == res["requests"] and again["tasks"] == res["tasks"]
    assert f"resumed: {res['requests']:,} of {res['requests']:,} requests answered from" in capsys.readouterr().out
    other = save_tiny("gemma3_text", tmp_path / "other", layers=2, seed=3)
    capsys.readouterr()
    bad = ["eval", "zeroshot", "--model", str(other), "--tasks", "piqa", "--limit", "3",
           "--eval-cache", str(out) + ".cache"]
    assert main(bad) == 2
    assert "was made for another model" in capsys.readouterr().err


# --- bf16 --------------------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("family", ["gemma3_text", "gemma2"])
def test_bf16_fast_vs_hf(family, requests_limit8, fast_tasks):
    model = model_of(family, torch.bfloat16)
    fast = fast_lm(model)
    got = fast.loglikelihood(requests_limit8, disable_tqdm=True)
    want = make_lm(model, tiny_tokenizer(), 8).loglikelihood(requests_limit8, disable_tqdm=True)
    assert fast.stats.mode == "packed"
    for (a, _), (b, _) in zip(got, want):
        assert math.isfinite(a) and abs(a - b) <= 0.1 + 2e-3 * abs(b)  # bf16 hidden states: ~3 significant digits
    res = {b: evaluate_zeroshot(model, tiny_tokenizer(), limit=LIMIT, backend=b) for b in ("hf", "fast")}
    assert res["fast"].dtype == "bfloat16"
    for t in PAPER_TASKS:
        a, b = res["hf"].tasks[t], res["fast"].tasks[t]
        assert abs(a.acc - b.acc) * a.n <= 1 + 1e-9, t
        if a.acc_norm is not None:
            assert abs(a.acc_norm - b.acc_norm) * a.n <= 1 + 1e-9, t


@needs_data
def test_pipeline_zeroshot_resumes_from_its_cache(tmp_path, monkeypatch):
    import yaml

    from depthprune.pipeline import run_experiment

    model = save_tiny("llama", tmp_path / "model", layers=3)
    text = tmp_path / "text.txt"
    from tiny import SAMPLE_TEXT

    text.write_text(SAMPLE_TEXT)
    cfg = {"name": "zs", "model": {"source": str(model), "device": "cpu"},
           "calibration": {"source": str(text), "samples": 2, "seq_len": 16, "batch_size": 2},
           "prune": {"criterion": "magnitude", "targets": [{"num_blocks": 1}]},
           "evaluate": {"ppl": None, "zeroshot": {"tasks": ["piqa"], "limit": 3, "batch_size": 2}}}
    path = tmp_path / "zs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, tmp_path / "runs")
    run = tmp_path / "runs" / "zs"
    evals = [run / "eval.json"]  # the pruned model's (base/eval.json: the unpruned one's)
    first = json.loads(evals[0].read_text())["results"]
    caches = sorted((run / "zeroshot-cache").glob("*/manifest.json"))
    assert len(caches) == 2  # the unpruned model's and the pruned one's, named by their identities
    assert {json.loads(p.read_text())["num_layers"] for p in caches} == {3, 2}

    scored = []
    original = FastHFLM._loglikelihood_tokens
    monkeypatch.setattr(FastHFLM, "_loglikelihood_tokens",
                        lambda self, reqs, *a, **k: scored.extend(reqs) or original(self, reqs, *a, **k))
    run_experiment(path, tmp_path / "runs", force=["eval"])
    again = json.loads(evals[0].read_text())["results"]
    assert scored == []  # every answer came from the cache
    assert [r["zeroshot"]["tasks"] for r in again] == [r["zeroshot"]["tasks"] for r in first]

    # the same weights under other names (variants whose criterion picks the same block): from the cache
    cfg["variants"] = {"a": {}, "b": {"calibration": {"samples": 3}}}
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, tmp_path / "runs")
    assert scored == []
    for v in ("a", "b"):
        res = json.loads((run / v / "eval.json").read_text())["results"]
        assert res[-1]["zeroshot"]["tasks"] == first[-1]["zeroshot"]["tasks"]


def test_pipeline_zeroshot_cache_keeps_bf16_answers_apart(tmp_path, monkeypatch):
    """A float32 run evaluated in bf16 (``zeroshot.dtype``): its answers are cached under the bf16 identity,
    reused on a rerun, and never given to a float32 evaluation of the same weights."""
    import yaml

    from depthprune.pipeline import run_experiment

    model = save_tiny("gemma3_text", tmp_path / "model", layers=3)
    text = tmp_path / "text.txt"
    from tiny import SAMPLE_TEXT

    text.write_text(SAMPLE_TEXT)
    cfg = {"name": "zs", "model": {"source": str(model), "device": "cpu", "dtype": "float32"},
           "calibration": {"source": str(text), "samples": 2, "seq_len": 16, "batch_size": 2},
           "prune": {"criterion": "magnitude", "targets": [{"num_blocks": 1}]},
           "evaluate": {"ppl": None, "zeroshot": {"tasks": ["arc_easy"], "limit": 3, "batch_size": 2,
                                                  "dtype": "bfloat16"}}}
    path = tmp_path / "zs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, tmp_path / "runs")
    run = tmp_path / "runs" / "zs"
    manifests = lambda: [json.loads(p.read_text()) for p in sorted((run / "zeroshot-cache").glob("*/manifest.json"))]  # noqa: E731
    assert {(m["dtype"], m["num_layers"]) for m in manifests()} == {("bfloat16", 3), ("bfloat16", 2)}
    bf16 = json.loads((run / "eval.json").read_text())["results"][-1]["zeroshot"]

    scored = []
    original = FastHFLM._loglikelihood_tokens
    monkeypatch.setattr(FastHFLM, "_loglikelihood_tokens",
                        lambda self, reqs, *a, **k: scored.extend(reqs) or original(self, reqs, *a, **k))
    run_experiment(path, tmp_path / "runs", force=["eval"])
    assert scored == []  # the bf16 answers came from the cache
    assert json.loads((run / "eval.json").read_text())["results"][-1]["zeroshot"]["tasks"] == bf16["tasks"]

    cfg["evaluate"]["zeroshot"]["dtype"] = "float32"
    path.write_text(yaml.safe_dump(cfg))
    run_experiment(path, tmp_path / "runs", force=["eval"])
    assert scored  # float32 scored afresh, in caches of its own
    assert sorted(m["dtype"] for m in manifests()) == ["bfloat16", "bfloat16", "float32", "float32"]

@needs_data
def test_docs_shards_merge_to_the_whole(fast_tasks):
    """--docs shards score exactly their documents, and merge_scores gives the result of scoring them at once."""
    model, tok = model_of("llama"), tiny_tokenizer()
    tasks = "piqa,arc_challenge"  # acc and acc_norm metrics
    whole = evaluate_zeroshot(model, tok, tasks, limit=12, batch_size=4)
    same = evaluate_zeroshot(model, tok, tasks, docs="0:12", batch_size=4)
    parts = [evaluate_zeroshot(model, tok, tasks, docs=d, batch_size=4) for d in ("5:12", "0:5")]
    for t in ("piqa", "arc_challenge"):
        assert same.tasks[t].docs == [0, 12] and parts[0].tasks[t].docs == [5, 12] and parts[0].tasks[t].n == 7
        merged = zeroshot.merge_scores([p.tasks[t] for p in parts])
        for r in (same.tasks[t], merged):
            assert r.n == 12 and r.docs == [0, 12]
            for k in ("score", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
                assert getattr(r, k) == pytest.approx(getattr(whole.tasks[t], k), abs=1e-12), (t, k)
            assert r.answer_counts == whole.tasks[t].answer_counts and sum(r.answer_counts) == 12
    with pytest.raises(DepthpruneError, match="not contiguous"):
        zeroshot.merge_scores([parts[0].tasks["piqa"], same.tasks["piqa"]])
    assert parts[0].tasks["piqa"].weights_sha256 == parts[1].tasks["piqa"].weights_sha256 is not None
    changed = copy.deepcopy(model)  # a shard of a model whose weights differ (e.g. retrained in another sitting)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    other = evaluate_zeroshot(changed, tok, "piqa", docs="0:5", batch_size=4)
    with pytest.raises(DepthpruneError, match="different weights"):
        zeroshot.merge_scores([other.tasks["piqa"], parts[0].tasks["piqa"]])


@needs_data
def test_answer_counts_show_a_constant_answer(fast_tasks, monkeypatch):
    """A model that always prefers the first option: every document's answer is option 0 (BoolQ 'no'), and its
    accuracy is the share of documents whose gold answer is option 0; a real model's counts add up to n."""
    tasks, n = "boolq,arc_challenge,winogrande", 20
    model, tok = model_of("llama"), tiny_tokenizer()
    real = evaluate_zeroshot(model, tok, tasks, limit=n, batch_size=4)
    assert all(sum(t.answer_counts) == n for t in real.tasks.values())
    assert [len(real.tasks[t].answer_counts) for t in ("boolq", "winogrande")] == [2, 2]

    def first_option(self, requests, disable_tqdm=False):
        return [(0.0 if r.idx == 0 else -10.0, False) for r in requests]

    monkeypatch.setattr(FastHFLM, "loglikelihood", first_option)
    const = evaluate_zeroshot(model, tok, tasks, limit=n, batch_size=4)
    for name, t in const.tasks.items():
        gold = [d["gold"] for d in local_data._jsonl(local_data.data_files(name)[0])[:n]]
        assert t.answer_counts[0] == n and not any(t.answer_counts[1:]), name
        assert t.score == pytest.approx(gold.count(0) / n), name
        assert f"{zeroshot.SHORT_NAMES[name]}: the same answer (option 1) for all {n} documents" in const.to_markdown()
    assert "the same answer" not in real.to_markdown() or any(max(t.answer_counts) == n for t in real.tasks.values())


@pytest.mark.parametrize("docs, message", [("5:5", "START < END"), ("a:b", "expected START:END"),
                                           ("7", "expected START:END"), ("-1:3", "START < END")])
def test_docs_range_rejected(docs, message):
    with pytest.raises(DepthpruneError, match=message):
        zeroshot.parse_docs(docs)


@needs_data
def test_docs_beyond_split_and_with_limit_rejected(fast_tasks):
    model = model_of("llama")
    with pytest.raises(DepthpruneError, match="only 500 documents"):
        evaluate_zeroshot(model, tiny_tokenizer(), "openbookqa", docs="500:600")
    with pytest.raises(DepthpruneError, match="not both"):
        evaluate_zeroshot(model, tiny_tokenizer(), "openbookqa", docs="0:10", limit=5)


@needs_data
def test_docs_shards_on_bf16_weights_and_a_dispatched_model(tmp_path, fast_tasks):
    """Shards of a bf16 model and of a disk-offloaded accelerate dispatch merge to the unsharded result."""
    from accelerate import dispatch_model

    tasks = "piqa,arc_easy"
    tok = tiny_tokenizer()
    bf16 = model_of("gemma3_text", torch.bfloat16)
    whole = evaluate_zeroshot(bf16, tok, tasks, limit=10, batch_size=4)
    parts = [evaluate_zeroshot(bf16, tok, tasks, docs=d, batch_size=4) for d in ("0:4", "4:10")]
    assert whole.dtype == "bfloat16"
    plain = evaluate_zeroshot(model_of("llama"), tok, tasks, limit=10, batch_size=4)
    model = tiny_model("llama", layers=4)  # the same seed as model_of("llama"): the same weights
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = dispatch_model(model, device_map=dm, main_device="cpu", offload_dir=str(tmp_path / "offload"))
    shards = [evaluate_zeroshot(model, tok, tasks, docs=d, batch_size=4) for d in ("0:4", "4:10")]
    for t in ("piqa", "arc_easy"):
        for want, got in ((whole, parts), (plain, shards)):
            merged = zeroshot.merge_scores([p.tasks[t] for p in got])
            assert merged.n == 10 and merged.docs == [0, 10]
            assert merged.answer_counts == want.tasks[t].answer_counts and sum(merged.answer_counts) == 10
            for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
                assert getattr(merged, k) == pytest.approx(getattr(want.tasks[t], k), abs=1e-12), (t, k)
