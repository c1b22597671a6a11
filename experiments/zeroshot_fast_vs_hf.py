"""Zero-shot on Gemma 3 270M: lm-eval's stock HFLM against FastHFLM, on the same requests, float32 and bf16.

Each configuration (backend x batch size x dtype) runs ``evaluate_zeroshot`` on the first ``--limit``
documents of each of the 7 tasks in a fresh subprocess (so memory peaks do not mix), recording every
request's answer through lm-eval's cache hook, the wall and CPU time of the loglikelihood pass, and the
peak RSS (a psutil sampling thread, plus ``ru_maxrss``). Then, per dtype, a *paired* run times HFLM and
FastHFLM taking turns task by task in one process, so that other users' load on a shared CPU hits both alike
(the speed figures to quote). The parent compares the answers of each ``fast``
configuration with ``hf`` at the same dtype (max |loglik diff|, is_greedy, accuracies) and writes
``docs/results/zeroshot_fast_vs_hf_gemma3_270m.{json,md}``. Configurations already in the JSON (same limit
and threads) are skipped, so an interrupted run resumes.

    nice -n 10 python experiments/zeroshot_fast_vs_hf.py --limit 100     # about 1-2 h on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import RESULTS

NAME = "zeroshot_fast_vs_hf_gemma3_270m"
WORK = Path(__file__).resolve().parent / ".out" / NAME  # per-request answers (gitignored)
CONFIGS = [("hf", 8, "float32"), ("fast", 8, "float32"), ("fast", 16, "float32"),
           ("hf", 8, "bfloat16"), ("fast", 8, "bfloat16"), ("fast", 16, "bfloat16"),
           ("hf", 4, "float32")]  # the last: HF against itself at another batch size (its own noise floor)
GiB = 2**30


def key_of(backend: str, batch: int, dtype: str) -> str:
    return f"{backend}-b{batch}-{dtype}"


class PeakRSS:
    """Samples this process's RSS every 10 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def worker(key: str, limit: int, threads: int, out: Path) -> None:
    """One configuration, in this (fresh) process: writes metrics and per-request answers to ``out``."""
    import gc

    import psutil
    import torch
    from lm_eval.api.model import hash_args

    from depthprune.evaluation import zeroshot
    from depthprune.models import load_model

    torch.set_num_threads(threads)
    backend, batch, dtype = key.split("-")
    batch = int(batch[1:])
    lm = load_model("gemma-3-270m", dtype=dtype, device="cpu")
    model, tok = lm.model, lm.tokenizer
    with torch.no_grad():  # page every weight in (a fresh checkpoint load leaves them mapped, not resident)
        model(torch.tensor([[tok.bos_token_id or 0]]))
    gc.collect()
    rss_loaded = psutil.Process().memory_info().rss
    weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    answers, timing, holder = {}, {}, {}

    class Recorder:  # lm-eval's cache hook interface: both HFLM and FastHFLM call it once per request
        def add_partial(self, attr, req, res):
            answers[hash_args(attr, req)] = [float(res[0]), bool(res[1])]

    make_lm = zeroshot.make_lm

    def recording_make_lm(*a, **kw):
        inner = make_lm(*a, **kw)
        inner.set_cache_hook(Recorder())
        holder["lm"] = inner
        ll = inner.loglikelihood

        def timed(requests, *args, **kwargs):
            timing["rss_before"] = psutil.Process().memory_info().rss
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            with PeakRSS() as rss:
                res = ll(requests, *args, **kwargs)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            timing.update(wall_s=time.perf_counter() - t0, requests=len(requests), peak_rss=rss.peak,
                          cpu_s=(cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime))
            return res

        inner.loglikelihood = timed
        return inner

    zeroshot.make_lm = recording_make_lm
    load0 = os.getloadavg()[0]
    res = zeroshot.evaluate_zeroshot(model, tok, limit=limit, batch_size=batch, backend=backend, source="local")
    stats = getattr(holder["lm"], "stats", None)
    result = {
        "backend": backend, "batch_size": batch, "dtype": dtype, "threads": threads, "limit": limit,
        "requests": timing["requests"], "loglikelihood_wall_s": timing["wall_s"], "cpu_s": timing["cpu_s"],
        "requests_per_s": timing["requests"] / timing["wall_s"],
        "cpu_ms_per_request": 1000 * timing["cpu_s"] / timing["requests"], "evaluate_wall_s": res.wall_s,
        "peak_rss_bytes": timing["peak_rss"], "rss_after_load_bytes": rss_loaded,
        "rss_before_loglikelihood_bytes": timing["rss_before"],
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "weights_bytes": weights,
        "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
        "tasks": {t: {"n": s.n, "acc": s.acc, "acc_norm": s.acc_norm, "score": s.score} for t, s in res.tasks.items()},
        "average": res.average,
        "fast_stats": stats.to_json() if stats is not None else None,
        "fast_probe": getattr(holder["lm"], "probe_diffs", None),
        "memory_budget_bytes": getattr(holder["lm"], "memory_budget_bytes", None),
    }
    out.write_text(json.dumps({"result": result, "answers": answers}))


PAIRED = [("hf", 8), ("fast", 8), ("fast", 16)]


def paired_worker(dtype: str, limit: int, threads: int, out: Path) -> None:
    """Speed with load drift cancelled: one process, the LMs take turns task by task (order rotated)."""
    import torch

    from depthprune.evaluation.zeroshot import PAPER_TASKS, _load_tasks, make_lm
    from depthprune.models import load_model

    torch.set_num_threads(threads)
    lm = load_model("gemma-3-270m", dtype=dtype, device="cpu")
    model, tok = lm.model, lm.tokenizer
    with torch.no_grad():
        model(torch.tensor([[tok.bos_token_id or 0]]))
    tasks, _ = _load_tasks(PAPER_TASKS, {t: "local" for t in PAPER_TASKS})
    per_task = {}
    for name, task in tasks.items():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        per_task[name] = list(task.instances)
    lms = {key_of(b, bs, dtype): make_lm(model, tok, bs, backend=b) for b, bs in PAIRED}
    res = {k: {"wall_s": 0.0, "cpu_s": 0.0, "requests": 0, "tasks": {}, "probe_s": 0.0} for k in lms}
    for k, x in lms.items():
        if hasattr(x, "_decide_mode"):  # the one-time probe, timed on its own
            t0 = time.perf_counter()
            x._mode = x._decide_mode()
            res[k]["probe_s"] = time.perf_counter() - t0
    keys = list(lms)
    for i, (name, reqs) in enumerate(per_task.items()):
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            lms[k].loglikelihood(reqs, disable_tqdm=True)
            wall, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            r = res[k]
            r["wall_s"] += wall
            r["cpu_s"] += cpu
            r["requests"] += len(reqs)
            r["tasks"][name] = {"requests": len(reqs), "wall_s": wall, "cpu_s": cpu}
            print(f"{k} {name}: {len(reqs) / wall:.2f} req/s (load {os.getloadavg()[0]:.1f})", flush=True)
    ref = res[key_of("hf", 8, dtype)]
    for r in res.values():
        r["requests_per_s"] = r["requests"] / r["wall_s"]
        r["speedup_wall"] = ref["wall_s"] / r["wall_s"]
        r["speedup_cpu"] = ref["cpu_s"] / r["cpu_s"]
        r["speedup_wall_with_probe"] = ref["wall_s"] / (r["wall_s"] + r["probe_s"])
        r["task_speedup_wall"] = {t: ref["tasks"][t]["wall_s"] / v["wall_s"] for t, v in r["tasks"].items()}
    out.write_text(json.dumps({"result": res}))


def compare(a: dict, b: dict, ra: dict, rb: dict) -> dict:
    """``b`` (answers, result) against the reference ``a``."""
    common = sorted(set(a) & set(b))
    diffs = [abs(a[k][0] - b[k][0]) for k in common]
    tasks = {}
    for t, x in ra["tasks"].items():
        y = rb["tasks"][t]
        tasks[t] = {m: round(abs((x[m] or 0) - (y[m] or 0)) * x["n"]) for m in ("acc", "acc_norm")}
    return {"requests": len(common), "missing": len(set(a) ^ set(b)), "max_abs_diff": max(diffs, default=None),
            "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
            "greedy_mismatches": sum(a[k][1] != b[k][1] for k in common),
            "examples_differing": tasks, "max_examples_differing": max(max(v.values()) for v in tasks.values())}


def summarize(data: dict, answers: dict) -> None:
    cfg = data["configs"]
    data["comparisons"] = {}
    for key, r in cfg.items():
        ref = key_of("hf", 8, r["dtype"])
        if key != ref and ref in cfg and key in answers and ref in answers:
            c = compare(answers[ref], answers[key], cfg[ref], r)
            c |= {"reference": ref, "speedup_wall": r["requests_per_s"] / cfg[ref]["requests_per_s"],
                  "speedup_cpu": cfg[ref]["cpu_ms_per_request"] / r["cpu_ms_per_request"]}
            data["comparisons"][key] = c
    ref32 = key_of("hf", 8, "float32")
    for key in (key_of("hf", 8, "bfloat16"), key_of("fast", 8, "bfloat16")):
        if key in answers and ref32 in answers:  # how far bf16 is from float32, for either backend
            data["comparisons"][f"{key} vs {ref32}"] = compare(answers[ref32], answers[key], cfg[ref32], cfg[key])


def markdown(data: dict) -> str:
    cfg, cmp_ = data["configs"], data["comparisons"]
    lines = [f"# Zero-shot: FastHFLM vs lm-eval HFLM on Gemma 3 270M (CPU, {data['threads']} thread(s))", "",
             f"First {data['limit']} documents of each of the 7 tasks ({next(iter(cfg.values()))['requests']} "
             "loglikelihood requests), the same requests for every configuration, each configuration in a fresh "
             "process. `experiments/zeroshot_fast_vs_hf.py`; the machine is a shared 2-core CPU, so wall times move "
             "with other users' load (load average recorded); CPU time per request is steadier.", "",
             "Memory: *peak* is the largest RSS sampled during the loglikelihood pass; *before* the RSS when it "
             "started (weights paged in by one warm-up forward pass, tokenizer, lm-eval and its task data loaded); "
             "*peak - before* is what scoring itself allocated. `hf-b4-float32` is HFLM against itself at another "
             "batch size: the noise floor of float32 kernels.", "",
             "| config | requests/s | wall s | CPU ms/request | speedup (wall) | speedup (CPU) | peak RSS GiB | "
             "before GiB | peak - before GiB | weights GiB | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in cfg.items():
        c = cmp_.get(key, {})
        sp = f"{c['speedup_wall']:.2f}x" if c else "–"
        spc = f"{c['speedup_cpu']:.2f}x" if c else "–"
        lines.append(
            f"| {key} | {r['requests_per_s']:.2f} | {r['loglikelihood_wall_s']:.0f} | {r['cpu_ms_per_request']:.0f} | "
            f"{sp} | {spc} | {r['peak_rss_bytes'] / GiB:.2f} | {r['rss_before_loglikelihood_bytes'] / GiB:.2f} | "
            f"{(r['peak_rss_bytes'] - r['rss_before_loglikelihood_bytes']) / GiB:.2f} | "
            f"{r['weights_bytes'] / GiB:.2f} | "
            f"{r['loadavg_start']:.1f}-{r['loadavg_end']:.1f} |")
    lines += ["", "Agreement (per-request loglikelihoods, is_greedy, accuracies; examples differing = |acc difference| "
              "x n, the larger of acc and acc_norm, worst task):", "",
              "| compared | reference | requests | max abs loglik diff | mean abs diff | is_greedy mismatches | "
              "examples differing |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, c in cmp_.items():
        ref = c.get("reference", key.split(" vs ")[-1])
        lines.append(f"| {key.split(' vs ')[0]} | {ref} | {c['requests']} | {c['max_abs_diff']:.3g} | "
                     f"{c['mean_abs_diff']:.3g} | {c['greedy_mismatches']} | {c['max_examples_differing']} |")
    tasks = list(next(iter(cfg.values()))["tasks"])
    lines += ["", "Paper metric per task (%):", "", "| config | " + " | ".join(tasks) + " | avg |",
              "|---|" + "---:|" * (len(tasks) + 1)]
    for key, r in cfg.items():
        lines.append(f"| {key} | " + " | ".join(f"{r['tasks'][t]['score'] * 100:.2f}" for t in tasks)
                     + f" | {r['average'] * 100:.2f} |")
    if data.get("paired"):
        lines += ["", "## Speed, paired (the figure to quote)", "",
                  "One process per dtype; HFLM and FastHFLM take turns task by task (order rotated), so other users' "
                  "load hits both alike. Speedup = HFLM batch 8's time / this one's (the FastHFLM probe, run once "
                  "per evaluation, is listed apart and included in the last column).", "",
                  "| config | requests/s | wall s | CPU s | speedup (wall) | speedup (CPU) | probe s | "
                  "speedup incl. probe | per task (wall) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for res in data["paired"].values():
            for key, r in res.items():
                per = ", ".join(f"{t} {v:.1f}x" for t, v in r["task_speedup_wall"].items())
                lines.append(f"| {key} | {r['requests_per_s']:.2f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                             f"{r['speedup_wall']:.2f}x | {r['speedup_cpu']:.2f}x | {r['probe_s']:.1f} | "
                             f"{r['speedup_wall_with_probe']:.2f}x | {per} |")
    fast = [r for r in cfg.values() if r["fast_stats"]]
    if fast:
        r = fast[0]
        lines += ["", f"FastHFLM memory budget {r['memory_budget_bytes'] / GiB:.2f} GiB per model call (activations "
                  "+ vocabulary-slice temporaries, on top of the weights). Largest per-call figures:", "",
                  "| config | mode | probe s | model calls | body tokens | head positions | max call tokens | "
                  "max logits MiB | max est. activations MiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, r in cfg.items():
            s = r["fast_stats"]
            if s:
                lines.append(f"| {key} | {s['mode']} | {s['probe_s']:.1f} | {s['model_calls']} | {s['tokens']} | "
                             f"{s['head_positions']} | "
                             f"{s['max_call_tokens']} | {s['max_logits_bytes'] / 2**20:.0f} | "
                             f"{s['max_est_activation_bytes'] / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=300, help="documents per task (default 300)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (default 1: steadier on a shared CPU)")
    ap.add_argument("--only", default=None, help="comma-separated configuration keys to run (default: all)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-paired", action="store_true", help="skip the paired speed runs")
    ap.add_argument("--paired-only", action="store_true", help="only the paired speed runs")
    a = ap.parse_args()
    if a.worker:
        if a.worker.startswith("paired-"):
            paired_worker(a.worker.removeprefix("paired-"), a.limit, a.threads, Path(a.out))
        else:
            worker(a.worker, a.limit, a.threads, Path(a.out))
        return
    from depthprune.core.io import write_json_atomic

    path = RESULTS / f"{NAME}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if data.get("limit") != a.limit or data.get("threads") != a.threads:
        if data.get("configs"):
            print(f"{path}: made with limit {data.get('limit')}, threads {data.get('threads')}; starting over")
        data = {"limit": a.limit, "threads": a.threads, "configs": {}}
    WORK.mkdir(parents=True, exist_ok=True)
    keys = [key_of(*c) for c in CONFIGS]
    if a.only or a.paired_only:
        keys = [k for k in keys if k in (a.only or "").split(",")]
    answers = {}
    for key in [key_of(*c) for c in CONFIGS]:
        f = WORK / f"{key}-limit{a.limit}-t{a.threads}.json"
        if key in data["configs"] and f.exists():
            answers[key] = json.loads(f.read_text())["answers"]
    for key in keys:
        if key in data["configs"] and key in answers:
            print(f"{key}: done already, skipped", flush=True)
            continue
        f = WORK / f"{key}-limit{a.limit}-t{a.threads}.json"
        print(f"{key}: running ({time.strftime('%H:%M:%S')})", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        done = subprocess.run([sys.executable, __file__, "--worker", key, "--limit", str(a.limit), "--threads",
                               str(a.threads), "--out", str(f)], env=env)
        if done.returncode:  # e.g. HFLM killed for memory on this shared machine: record it, go on, rerun later
            data.setdefault("failed", {})[key] = f"exit {done.returncode} at {time.strftime('%H:%M')}"
            print(f"{key}: failed ({data['failed'][key]}); rerun the script later to fill it in", flush=True)
            write_json_atomic(path, data)
            continue
        data.get("failed", {}).pop(key, None)
        got = json.loads(f.read_text())
        data["configs"][key] = got["result"]
        answers[key] = got["answers"]
        r = got["result"]
        print(f"{key}: {r['requests']} requests, {r['requests_per_s']:.2f} req/s, peak RSS "
              f"{r['peak_rss_bytes'] / GiB:.2f} GiB", flush=True)
        summarize(data, answers)
        write_json_atomic(path, data)
        (RESULTS / f"{NAME}.md").write_text(markdown(data))
    data.setdefault("paired", {})
    for dtype in [] if a.no_paired else ["float32", "bfloat16"]:
        if dtype in data["paired"]:
            print(f"paired-{dtype}: done already, skipped", flush=True)
            continue
        f = WORK / f"paired-{dtype}-limit{a.limit}-t{a.threads}.json"
        print(f"paired-{dtype}: running ({time.strftime('%H:%M:%S')})", flush=True)
        done = subprocess.run([sys.executable, __file__, "--worker", f"paired-{dtype}", "--limit", str(a.limit),
                               "--threads", str(a.threads), "--out", str(f)],
                              env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
        if done.returncode:
            data.setdefault("failed", {})[f"paired-{dtype}"] = f"exit {done.returncode} at {time.strftime('%H:%M')}"
            print(f"paired-{dtype}: failed; rerun the script later to fill it in", flush=True)
            write_json_atomic(path, data)
            continue
        data.get("failed", {}).pop(f"paired-{dtype}", None)
        data["paired"][dtype] = json.loads(f.read_text())["result"]
        write_json_atomic(path, data)
        (RESULTS / f"{NAME}.md").write_text(markdown(data))
    summarize(data, answers)
    write_json_atomic(path, data)
    (RESULTS / f"{NAME}.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
