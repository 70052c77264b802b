"""The demo pipeline from scratch under each CPU ISA setting of issue 15, for BENCHMARKS.md. Run it on a QUIET machine.

Settings (environment variables that cap the kernels torch may use, so one AMX machine stands in for three CPUs):
  native       whatever the CPU has (AMX on Sapphire Rapids and later)
  avx512-bf16  ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 (an AVX-512 BF16 CPU without AMX)
  avx2         ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 (fp32 matmuls go through
               MKL, so all three are needed)

Each setting runs in a fresh run folder `ROOT/<setting>` with a fresh llmft cache (`ROOT/<setting>-cache`: the
embedded model is converted, the compute dtype probed and the data tokenized again, as on a new machine):

  default  `.venv/bin/llmft run --out ROOT/<setting>` with this checkout's .venv (add make's set-up time yourself:
           `time make install` in a fresh clone);
  --make   a fresh `git clone` of this checkout per setting and `make run` in it (venv and pip install included), the
           issue's "make run from a fresh clone".

It prints, per setting, wall minutes, the chosen compute dtype with the probe's rates, the steps the budget fitted,
the seconds per step, the stage minutes and base -> tuned exact match / ROUGE-L (test split, n records), then a
Markdown table to paste into BENCHMARKS.md. Results also go to ROOT/isa_make_run.jsonl.

    .venv/bin/python bench/isa_make_run.py --root /tmp/isa [--settings native,avx512-bf16,avx2] [--make]
    # a dry check of the script itself (minutes, not the real measurement):
    .venv/bin/python bench/isa_make_run.py --root /tmp/isa-dry --set demo_instances=10 --set train.max_steps=3 \\
        --set data.test_instances_per_task=1 --set eval.max_new_tokens=4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ISA_SETTINGS as SETTINGS  # noqa: E402
from _common import REPO, cpu_flags, cpu_model, isa_env, loadavg  # noqa: E402


def setting_env(name: str, cache: Path) -> dict:
    env = isa_env(dict(os.environ), name)
    env.update({"LLMFT_CACHE": str(cache), "LLMFT_NO_PROGRESS": "1"})
    return env


def run_setting(name: str, root: Path, overrides: list[str], make: bool) -> dict:
    out, cache = root / name, root / f"{name}-cache"
    for path in (out, cache):
        if path.exists():
            raise SystemExit(f"{path} exists: give a new --root (every setting starts from scratch)")
    env = setting_env(name, cache)
    sets = [arg for item in overrides for arg in ("--set", item)]
    if make:
        clone = root / f"{name}-clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        command = ["make", "-C", str(clone), "run", f"RUN_DIR={out}"]
        if sets:
            raise SystemExit("--make runs the recipe as make does; --set is for the default mode")
    else:
        command = [str(REPO / ".venv" / "bin" / "llmft"), "run", "--out", str(out), *sets]
    log = root / f"{name}.log"
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    minutes = (time.perf_counter() - started) / 60
    result = {"setting": name, "env": SETTINGS[name], "mode": "make run (fresh clone)" if make else "llmft run",
              "exit": code, "wall_min": round(minutes, 2), "log": str(log), "load_after": loadavg()}
    if make:
        result["commit"] = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True).stdout.strip()
    if code == 0:
        result.update(read_run(out))
    return result


def read_run(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    manifest = json.loads((out / "train" / "manifest.json").read_text(encoding="utf-8"))
    fit_path = out / "budget.json"
    fit = json.loads(fit_path.read_text(encoding="utf-8")) if fit_path.exists() else None
    choice = manifest.get("compute_dtype") or {}
    rates = choice.get("rates") or {}
    overall = summary["overall"]
    return {
        "dtype": "bf16" if manifest.get("bf16") else "fp32", "dtype_reason": choice.get("reason"),
        "probe_gflops": {k: rates.get(f"{k}_gflops") for k in ("fp32", "bf16")} if rates else None,
        "steps": summary["train"]["steps"], "tokens_per_s": summary["train"]["tokens_per_s"],
        "step_s": fit["fit"]["step_s"] if fit else None, "budget_minutes": fit["budget_minutes"] if fit else None,
        "eval_records": overall["tuned"]["n"],
        "stage_min": {k: round((v.get("seconds") or 0) / 60, 2) for k, v in summary["stages"].items()},
        "exact_match": [round(overall[m]["exact_match"], 1) for m in ("base", "tuned")],
        "rougeL": [round(overall[m]["rougeL"], 1) for m in ("base", "tuned")],
    }


def markdown(results: list[dict]) -> str:
    lines = ["| ISA setting | wall min | dtype (probe GFLOP/s fp32 / bf16) | steps (s/step) | stages min "
             "(demo, prepare, budget, train, eval) | n | exact match base -> tuned | ROUGE-L base -> tuned |",
             "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in results:
        if r["exit"]:
            lines.append(f"| {r['setting']} | {r['wall_min']} | failed (exit {r['exit']}, {r['log']}) | | | | | |")
            continue
        probe = r["probe_gflops"]
        rates = f" ({probe['fp32']:.0f} / {probe['bf16']:.0f})" if probe else f" ({r['dtype_reason']})"
        stages = ", ".join(f"{r['stage_min'].get(s, 0):.1f}" for s in ("demo", "prepare", "budget", "train", "eval"))
        step = f" ({r['step_s']:.1f})" if r["step_s"] else ""
        lines.append(f"| {r['setting']} | {r['wall_min']:.1f} | {r['dtype']}{rates} | {r['steps']}{step} | {stages} "
                     f"| {r['eval_records']} | {r['exact_match'][0]} -> {r['exact_match'][1]} | "
                     f"{r['rougeL'][0]} -> {r['rougeL'][1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a new folder for the run folders, caches and logs")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--make", action="store_true", help="fresh clone + `make run` per setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override passed to llmft run (dry checks only)")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    flags = cpu_flags()
    print(json.dumps({"cpu": cpu_model(), "cores": os.cpu_count(), "isa_flags": sorted(
        f for f in flags if f.startswith(("amx", "avx512_bf16", "avx2"))), "load_before": loadavg(),
        "overrides": args.overrides}), flush=True)
    results = []
    for name in names:
        results.append(run_setting(name, root, args.overrides, args.make))
        print(json.dumps(results[-1]), flush=True)
        with open(root / "isa_make_run.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(results[-1]) + "\n")
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
