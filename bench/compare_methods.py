"""Full fine-tuning, LoRA and bottleneck adapters on the same training-time budget, on the demo data or the SuperNI
recipe's data (`--recipe superni`: the natural-instructions task files, official task split, English).

The recipe's data is prepared once. Then every configuration runs in its own process (so peak RSS is its own),
one after the other in an interleaved order (adapter, LoRA and full runs alternate, so a change in the machine's
load spreads over all methods instead of hitting one):
1. measure training throughput now (llmft.pipeline.budget.measure_training: a throw-away trainer, one warm-up step,
   timed steps) and fit the optimizer steps to `--train-minutes` of it, so every method gets the same time and its
   learning-rate schedule runs to the end;
2. train (`llmft.training.trainer.train`, the demo recipe's settings plus the configuration's keys);
3. evaluate with `llmft eval`'s own code (evaluate_run: greedy, fp32, adapters unmerged) on a fixed subset of the
   test split (`write_eval_subset`), scores split into held-out tasks (never trained on) and new instances of
   trained task types. The base model is scored
   once, in the first configuration's process.
Each process is pinned to one thread (OMP_NUM_THREADS=1): the machine is shared, and the trainer would otherwise pick
its thread count from the momentary load.

    .venv/bin/python bench/compare_methods.py --train-minutes 2         # all configurations, then the doc's table
    .venv/bin/python bench/compare_methods.py --recipe superni --train-minutes 2 \\
        --natural-instructions ../shared/fixtures/raw/natural_instructions --work /tmp/llmft-compare-superni
    .venv/bin/python bench/compare_methods.py --render                  # the tables again from the results file
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402
RESULTS = REPO / "bench" / "results" / "compare_methods.jsonl"
DOC = REPO / "docs" / "comparison-methods.md"
TABLE_BEGIN, TABLE_END = "<!-- comparison table: begin -->", "<!-- comparison table: end -->"
REFERENCE = "lora-r16"
SEEN_PER_SOURCE = 10       # evaluation subset: every held-out task record, and this many of each trained source
HELD_OUT_PER_TASK = {"demo": None, "superni": 10}   # held-out records per task in the subset (None: all)
NATURAL_INSTRUCTIONS = REPO.parent / "shared" / "fixtures" / "raw" / "natural_instructions"
DEV_LIMIT = 16             # dev examples scored before and after training

# name -> (what it is, TrainConfig keys on top of the recipe). One learning rate per method, not tuned here:
# the recipes' 1e-3 for LoRA and adapters, 5e-5 for full fine-tuning (docs/ablation-superni.md's full row).
CONFIGS = {
    "lora-r16": ("LoRA r16 alpha 32, all linear layers", {"method": "lora", "lora_r": 16, "lora_alpha": 32}),
    "houlsby-64": ("bottleneck 64, Houlsby (after attention and MLP)",
                   {"method": "adapter", "adapter_size": 64, "adapter_placement": "houlsby"}),
    "full": ("full fine-tuning, lr 5e-5", {"method": "full", "lr": 5e-5}),
    "pfeiffer-64": ("bottleneck 64, Pfeiffer (after the MLP)",
                    {"method": "adapter", "adapter_size": 64, "adapter_placement": "pfeiffer"}),
    "lora-r4": ("LoRA r4 alpha 8, all linear layers", {"method": "lora", "lora_r": 4, "lora_alpha": 8}),
    "houlsby-16": ("bottleneck 16, Houlsby (after attention and MLP)",
                   {"method": "adapter", "adapter_size": 16, "adapter_placement": "houlsby"}),
    "pfeiffer-16": ("bottleneck 16, Pfeiffer (after the MLP)",
                    {"method": "adapter", "adapter_size": 16, "adapter_placement": "pfeiffer"}),
}


# ---------------------------------------------------------------- the parent

def prepare_data(work: Path, recipe_name: str, natural_instructions: Path) -> Path:
    """The recipe's prepared folder, as `llmft run` makes it (work/data; the demo's raw data in work/raw)."""
    from llmft.data.demo import write_demo
    from llmft.data.prepare import prepare
    from llmft.pipeline.layout import Layout
    from llmft.pipeline.recipe import load_recipe, resolve_recipe

    sources = {"natural_instructions": [str(natural_instructions)]} if recipe_name == "superni" else None
    recipe = resolve_recipe(load_recipe(recipe_name), work, sources)
    layout = Layout(work)
    if not (layout.data / "manifest.json").exists():
        if sources is None:
            write_demo(layout.raw, seed=recipe.run.demo_seed, instances=recipe.run.demo_instances)
        prepare(recipe.data, layout.data)
    return layout.data


def write_eval_subset(data: Path, path: Path, held_out_per_task: int | None = None) -> Path:
    """The test records of tasks not trained on (all, or the first `held_out_per_task` of each) and the first
    SEEN_PER_SOURCE records of each other source (new instances of trained task types); conversations are left
    out (both recipes' superni template is single-turn)."""
    from llmft import io
    from llmft.evaluation.report import trained_tasks

    seen = trained_tasks(data / "train.jsonl")
    taken: dict[str, int] = {}
    held_out: dict[str, int] = {}
    rows = []
    for row in io.read_jsonl(data / "test.jsonl"):
        if row.get("messages"):
            continue
        if (row["source"], row["task"]) in seen:
            if taken.get(row["source"], 0) >= SEEN_PER_SOURCE:
                continue
            taken[row["source"]] = taken.get(row["source"], 0) + 1
        else:
            if held_out_per_task is not None and held_out.get(row["task"], 0) >= held_out_per_task:
                continue
            held_out[row["task"]] = held_out.get(row["task"], 0) + 1
        rows.append(row)
    io.write_jsonl(path, rows)
    return path


def run_all(names: list[str], minutes: float, work: Path, run_id: str, with_base: bool = True,
            recipe: str = "demo", natural_instructions: Path = NATURAL_INSTRUCTIONS) -> None:
    data = prepare_data(work, recipe, natural_instructions)
    write_eval_subset(data, work / "eval_subset.jsonl", HELD_OUT_PER_TASK[recipe])
    for index, name in enumerate(names):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMFT_NO_PROGRESS": "1"}
        command = [sys.executable, __file__, "--child", name, "--work", str(work), "--train-minutes", str(minutes),
                   "--run-id", run_id, "--recipe", recipe, *(["--with-base"] if with_base and index == 0 else [])]
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        row = json.loads((work / name / "result.json").read_text())
        append(row)
        print(f"  {row['steps']} steps, {row['tokens_per_s']} tok/s, held-out ROUGE-L {row['held_out']['rougeL']}",
              flush=True)
    render()


# ---------------------------------------------------------------- one configuration (child process)

def run_child(name: str, minutes: float, work: Path, run_id: str, with_base: bool, recipe_name: str) -> None:
    import torch

    from _common import loadavg
    from llmft.config import EvalConfig
    from llmft.evaluation.evaluate import evaluate_run
    from llmft.evaluation.report import seen_vs_unseen, trained_tasks
    from llmft.pipeline import budget
    from llmft.pipeline.recipe import load_recipe
    from llmft.training.trainer import train

    what, keys = CONFIGS[name]
    recipe = load_recipe(recipe_name)
    data, run = work / "data", work / name / "run"
    load_start = loadavg()
    cfg = dataclasses.replace(recipe.train, data=str(data), out=str(run), save_every=0, eval_every=0,
                              dev_limit=DEV_LIMIT, **keys)
    rate = budget.measure_training(cfg)
    steps = max(1, int(minutes * 60 / rate.step_s))
    summary = train(dataclasses.replace(cfg, max_steps=steps))
    manifest = json.loads((run / "manifest.json").read_text())
    started = time.perf_counter()
    evaluation = evaluate_run(run, dataclasses.replace(recipe.eval, base=with_base,
                                                       data=str(work / "eval_subset.jsonl")))
    eval_s = time.perf_counter() - started
    split = seen_vs_unseen(run / "predictions.jsonl", trained_tasks(data / "train.jsonl"))
    row = {"run_id": run_id, "recipe": recipe_name, "config": name, "what": what, "keys": keys, "lr": cfg.lr,
           "train_minutes_target": minutes, "probe_step_s": round(rate.step_s, 2), "steps": summary["steps"],
           "train_seconds": summary["train_seconds"], "tokens_per_s": summary["tokens_per_s"],
           "peak_rss_mb": summary["peak_rss_mb"], "trainable_parameters": manifest["trainable_parameters"],
           "total_parameters": manifest["total_parameters"], "final_loss": summary["final_loss"],
           "initial_dev_loss": summary["initial_dev_loss"], "final_dev_loss": summary["final_dev_loss"],
           "overall": _scores(evaluation["tuned"]), "held_out": _scores(split["unseen"]["tuned"]),
           "seen": _scores(split["seen"].get("tuned")), "eval_seconds": round(eval_s, 1),
           "threads": torch.get_num_threads(), "isa": torch.backends.cpu.get_cpu_capability(),
           "load": [load_start, loadavg()], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if with_base:
        row["base"] = {"overall": _scores(evaluation["base"]), "held_out": _scores(split["unseen"]["base"]),
                       "seen": _scores(split["seen"].get("base"))}
    (work / name / "result.json").write_text(json.dumps(row, indent=1))


def _scores(entry: dict | None) -> dict | None:
    if entry is None:
        return None                 # no record in that group (the SuperNI test split has no trained task)
    return {"rougeL": round(entry["rougeL"], 1), "exact_match": round(entry["exact_match"], 1), "n": entry["n"]}


# ---------------------------------------------------------------- results and the doc

def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_runs() -> dict[str, list[dict]]:
    """The results file's rows grouped by invocation, oldest first."""
    runs: dict[str, list[dict]] = {}
    for line in RESULTS.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            runs.setdefault(row["run_id"], []).append(row)
    return runs


def table(rows: list[dict]) -> str:
    reference = next((r for r in rows if r["config"] == REFERENCE), rows[0])
    base = next((r["base"] for r in rows if "base" in r), None)
    recipe = rows[0].get("recipe", "demo")
    title = f"### {recipe} recipe, invocation {rows[0]['run_id']}: {', '.join(r['config'] for r in rows)}"
    lines = [title, "", "| configuration | trainable params | peak RSS (GB) | real tokens/s (x LoRA r16) | steps | "
             "train s | dev loss | held-out ROUGE-L / EM | seen tasks ROUGE-L / EM | all ROUGE-L / EM |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| base model (no training) | 0 | - | - | 0 | - | {rows[0]['initial_dev_loss']:.3f} | "
             + (f"{_pair(base['held_out'])} | {_pair(base['seen'])} | {_pair(base['overall'])} |" if base
                else "not scored in this invocation | | |")]
    for r in rows:
        ratio = r["tokens_per_s"] / reference["tokens_per_s"]
        lines.append(f"| {r['config']}: {r['what']} | {r['trainable_parameters'] / 1e6:.2f}M | "
                     f"{r['peak_rss_mb'] / 1024:.2f} | {r['tokens_per_s']:.0f} ({ratio:.2f}x) | {r['steps']} | "
                     f"{r['train_seconds']:.0f} | {r['final_dev_loss']:.3f} | "
                     f"{_pair(r['held_out'])} | {_pair(r['seen'])} | {_pair(r['overall'])} |")
    first = rows[0]
    n = (first["held_out"]["n"], (first["seen"] or {"n": 0})["n"])
    loads = [x for r in rows for x in (r["load"][0][0], r["load"][1][0])]
    lines += ["", f"Run {first['run_id']}, {first['date']}; {first['train_minutes_target']} training minutes per "
              f"configuration (steps fitted from a throughput probe) at {first['threads']} thread(s), CPU ISA "
              f"{first['isa']}; evaluation subset of the test split: {n[0]} held-out and {n[1]} seen-task records; "
              f"1-minute load average {min(loads):.1f} to {max(loads):.1f} during the runs."]
    return "\n".join(lines)


def _pair(scores: dict | None) -> str:
    if scores is None:
        return "-"
    return f"{scores['rougeL']:.1f} / {scores['exact_match']:.1f}"


def render() -> None:
    """One table per invocation in the results file, written between the doc's table markers."""
    tables = "\n\n".join(table(rows) for rows in read_runs().values())
    _common.replace_between(DOC, TABLE_BEGIN, TABLE_END, tables + "\n")
    print(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, run in this order")
    parser.add_argument("--train-minutes", type=float, default=2.0)
    parser.add_argument("--recipe", default="demo", choices=tuple(HELD_OUT_PER_TASK))
    parser.add_argument("--natural-instructions", default=str(NATURAL_INSTRUCTIONS),
                        help="--recipe superni: the natural-instructions folder (tasks/, splits/default/)")
    parser.add_argument("--work", default="/tmp/llmft-compare-methods")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc's table from the results")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--no-base", dest="base", action="store_false", help="do not score the base model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--with-base", dest="child_base", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.child:
        run_child(args.child, args.train_minutes, work, args.run_id, args.child_base, args.recipe)
    elif args.render:
        render()
    else:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise SystemExit(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
        run_all(names, args.train_minutes, work, args.run_id or time.strftime("%Y%m%d-%H%M%S"), args.base,
                args.recipe, Path(args.natural_instructions))


if __name__ == "__main__":
    main()
