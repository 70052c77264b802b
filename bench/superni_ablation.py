"""Ablation of the `superni` recipe on the fixture tasks: which knob moves unseen-task ROUGE-L within a time budget.

Every variant starts from the superni recipe with BASELINE's keys pinned (the starting point before the
ablation) and changes one or two keys. Per variant:
prepare (cached per data settings) -> measure training throughput now (llmft.pipeline.budget.measure_training) -> train
for the steps that fit TRAIN_MINUTES of measured throughput (or a given step count) -> score base and tuned on a
FIXED evaluation subset: the first EVAL_PER_TASK official instances of each test task, greedy, stopping at EOS.

Reduced protocol, for time on a shared 2-core CPU (the full recipe runs `llmft run`, see the doc):
- training gets `--train-minutes` of measured throughput instead of what the 15-minute budget leaves;
- generation runs in bf16 with the adapter merged and skips the loss pass (`llmft eval` runs fp32, unmerged, and
  also scores the loss: the same predictions up to rounding, several times the time on this CPU); metrics are
  llmft.evaluation.metrics (SuperNI semantics);
- the base model's scores depend only on the prompt encoding (k) and decoding, so they are computed once per
  (k, max_new_tokens) and reused.

Each row (one JSON line in --results) carries the machine load (os.getloadavg) at its start and end, the torch
threads, the measured step time and minutes spent. `--render` rewrites the table section of the doc from them.

    OMP_NUM_THREADS=1 .venv/bin/python bench/superni_ablation.py --variants k2,k0 [--train-minutes 4]
    .venv/bin/python bench/superni_ablation.py --render
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402

NI = REPO.parent / "shared" / "fixtures" / "raw" / "natural_instructions"
RESULTS = REPO / "bench" / "results" / "superni_ablation.jsonl"
DOC = REPO / "docs" / "ablation-superni.md"
TABLE_BEGIN, TABLE_END = "<!-- ablation table: begin -->", "<!-- ablation table: end -->"
EVAL_PER_TASK = 20
EVAL_ONLY = {"new16": "k2", "new64": "k2"}     # variants that only change decoding reuse this row's adapter

# Every row is BASELINE plus its own overrides, so a row means the same whatever the recipe's defaults become.
BASELINE = ["train.k_positive=2", "data.max_instances_per_task=40", "train.method=lora", "train.lora_r=16",
            "train.lora_alpha=32", "train.lora_targets=all-linear", "train.lr=5e-4", "train.batch_tokens=2048",
            "train.max_length=512", "eval.max_new_tokens=32"]
# name -> (what changes, overrides on BASELINE); "minutes*F" scales the training minutes.
VARIANTS = {
    "k2": ("starting point: k=2, 40/task, LoRA r16 all-linear, lr 5e-4, 2048-token batches", []),
    "k0": ("k=0 (definition only)", ["train.k_positive=0"]),
    "k1": ("k=1", ["train.k_positive=1"]),
    "lr1e-3": ("lr 1e-3", ["train.lr=1e-3"]),
    "lr2e-4": ("lr 2e-4", ["train.lr=2e-4"]),
    "inst10": ("10 instances per task", ["data.max_instances_per_task=10"]),
    "inst100": ("100 instances per task", ["data.max_instances_per_task=100"]),
    "bt1024": ("packed batches of 1024 tokens (about 4 examples, twice the steps)", ["train.batch_tokens=1024"]),
    "lr1e-3-bt1024": ("lr 1e-3 and 1024-token batches", ["train.lr=1e-3", "train.batch_tokens=1024"]),
    "len256": ("max_length 256 (long prompts lose examples)", ["train.max_length=256", "train.batch_tokens=1024"]),
    "r64": ("LoRA r64 alpha 128", ["train.lora_r=64", "train.lora_alpha=128"]),
    "attn": ("LoRA r16 on q,k,v,o only", ["train.lora_targets=q_proj,k_proj,v_proj,o_proj"]),
    "full": ("full fine-tuning, lr 5e-5", ["train.method=full", "train.lr=5e-5"]),
    "new16": ("max_new_tokens 16", ["eval.max_new_tokens=16"]),
    "new64": ("max_new_tokens 64", ["eval.max_new_tokens=64"]),
    "short": ("half the training time", ["minutes*0.5"]),
    "long": ("twice the training time", ["minutes*2"]),
}


# ---------------------------------------------------------------- one variant

def recipe_for(overrides: list[str]):
    from llmft.pipeline.recipe import load_recipe

    return load_recipe("superni", BASELINE + [o for o in overrides if "=" in o])


def train_minutes_for(overrides: list[str], minutes: float) -> float:
    for o in overrides:
        if o.startswith("minutes*"):
            minutes *= float(o.split("*", 1)[1])
    return minutes


def prepared(recipe, work: Path) -> Path:
    """The prepared folder for these data settings (reused across variants that share them)."""
    from llmft.config import DataConfig
    from llmft.data.prepare import prepare

    data = dataclasses.replace(recipe.data, natural_instructions=[str(NI)], test_instances_per_task=EVAL_PER_TASK)
    key = f"inst{data.max_instances_per_task}-test{data.test_instances_per_task}-seed{data.seed}"
    out = work / "data" / key
    if not (out / "manifest.json").exists():
        assert isinstance(data, DataConfig)
        prepare(data, out)
    return out


def eval_records(data_dir: Path) -> list[dict]:
    from llmft import io

    return list(io.read_jsonl(data_dir / "test.jsonl"))


def score(model, tokenizer, records: list[dict], k: int, max_new_tokens: int) -> tuple[dict, list[str], float]:
    from llmft.evaluation.generate import GenerationOptions, generate
    from llmft.evaluation.metrics import aggregate, aggregate_by, score_prediction
    from llmft.data.prompts import render

    prompts = [render(r, "superni", tokenizer=tokenizer, k_positive=k)[0] for r in records]
    started = time.perf_counter()
    predictions = generate(model, tokenizer, prompts, GenerationOptions(max_new_tokens=max_new_tokens, batch_size=16))
    seconds = time.perf_counter() - started
    scores = [score_prediction(p, r) for p, r in zip(predictions, records)]
    result = {**aggregate(scores), "per_task": {t: v["rougeL"] for t, v in
                                                aggregate_by(scores, [r["task"] for r in records]).items()}}
    return result, predictions, seconds


def base_scores(recipe, records: list[dict], results: list[dict], name: str) -> dict:
    """Reused from an earlier row with the same encoding and decoding, else measured now (and recorded)."""
    import torch

    from llmft.training.model import load_model, load_tokenizer

    k, new = recipe.train.k_positive, recipe.eval.max_new_tokens
    for row in results:
        if row.get("kind") == "base" and row["k"] == k and row["max_new_tokens"] == new \
                and row["eval_records"] == len(records):
            return row
    load_before = [round(x, 2) for x in os.getloadavg()]
    model = load_model(recipe.train.model, dtype=torch.bfloat16)
    tokenizer = load_tokenizer(recipe.train.model)
    result, _, seconds = score(model, tokenizer, records, k, new)
    row = {"kind": "base", "variant": name, "k": k, "max_new_tokens": new, "eval_records": len(records),
           "rougeL": result["rougeL"], "exact_match": result["exact_match"], "per_task": result["per_task"],
           "eval_minutes": round(seconds / 60, 2), "load": [load_before, [round(x, 2) for x in os.getloadavg()]],
           "threads": torch.get_num_threads()}
    append(row)
    results.append(row)
    return row


def run_variant(name: str, minutes: float, work: Path, results: list[dict]) -> dict:
    import torch

    from llmft.pipeline import budget
    from llmft.training.model import load_run_model
    from llmft.training.trainer import train

    what, overrides = VARIANTS[name]
    recipe = recipe_for(overrides)
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    data_dir = prepared(recipe, work)
    records = eval_records(data_dir)
    base = base_scores(recipe, records, results, name)
    train_minutes = train_minutes_for(overrides, minutes)
    if name in EVAL_ONLY:        # decoding changes only: score the adapter trained for another row
        run_dir = work / "runs" / EVAL_ONLY[name]
        trained = next(r for r in reversed(results) if r.get("variant") == EVAL_ONLY[name])
        rate_step_s = trained["step_s"]
        summary = {k: trained[k] for k in ("steps", "epochs", "tokens_per_s", "final_loss")}
        summary["train_seconds"] = 60 * trained["train_minutes"]
    else:
        run_dir = work / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = dataclasses.replace(recipe.train, data=str(data_dir), out=str(run_dir), save_every=0)
        rate = budget.measure_training(cfg)
        rate_step_s = rate.step_s
        fit = budget.fit_steps(budget_s=60 * train_minutes, spent_s=0, step_s=rate.step_s, eval_s=0, reserve_s=0,
                               max_steps=max(1, int(recipe.train.epochs * rate.steps_per_epoch)))
        summary = train(dataclasses.replace(cfg, max_steps=fit.steps))
    model, tokenizer = load_run_model(run_dir, adapter=True, dtype=torch.bfloat16)
    if hasattr(model, "merge_and_unload"):      # the same weights; unmerged LoRA layers slow CPU decoding down
        model = model.merge_and_unload()
    tuned, predictions, eval_seconds = score(model, tokenizer, records, recipe.train.k_positive,
                                             recipe.eval.max_new_tokens)
    t = recipe.train
    row = {"kind": "tuned", "variant": name, "what": what, "overrides": overrides, "k": t.k_positive,
           "instances_per_task": recipe.data.max_instances_per_task, "method": t.method,
           "lora": f"r{t.lora_r}/{t.lora_targets}" if t.method == "lora" else "-", "lr": t.lr,
           "max_new_tokens": recipe.eval.max_new_tokens, "train_minutes_target": train_minutes,
           "steps": summary["steps"], "epochs": summary["epochs"], "step_s": round(rate_step_s, 2),
           "tokens_per_s": summary["tokens_per_s"], "train_minutes": round(summary["train_seconds"] / 60, 2),
           "eval_records": len(records), "eval_minutes": round(eval_seconds / 60, 2),
           "total_minutes": round((time.perf_counter() - started) / 60, 2),
           "rougeL": tuned["rougeL"], "exact_match": tuned["exact_match"], "per_task": tuned["per_task"],
           "base_rougeL": base["rougeL"], "base_per_task": base["per_task"],
           "final_loss": summary["final_loss"], "threads": torch.get_num_threads(),
           "load": [load_before, [round(x, 2) for x in os.getloadavg()]],
           "sample_predictions": predictions[:: max(1, len(predictions) // 8)][:8]}
    append(row)
    results.append(row)
    return row


# ---------------------------------------------------------------- results and the doc

def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_results() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def short_task(task: str) -> str:
    return task.split("_", 1)[0]


def render_table(rows: list[dict]) -> str:
    tuned = [r for r in rows if r["kind"] == "tuned"]
    base = [r for r in rows if r["kind"] == "base"]
    tasks = sorted({t for r in rows for t in r["per_task"]})
    header = (["variant", "change", "k", "inst/task", "LoRA", "lr", "new tok", "steps", "epochs", "train min",
               "eval min", "total min", "load (start/end)"] + [short_task(t) for t in tasks]
              + ["**ROUGE-L**", "base", "EM"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for r in base:
        cells = [f"base k={r['k']}", "no training", str(r["k"]), "-", "-", "-", str(r["max_new_tokens"]), "0", "-",
                 "-", f"{r['eval_minutes']:.1f}", f"{r['eval_minutes']:.1f}", _load(r)]
        cells += [_num(r["per_task"].get(t)) for t in tasks] + [f"**{r['rougeL']:.1f}**", "", f"{r['exact_match']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in tuned:
        cells = [r["variant"], VARIANTS.get(r["variant"], (r["what"],))[0], str(r["k"]), str(r["instances_per_task"]), r["lora"], f"{r['lr']:g}",
                 str(r["max_new_tokens"]), str(r["steps"]), f"{r['epochs']:.2f}", f"{r['train_minutes']:.1f}",
                 f"{r['eval_minutes']:.1f}", f"{r['total_minutes']:.1f}", _load(r)]
        cells += [_num(r["per_task"].get(t)) for t in tasks]
        cells += [f"**{r['rougeL']:.1f}**", f"{r['base_rougeL']:.1f}", f"{r['exact_match']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ", ".join(f"{short_task(t)} = {t}" for t in tasks)
    return "\n".join(lines) + f"\n\nTasks: {legend}.\n"


def _num(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _load(row: dict) -> str:
    return f"{row['load'][0][0]:.1f}/{row['load'][1][0]:.1f}"


def render_doc() -> None:
    _common.replace_between(DOC, TABLE_BEGIN, TABLE_END, render_table(read_results()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--train-minutes", type=float, default=4.0)
    parser.add_argument("--work", default="/tmp/llmft-superni-ablation")
    parser.add_argument("--render", action="store_true", help="rewrite the table in docs/ablation-superni.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
    results = read_results()
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            print(f"unknown variant {name!r}", file=sys.stderr)
            return 2
        row = run_variant(name, args.train_minutes, Path(args.work), results)
        print(f"{name}: ROUGE-L {row['base_rougeL']:.1f} -> {row['rougeL']:.1f} in {row['steps']} steps "
              f"({row['total_minutes']:.1f} min, load {_load(row)})", flush=True)
    if args.render:
        render_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
