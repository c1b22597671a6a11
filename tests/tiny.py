"""Tiny random-weight models of every supported family, with a small trained BPE tokenizer."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB = 320
MODEL_TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "opt", "gpt_neox"]

SAMPLE_TEXT = (
    "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. "
    "The quick brown fox jumps over the lazy dog while the model prunes its blocks. "
    "Depth pruning removes whole transformer blocks; width pruning shrinks heads and channels. "
) * 20


@cache
def tiny_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT], trainer)
    kw = dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    if bos:
        kw["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def tiny_config(model_type: str, layers: int = 6, **overrides):
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=VOCAB, max_position_embeddings=256)
    if model_type == "opt":
        kw = dict(hidden_size=64, ffn_dim=128, num_hidden_layers=layers, num_attention_heads=4,
                  word_embed_proj_dim=64, **ids)
    elif model_type == "gpt_neox":
        kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4, **ids)
    else:
        kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, **ids)
    if model_type in ("gemma2", "gemma3_text"):
        kw.update(sliding_window=8, query_pre_attn_scalar=16)
        if model_type == "gemma3_text":
            kw["layer_types"] = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(layers)]
    if model_type == "gemma2":
        kw["final_logit_softcapping"] = 30.0
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str, layers: int = 6, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers, **overrides), dtype=torch.float32)
    # random init leaves norms at 1 and tiny weights: scale up so blocks differ measurably
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model.eval()


def save_tiny(model_type: str, path: Path, layers: int = 6, seed: int = 0, bos: bool = True, **overrides) -> Path:
    model = tiny_model(model_type, layers, seed, **overrides)
    model.save_pretrained(path)
    tiny_tokenizer(bos).save_pretrained(path)
    return path
