"""Data sources, windows, calibration, and the chunked perplexity evaluator."""

import json
import math

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer
from transformers import AutoTokenizer

from depthprune.data import CalibrationSpec, build_calibration, eval_windows, load_text, with_bos
from depthprune.errors import DepthpruneError
from depthprune.evaluation import evaluate_perplexity
from depthprune.evaluation.perplexity import perplexity_of_windows


def test_named_sources_follow_paper_conventions():
    wiki = load_text("wikitext2")
    assert wiki.startswith(" \n\n = Robert Boulter = \n") or wiki.startswith("\n\n = Robert Boulter = \n")
    assert "\n\n\n\n" in wiki  # blank rows joined with "\n\n"
    ptb = load_text("ptb")
    assert "\n" not in ptb and ptb.startswith("no it was n't black monday")


def test_data_dir_env_and_missing_data(monkeypatch, tmp_path):
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "war_and_peace.txt").write_text("custom calibration text")
    monkeypatch.setenv("DEPTHPRUNE_DATA", str(tmp_path))
    assert load_text("war_and_peace") == "custom calibration text"
    monkeypatch.setenv("DEPTHPRUNE_DATA", str(tmp_path / "typo"))
    with pytest.raises(DepthpruneError, match=r"DEPTHPRUNE_DATA=.*typo is not a directory.*or unset it"):
        load_text("war_and_peace")


def test_unknown_dataset_and_jsonl_without_field(tmp_path):
    with pytest.raises(DepthpruneError, match="unknown dataset 'nope'"):
        load_text("nope")
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DepthpruneError, match="no 'text' field.*--text-field"):
        load_text(str(f))
    assert load_text(str(f), text_field="content") == "x"


def test_windows_and_bad_numbers():
    ids = torch.arange(10)
    assert eval_windows(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert eval_windows(ids, 3, limit=2).shape == (2, 3)
    assert with_bos(eval_windows(ids, 3, 1), 99).tolist() == [[99, 0, 1, 2]]
    with pytest.raises(DepthpruneError, match="--seq-len"):
        eval_windows(ids, 0)
    with pytest.raises(DepthpruneError, match="--limit"):
        eval_windows(ids, 3, limit=-1)


def test_calibration_is_seeded_and_has_bos():
    tok = tiny_tokenizer()
    a = build_calibration(tok, CalibrationSpec("wikitext2", samples=4, seq_len=16, seed=3))
    b = build_calibration(tok, CalibrationSpec("wikitext2", samples=4, seq_len=16, seed=3))
    c = build_calibration(tok, CalibrationSpec("wikitext2", samples=4, seq_len=16, seed=4))
    assert a.input_ids.shape == (4, 17) and (a.input_ids[:, 0] == tok.bos_token_id).all()
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


def test_self_calibration():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    cal = build_calibration(tok, CalibrationSpec("self", samples=3, seq_len=8, seed=0), model=model)
    again = build_calibration(tok, CalibrationSpec("self", samples=3, seq_len=8, seed=0), model=model)
    assert cal.input_ids.shape == (3, 9) and torch.equal(cal.input_ids, again.input_ids)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "opt"])
def test_ppl_matches_plain_loss(model_type):
    """Chunked evaluator vs model(x, labels=x) per window (gemma2 exercises logit softcapping)."""
    model, tok = tiny_model(model_type), tiny_tokenizer()
    res = evaluate_perplexity(model, tok, "wikitext2", seq_len=32, limit=6, batch_size=4, progress=False)
    windows = with_bos(eval_windows(torch.tensor(tok(load_text("wikitext2")[:20000],
                                                     add_special_tokens=False).input_ids), 32, 6), 1)
    with torch.no_grad():
        losses = [float(model(w[None], labels=w[None]).loss) for w in windows]
    ref = math.exp(sum(losses) / len(losses))
    assert res.tokens == 6 * 32 and res.windows == 6
    assert abs(res.ppl - ref) / ref < 1e-4


def test_batch_size_does_not_change_ppl():
    model = tiny_model("qwen3")
    windows = torch.randint(4, 300, (7, 20))
    a = perplexity_of_windows(model, windows, batch_size=1, progress=False)
    b = perplexity_of_windows(model, windows, batch_size=16, progress=False)
    assert a[1] == b[1] and abs(a[0] - b[0]) / a[0] < 1e-5


@pytest.mark.real_model
def test_embedded_model_wikitext2_ppl(embedded):
    res = evaluate_perplexity(embedded.model, embedded.tokenizer, "wikitext2", limit=20, batch_size=10,
                              progress=False)
    assert math.isfinite(res.ppl) and res.ppl < 200
    assert res.windows == 20 and res.bos


def _official_windows(text_ids: list[int], bos: int, seq_len: int, every: bool) -> list[list[int]]:
    """The official Shortened-LLaMA ``process_data``, restated: BOS once before the text, or before each window."""
    ids = text_ids if every else [bos] + text_ids
    out = [ids[i * seq_len:(i + 1) * seq_len] for i in range(len(ids) // seq_len)]
    return [[bos] + w for w in out] if every else out


@pytest.mark.parametrize("mode", ["every", "first", "none"])
def test_bos_modes_feed_the_windows_of_the_official_code(mode):
    from depthprune.data.tokens import bos_windows

    text = list(range(10, 10 + 37))
    got = bos_windows(torch.tensor(text), 1, 8, mode).tolist()
    if mode == "none":
        want = [text[i * 8:(i + 1) * 8] for i in range(4)]
    else:
        want = _official_windows(text, 1, 8, every=mode == "every")
    assert got == want
    assert bos_windows(torch.tensor(text), None, 8, mode).tolist() == [text[i * 8:(i + 1) * 8] for i in range(4)]
    with pytest.raises(DepthpruneError, match="--bos 'all'"):
        bos_windows(torch.tensor(text), 1, 8, "all")


def test_perplexity_records_the_bos_mode():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    res = {m: evaluate_perplexity(model, tok, "wikitext2", seq_len=16, limit=4, progress=False, bos=m)
           for m in ("every", "first", "none")}
    assert [r.bos_mode for r in res.values()] == ["every", "first", "none"]
    assert res["every"].tokens == 64 and res["first"].tokens == 60 and res["none"].tokens == 60
    assert len({round(r.ppl, 6) for r in res.values()}) == 3
    no_bos = evaluate_perplexity(model, tiny_tokenizer(bos=False), "wikitext2", seq_len=16, limit=2, progress=False)
    assert no_bos.bos_mode == "none"


def test_tokenize_caches_long_texts_per_tokenizer_and_returns_copies(monkeypatch, tmp_path):
    from depthprune.data import tokens

    calls = []
    real = tokens._tokenize
    monkeypatch.setattr(tokens, "_tokenize", lambda tok, text: calls.append(len(text)) or real(tok, text))
    tok = tiny_tokenizer()
    text = "the quick brown fox jumps over the lazy dog. " * 3000
    first = tokens.tokenize(tok, text)
    first[:5] = -1  # a caller that writes into its ids must not change what the next caller gets
    again = tokens.tokenize(tok, text)
    assert calls == [len(text)]
    assert torch.equal(again, real(tok, text)) and again[0] != -1
    tok.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the same tokenizer loaded again shares the cache
    assert torch.equal(tokens.tokenize(reloaded, text), again)
    tokens.tokenize(tok, text + "x")  # another text is tokenized anew
    other = AutoTokenizer.from_pretrained(tmp_path / "tok")
    other.add_tokens(["quickbrown"])  # another tokenizer is too
    tokens.tokenize(other, text)
    tokens.tokenize(tok, "short text")  # short texts are never cached
    tokens.tokenize(tok, "short text")
    assert calls == [len(text), len(text) + 1, len(text), 10, 10]
