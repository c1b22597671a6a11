"""Training data for retraining: Alpaca-format instructions (LoRA) and packed raw text (CPT).

Both datasets are tokenized up front and expose the same small interface: ``len``, per-example token
and predicted-token counts (for exact loss averaging and token budgets), and ``batch(indices)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from depthprune.data.sources import hub_dataset, load_text, require_data_file
from depthprune.data.tokens import bos_id, tokenize
from depthprune.errors import DataNotFoundError, DepthpruneError

IGNORE = -100

ALPACA_DEMO = "alpaca_demo"
NAMED_INSTRUCTIONS = {ALPACA_DEMO: "instruct/alpaca_en_demo.json"}
"""Instruction sets of the data directory (relative paths), by name."""

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
REQUIRED_FIELDS = ("instruction", "output")


def alpaca_prompt(record: dict) -> str:
    """The Alpaca prompt of ``record`` (everything before the response)."""
    if record.get("input"):
        return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
    return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def _read_records(path: Path) -> list:
    if not path.is_file():
        raise DepthpruneError(f"--data {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DepthpruneError(f"--data {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(records, list):
        raise DepthpruneError(f"--data {path}: expected a JSON array of {{instruction, input, output}} objects")
    return records


def _hub_records(name: str) -> list:
    try:
        ds = hub_dataset(name)
    except Exception as exc:
        raise DataNotFoundError(
            f"--data {name}: not a local file and could not be loaded from the hub ({type(exc).__name__}); "
            "pass a local Alpaca-format .json/.jsonl file"
        ) from None
    return [dict(row) for row in ds]


def load_instructions(source: str = ALPACA_DEMO) -> list[dict]:
    """Alpaca records ``{instruction, input, output}`` from a named set, a local .json/.jsonl file or the hub."""
    if source in NAMED_INSTRUCTIONS:
        records = _read_records(require_data_file(NAMED_INSTRUCTIONS[source]))
    else:
        path = Path(source).expanduser()
        if path.suffix in (".json", ".jsonl") or path.exists():
            records = _read_records(path)
        elif "/" in source:
            records = _hub_records(source)
        else:
            raise DepthpruneError(
                f"--data {source}: use {', '.join(NAMED_INSTRUCTIONS)}, an Alpaca-format .json/.jsonl file, "
                "or a hub dataset id (owner/name)"
            )
    if not records:
        raise DepthpruneError(f"--data {source}: no records")
    out = []
    for i, rec in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if not isinstance(rec, dict) or f not in rec]
        if missing:
            raise DepthpruneError(
                f"--data {source}: record {i} lacks the field(s) {', '.join(missing)}; instruction data needs "
                "'instruction' and 'output' (and optionally 'input'), as in Alpaca"
            )
        out.append({"instruction": str(rec["instruction"]), "input": str(rec.get("input") or ""),
                    "output": str(rec["output"])})
    return out


class TokenDataset:
    """Tokenized examples: ``input_ids`` and ``targets`` (``IGNORE`` where no loss is taken), per example."""

    def __init__(self, input_ids: list[torch.Tensor], targets: list[torch.Tensor], pad_id: int, kind: str):
        if not input_ids:
            raise DepthpruneError("the training data produced no examples")
        self.input_ids, self.targets, self.pad_id, self.kind = input_ids, targets, pad_id, kind
        self.tokens = torch.tensor([len(x) for x in input_ids], dtype=torch.long)
        # position t predicts token t+1: the first token is never a target
        self.predicted = torch.tensor([int((t[1:] != IGNORE).sum()) for t in targets], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices: list[int]) -> dict:
        """Right-padded ``input_ids``/``attention_mask`` and ``labels`` aligned with positions (already shifted)."""
        width = max(int(self.tokens[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        target = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = int(self.tokens[i])
            ids[row, :n], target[row, :n], mask[row, :n] = self.input_ids[i], self.targets[i], 1
        labels = torch.full_like(target, IGNORE)
        labels[:, :-1] = target[:, 1:]
        out = {"input_ids": ids, "labels": labels}
        if not bool(mask.all()):
            out["attention_mask"] = mask
        return out


def pad_id_of(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def instruction_dataset(records: list[dict], tokenizer, max_len: int = 256,
                        train_on_inputs: bool = False) -> TokenDataset:
    """Alpaca examples: [BOS] prompt response [EOS], cut to ``max_len``; loss on the response only by default."""
    if max_len < 2:
        raise DepthpruneError(f"--max-len must be >= 2, got {max_len}")
    bos, eos = bos_id(tokenizer), getattr(tokenizer, "eos_token_id", None)
    prompts = tokenizer([alpaca_prompt(r) for r in records], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r["output"] for r in records], add_special_tokens=False)["input_ids"]
    ids_list, targets = [], []
    for p, a in zip(prompts, answers):
        head = ([bos] if bos is not None else []) + list(p)
        tail = list(a) + ([eos] if eos is not None else [])
        ids = torch.tensor((head + tail)[:max_len], dtype=torch.long)
        target = ids.clone()
        if not train_on_inputs:
            target[: len(head)] = IGNORE
        if int((target[1:] != IGNORE).sum()) == 0:
            continue  # prompt fills the whole window: nothing to learn from
        ids_list.append(ids)
        targets.append(target)
    if not ids_list:
        raise DepthpruneError(f"every example's prompt is longer than --max-len {max_len}; raise --max-len")
    return TokenDataset(ids_list, targets, pad_id_of(tokenizer), "instructions")


def packed_text_dataset(source: str, tokenizer, seq_len: int, text_field: str = "text") -> TokenDataset:
    """Raw text cut into rows of ``seq_len`` model inputs ([BOS] + seq_len-1 tokens when there is a BOS)."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise DepthpruneError(f"--seq-len must be an integer >= 2, got {seq_len}")
    ids = tokenize(tokenizer, load_text(source, text_field))
    bos = bos_id(tokenizer)
    width = seq_len - 1 if bos is not None else seq_len
    n = ids.numel() // width
    if n == 0:
        raise DepthpruneError(f"--data {source}: {ids.numel()} tokens, fewer than one sequence of {seq_len}")
    rows = ids[: n * width].view(n, width)
    if bos is not None:
        rows = torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)
    seqs = list(rows)
    return TokenDataset(seqs, seqs, pad_id_of(tokenizer), "packed text")
