"""Does the compute-dtype probe (llmft.training.cpu.measure_matmul_rates) pick the dtype that really trains faster?

In one invocation: the probe (measured afresh, not read from the cache), then short training runs of the demo recipe's
settings on the embedded model, bf16 and fp32 alternating (fp32, bf16, fp32, bf16, ...), each a fresh Trainer timing
`--steps` optimizer steps after one warm-up step. Prints one JSON line per run and a closing line with the medians,
the bf16/fp32 speed ratio of training and of the probe, and whether the probe's verdict agrees. Run it once per ISA
setting, e.g. `ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python bench/...`.

    .venv/bin/python bench/compute_dtype.py --data runs/demo/data [--steps 4] [--rounds 2] [--profile]

--profile also runs torch.profiler over one more step of each dtype and prints the top operators by self CPU time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, loadavg, peak_rss_mb  # noqa: E402

ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def demo_train_config(data: str, out: str, bf16: bool, steps: int):
    from llmft.pipeline.recipe import load_recipe

    train = load_recipe("demo").train
    return dataclasses.replace(train, data=data, out=out, bf16="true" if bf16 else "false", max_steps=steps,
                               eval_every=0, save_every=0, dev_limit=0, tensorboard=False)


def time_training(data: str, bf16: bool, steps: int, profile_rows: int = 0) -> dict:
    from llmft.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="llmft-dtype-") as tmp:
        trainer = Trainer(demo_train_config(data, str(Path(tmp) / "run"), bf16, steps + 2))
        trainer.setup()
        trainer.train_step()                           # warm-up: kernel selection, allocator growth
        times, tokens = [], 0
        for _ in range(steps):
            started = time.perf_counter()
            tokens += trainer.train_step()["real"]
            times.append(time.perf_counter() - started)
        result = {"dtype": "bf16" if bf16 else "fp32", "steps": steps, "step_s": round(statistics.median(times), 3),
                  "tokens_per_s": round(tokens / sum(times), 1), "load": loadavg()}
        if profile_rows:
            result["profile"] = profile_step(trainer, profile_rows)
        del trainer
    return result


def profile_step(trainer, rows: int) -> list[dict]:
    """Top operators of one optimizer step by self CPU time (share of the step's total self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared demo data folder (runs/demo/data)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="fp32 + bf16 pairs")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    from llmft.training.cpu import BF16_MIN_SPEEDUP, measure_matmul_rates, tune_process

    tuning = tune_process()
    isa = {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)}
    print(json.dumps({"cpu": cpu_model(), "isa_env": isa or "native", "capability":
                      torch.backends.cpu.get_cpu_capability(), "threads": tuning["threads"], "torch": torch.__version__,
                      "load": loadavg()}), flush=True)
    probe = measure_matmul_rates()
    print(json.dumps({"probe": probe}), flush=True)
    runs = []
    for round_index in range(args.rounds):
        for bf16 in (False, True):
            profile_rows = 15 if args.profile and round_index == args.rounds - 1 else 0
            runs.append(time_training(args.data, bf16, args.steps, profile_rows))
            print(json.dumps(runs[-1]), flush=True)
    rate = {d: statistics.median(r["tokens_per_s"] for r in runs if r["dtype"] == d) for d in ("fp32", "bf16")}
    probe_ratio = probe["bf16_gflops"] / probe["fp32_gflops"]
    probe_says_bf16 = probe_ratio >= BF16_MIN_SPEEDUP
    print(json.dumps({"train_tokens_per_s": rate, "train_bf16_over_fp32": round(rate["bf16"] / rate["fp32"], 3),
                      "probe_bf16_over_fp32": round(probe_ratio, 3), "probe_picks": "bf16" if probe_says_bf16
                      else "fp32", "faster_in_training": "bf16" if rate["bf16"] > rate["fp32"] else "fp32",
                      "peak_rss_mb": round(peak_rss_mb()), "load": loadavg()}), flush=True)


if __name__ == "__main__":
    main()
