"""Measuring one (batch size M, output length L) setting: latency, throughput, peak memory.

Protocol (Sheng et al., as in Shortened LLaMA): a fixed prompt of ``input_tokens`` tokens repeated over the
batch, greedy decoding forced to exactly ``L`` new tokens (``min_new_tokens = max_new_tokens = L``, so EOS
cannot stop it), latency = time to produce the M x L tokens including the prompt's prefill, throughput =
M x L / latency, ``warmup`` untimed runs then ``runs`` timed ones.

Timing: on CUDA, all devices holding the model are synchronised and the time is taken with CUDA events on
the input device; on other accelerators, synchronise + wall clock; on CPU, wall clock. Peak memory: on
accelerators, ``max_memory_allocated`` summed over the model's devices, reset per setting; on CPU, the
peak resident set size (RSS) of the whole process, sampled by a background thread during the setting.
"""

from __future__ import annotations

import copy
import gc
import statistics
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from depthprune.errors import DepthpruneError

PROMPT_TEXT = ("Depth pruning removes whole transformer blocks from a large language model, and the smaller "
               "model then generates text faster on the same hardware because")
RSS_INTERVAL_S = 0.01


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors of any device (torch.OutOfMemoryError, RuntimeError 'out of memory')."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def model_devices(model: torch.nn.Module) -> list[torch.device]:
    """Distinct devices holding the model's parameters (several under a multi-GPU device_map)."""
    devs = {p.device for p in model.parameters()}
    return sorted(devs, key=str)


def make_prompt(tokenizer, length: int, vocab_size: int, bos_token_id: int | None = None) -> torch.Tensor:
    """A fixed prompt of exactly ``length`` token ids, shape (1, length).

    With a tokenizer: the tokens of a fixed sentence (special tokens such as BOS included), repeated or cut.
    Without one (random-weight models built from a config): a fixed arithmetic sequence of ids after BOS.
    """
    if tokenizer is not None:
        ids = list(tokenizer(PROMPT_TEXT)["input_ids"])
        more = list(tokenizer(" " + PROMPT_TEXT, add_special_tokens=False)["input_ids"])
        while len(ids) < length:
            ids += more
    else:
        ids = [] if bos_token_id is None else [bos_token_id]
        ids += [(100 + 37 * i) % vocab_size for i in range(length)]
    return torch.tensor([ids[:length]], dtype=torch.long)


def greedy_config(model, new_tokens: int, pad_token_id: int | None):
    """The model's generation config made greedy and forced to exactly ``new_tokens`` new tokens."""
    gen = copy.deepcopy(model.generation_config)
    gen.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None, min_p=None,
               max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_length=None, stop_strings=None)
    if pad_token_id is not None:
        gen.pad_token_id = pad_token_id
    elif gen.pad_token_id is None:
        eos = gen.eos_token_id
        gen.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return gen


def generate_exact(model, input_ids: torch.Tensor, new_tokens: int, pad_token_id: int | None = None) -> torch.Tensor:
    """Greedy generation of exactly ``new_tokens`` tokens per sequence (EOS cannot stop it early)."""
    gen = greedy_config(model, new_tokens, pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=gen)
    got = out.shape[1] - input_ids.shape[1]
    if got != new_tokens:
        raise DepthpruneError(f"generation produced {got} new tokens instead of {new_tokens}; "
                              "the model's generation config stops early (check stop strings / custom stopping)")
    return out


class Clock:
    """Times a callable after synchronising every device the model lives on."""
    def __init__(self, devices: list[torch.device]):
        self.accel = [d for d in devices if d.type != "cpu"]
        self.primary = self.accel[0] if self.accel else None
        if self.primary is not None and self.primary.type == "cuda":
            self.method = "cuda events (all model devices synchronised)"
        elif self.primary is not None:
            self.method = f"wall clock after {self.primary.type} synchronise"
        else:
            self.method = f"wall clock (time.perf_counter), {torch.get_num_threads()} CPU threads"

    def sync(self) -> None:
        for d in self.accel:
            if d.type == "cuda":
                torch.cuda.synchronize(d)
            elif hasattr(torch, "accelerator"):
                torch.accelerator.synchronize(d)

    def time(self, fn) -> float:
        """Seconds taken by ``fn()``, device work included."""
        self.sync()
        if self.primary is not None and self.primary.type == "cuda":
            stream = torch.cuda.current_stream(self.primary)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn()
            self.sync()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0


@dataclass
class PeakMemory:
    """Context manager measuring the peak memory of one setting (see the module docstring)."""
    devices: list[torch.device]
    interval_s: float = RSS_INTERVAL_S
    peak_bytes: int | None = None
    start_bytes: int | None = None
    method: str = ""
    per_device: dict = field(default_factory=dict)

    def __post_init__(self):
        self.accel = [d for d in self.devices if d.type != "cpu"]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.accel:
            self.method = "max_memory_allocated (reset per setting), summed over the model's devices"
            for d in self.accel:
                _accel_call(d, "reset_peak_memory_stats")
            self.start_bytes = sum(_accel_call(d, "memory_allocated") or 0 for d in self.accel)
            return self

        proc = psutil.Process()
        self.method = (f"peak RSS of the whole process (psutil, sampled every {self.interval_s * 1000:.0f} ms during "
                       "the setting; includes the weights and memory kept by the allocator from earlier settings)")
        self.start_bytes = self.peak_bytes = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)

        self._proc = proc
        self._thread = threading.Thread(target=sample, name="depthprune-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.accel:
            self.per_device = {str(d): _accel_call(d, "max_memory_allocated") for d in self.accel}
            vals = [v for v in self.per_device.values() if v is not None]
            self.peak_bytes = sum(vals) if vals else None
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)


def _accel_call(device: torch.device, name: str):
    """``torch.cuda.<name>(device)``, or ``torch.accelerator.<name>`` for other accelerators when available."""
    mod = torch.cuda if device.type == "cuda" else getattr(torch, "accelerator", None)
    fn = getattr(mod, name, None)
    if fn is None:
        return None
    return fn(device) if device.type == "cuda" else fn(device.index)


def free_memory(devices: list[torch.device] | None = None) -> None:
    """Collect garbage and return cached blocks of ``devices`` (None: the current accelerator, if any)."""
    gc.collect()
    if devices is None:
        acc = getattr(torch, "accelerator", None)
        current = acc.current_accelerator() if acc is not None and acc.is_available() else None
        devices = [current] if current is not None else []
    for d in devices:
        if d.type == "cuda":
            torch.cuda.empty_cache()
        elif d.type != "cpu" and hasattr(torch, "accelerator"):
            torch.accelerator.empty_cache()


def measure_setting(model, prompt: torch.Tensor, batch_size: int, new_tokens: int, warmup: int, runs: int,
                    pad_token_id: int | None = None) -> dict:
    """Measure one (M, L) setting; an out-of-memory error gives ``{"status": "OOM"}`` instead of raising."""
    devices = model_devices(model)
    clock = Clock(devices)
    record: dict = {"batch_size": batch_size, "output_length": new_tokens, "input_tokens": prompt.shape[1],
                    "timer": clock.method}
    input_ids = prompt.to(model.get_input_embeddings().weight.device).repeat(batch_size, 1)
    out_len: list[int] = []

    def once() -> None:
        out = generate_exact(model, input_ids, new_tokens, pad_token_id)
        out_len.append(out.shape[1] - input_ids.shape[1])

    error = None
    try:
        with PeakMemory(devices) as mem:
            for _ in range(warmup):
                once()
            latencies = [clock.time(once) for _ in range(runs)]
    except Exception as exc:  # only out-of-memory is turned into a result
        if not is_oom(exc):
            raise
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    if error is not None:  # outside the except block, so the traceback no longer pins tensors
        free_memory(devices)
        return record | {"status": "OOM", "error": error}
    mean = statistics.fmean(latencies)
    std = statistics.stdev(latencies) if len(latencies) > 1 else 0.0
    tokens = batch_size * new_tokens
    record.update(
        status="ok",
        new_tokens_per_sequence=sorted(set(out_len)),
        latencies_s=latencies,
        latency_mean_s=mean,
        latency_std_s=std,
        throughput_tok_s=tokens / mean,
        throughput_std_tok_s=statistics.stdev([tokens / t for t in latencies]) if len(latencies) > 1 else 0.0,
        peak_memory_bytes=mem.peak_bytes,
        memory_at_start_bytes=mem.start_bytes,
        memory_method=mem.method,
    )
    if mem.per_device:
        record["peak_memory_per_device"] = mem.per_device
    free_memory(devices)
    return record
