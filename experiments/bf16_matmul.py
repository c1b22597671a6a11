"""Whether bf16 pays on this CPU: one LM-head slice matmul (Gemma 3 270M shapes) in bfloat16 vs float32.

Prints the CPU, whether it has native bf16 (AVX-512 BF16 / AMX, as ``--dtype auto`` and ``bfloat16-if-native``
read it), and the best of 3 timings of ``F.linear`` of 5412 hidden states (640) by 4133 vocabulary rows, the slice
FastHFLM ran when this was measured, at 1 and 2 threads.

    python experiments/bf16_matmul.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from depthprune.models.placement import cpu_has_native_bf16


def best_of(fn, n: int = 3) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    print(f"CPU: {cpu}; torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}; "
          f"native bf16: {cpu_has_native_bf16()}")
    h, w = torch.randn(5412, 640), torch.randn(4133, 640)
    hb, wb = h.bfloat16(), w.bfloat16()
    print("| threads | float32 s | bfloat16 s | bf16 / fp32 |\n|---:|---:|---:|---:|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fp32 = best_of(lambda: F.linear(h, w))
        bf16 = best_of(lambda: F.linear(hb, wb))
        print(f"| {threads} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
