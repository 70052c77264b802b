"""Fit the training steps of an `llmft run` to a wall-clock budget from throughput measured on this machine, now.

The budget covers preparation, training and evaluation. After `prepare`, `fit_recipe`:
1. probes training: a throw-away Trainer on the real data and config (setup timed, one dev-loss pass timed, one
   `PROBE_WARMUP_STEPS` warm-up steps, then `PROBE_STEPS` timed ones, their mean times `run.budget_step_margin`);
2. probes generation: the evaluation model as `evaluate_run` will hold it (in its dtype, the adapter attached):
   a prefill rate (tokens/s) from one batch of median-length eval prompts, and the decode time per new token of a
   full eval batch;
3. estimates evaluation: every length-sorted generation batch of the prompts evaluation generates from (cut to
   `max_length` as training cuts them) at the full `max_new_tokens` (no early EOS assumed), plus the loss pass over
   every eval token, for base and tuned, times `EVAL_SAFETY`; when that exceeds
   `EVAL_SHARE` of what is left, evaluation keeps fewer records per task, never fewer than
   `run.budget_min_eval_per_task` (the first N of each, written to
   `<out>/eval_subset.jsonl` and said in budget.json, the log and the per-task `n` of the report);
4. gives training what is left after what was spent, the evaluation estimate, the training setup and a reserve,
   as `train.time_limit_minutes`: the trainer re-fits its total steps to that time from its own measured steps (the
   probe's few steps misjudged whole runs by 0.9-1.4x), so the fitted step count here is only the probe's guess.
   When even `run.budget_min_steps` do not fit, those steps are trained with no time limit (and overrun).

`train.max_steps` when set, else `train.epochs`, caps the steps (a fast machine does not loop over the data
endlessly). The fit is saved in `<out>/budget.json`, so a rerun that resumes an interrupted training reuses it instead of measuring again.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llmft import io
from llmft.config import EvalConfig, TrainConfig
from llmft.errors import LlmftError

PROBE_STEPS = 4              # timed optimizer steps, after PROBE_WARMUP_STEPS untimed ones
PROBE_WARMUP_STEPS = 2
# The step time the fit plans with is the probe's times the recipe's `run.budget_step_margin`: how far a whole run's
# steps stray from the probe's depends on the data. SuperNI recipe, 20-minute budgets, quiet 2-core AMD EPYC, three
# runs: mean step / probe = 1.39 (median of 2 probe steps), 1.31 and 1.34 (mean of 4): packed steps of the same
# token count vary 3.2-10.8 s with their examples' lengths. The demo's short, even examples: 0.87-1.15.
PROBE_NEW_TOKENS = 6         # timed decoding steps in the decode probe
DECODE_PROBE_CONTEXT = 64    # prompt tokens per row of the decode probe batch
RESERVE_FRACTION = 0.04      # of the budget: load swings, report writing, interpreter start-up
RESERVE_MIN_S = 10.0
EVAL_SHARE = 0.5             # evaluation gets at most this share of what is left after preparation and the probes
EVAL_SAFETY = 1.25           # on the eval estimate: load swings on a shared machine, masked attention over padding
FIT_FILE = "budget.json"
SUBSET_FILE = "eval_subset.jsonl"


# ---------------------------------------------------------------- the arithmetic (pure)

@dataclass
class StepFit:
    steps: int
    budget_s: float
    spent_s: float           # before training: preparation and the probes
    eval_s: float            # estimated
    train_overhead_s: float  # estimated: model load, tokenization, dev-loss passes, saving
    reserve_s: float
    step_s: float            # seconds per optimizer step the fit plans with (measured, times the step margin)
    train_s: float           # what the fitted steps should take
    capped_by_epochs: bool
    over_budget: bool = False    # fewer than `floor_steps` fitted: the floor is trained anyway
    train_limit_s: float = 0.0   # all the budget leaves for the optimizer steps (0 when over budget: the floor rules)

    def to_dict(self) -> dict:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def reserve_seconds(budget_s: float) -> float:
    return max(RESERVE_MIN_S, RESERVE_FRACTION * budget_s)


def fit_steps(*, budget_s: float, spent_s: float, step_s: float, eval_s: float, train_overhead_s: float = 0.0,
              reserve_s: float | None = None, max_steps: int | None = None, min_steps: int = 1,
              floor_steps: int = 0) -> StepFit:
    """The most optimizer steps that fit in what the budget leaves for training; when fewer than `floor_steps` fit,
    `floor_steps` (marked over budget); else an error naming every share when not even `min_steps` fit."""
    if step_s <= 0:
        raise ValueError(f"step_s must be positive, got {step_s}")
    reserve = reserve_seconds(budget_s) if reserve_s is None else reserve_s
    left = budget_s - spent_s - eval_s - train_overhead_s - reserve
    steps = int(left // step_s) if left > 0 else 0
    capped = max_steps is not None and steps > max_steps
    if capped:
        steps = max_steps
    over = steps < floor_steps
    if over:
        steps = floor_steps if max_steps is None else min(floor_steps, max_steps)
    if steps < min_steps:
        raise LlmftError(
            f"the budget of {budget_s / 60:.1f} min leaves {max(left, 0):.0f} s for training, less than "
            f"{min_steps} step(s) of {step_s:.1f} s: spent {spent_s:.0f} s (preparation, probes), evaluation "
            f"estimated {eval_s:.0f} s, training setup {train_overhead_s:.0f} s, reserve {reserve:.0f} s. Raise "
            f"--budget-minutes, or evaluate less (data.test_instances_per_task, eval.max_new_tokens)")
    return StepFit(steps=steps, budget_s=budget_s, spent_s=spent_s, eval_s=eval_s, train_overhead_s=train_overhead_s,
                   reserve_s=reserve, step_s=step_s, train_s=steps * step_s, capped_by_epochs=capped,
                   over_budget=over, train_limit_s=0.0 if over else max(left, 0.0))


def padded_tokens(lengths: list[int], batch: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch)


def estimate_generation_s(prompt_lengths: list[int], batch_size: int, max_new_tokens: int, *,
                          prefill_tokens_per_s: float, decode_step_s: float) -> float:
    """Every length-sorted batch: its left-padded prompt tokens at the prefill rate, then `max_new_tokens` decode
    steps (an upper bound: batches that all stop at EOS earlier finish sooner)."""
    from llmft.evaluation.generate import length_sorted_batches     # the batches generation itself makes

    total = 0.0
    for batch in length_sorted_batches(prompt_lengths, batch_size):
        total += padded_tokens(prompt_lengths, batch) / prefill_tokens_per_s + max_new_tokens * decode_step_s
    return total


def estimate_eval_s(prompt_lengths: list[int], response_lengths: list[int], cfg: EvalConfig, *,
                    prefill_tokens_per_s: float, decode_step_s: float, load_s: float = 0.0) -> float:
    """Generation plus (when `cfg.loss`) the loss pass over prompt + response tokens, for tuned (and base when
    `cfg.base`)."""
    generation = estimate_generation_s(prompt_lengths, cfg.batch_size, cfg.max_new_tokens,
                                       prefill_tokens_per_s=prefill_tokens_per_s, decode_step_s=decode_step_s)
    loss = (sum(prompt_lengths) + sum(response_lengths)) / prefill_tokens_per_s if cfg.loss else 0.0
    return load_s + (2 if cfg.base else 1) * (generation + loss)


# ---------------------------------------------------------------- measuring

@dataclass
class TrainingRate:
    setup_s: float           # Trainer setup: tokenizer, data, tokenization, model, adapter, packing plan
    dev_loss_s: float        # one dev-loss pass (the run does one before and one after training)
    step_s: float            # mean of the timed steps
    tokens_per_s: float      # real (non-pad) tokens per second over the timed steps
    steps_per_epoch: int

    def to_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def measure_training(cfg: TrainConfig, steps: int = PROBE_STEPS) -> TrainingRate:
    """Time a throw-away Trainer on the run's own data and settings (its folder is deleted afterwards)."""
    from llmft.training.model import resolve_model
    from llmft.training.trainer import Trainer

    # One-time work outside the timed setup: converting the embedded GGUF (~25 s on a fresh cache) and the
    # per-machine dtype probe (Trainer construction). The run's own setup finds both done: counting them in the
    # setup estimate cost a fresh `make run` about 10 training steps.
    resolve_model(cfg.model)
    with tempfile.TemporaryDirectory(prefix="llmft-budget-") as tmp:
        probe = dataclasses.replace(cfg, out=str(Path(tmp) / "probe"), resume=False,
                                    max_steps=steps + PROBE_WARMUP_STEPS,
                                    eval_every=0, save_every=0, tensorboard=False, report_to="")
        trainer = Trainer(probe)
        started = time.perf_counter()
        trainer.setup()
        setup_s = time.perf_counter() - started
        started = time.perf_counter()
        trainer.dev_loss()
        dev_loss_s = time.perf_counter() - started
        for _ in range(PROBE_WARMUP_STEPS):        # first-call kernel selection, allocator growth
            trainer.train_step()
        times, tokens = [], 0
        for _ in range(steps):
            started = time.perf_counter()
            out = trainer.train_step()
            times.append(time.perf_counter() - started)
            tokens += out["real"]
        per_epoch = math.ceil(trainer.plan.micro_per_epoch / trainer.plan.micro_per_step)
        trainer.folder_lock.close()                # the probe folder's writer lock (train() releases it itself)
        del trainer
    return TrainingRate(setup_s=setup_s, dev_loss_s=dev_loss_s, step_s=statistics.mean(times),
                        tokens_per_s=tokens / sum(times), steps_per_epoch=per_epoch)


@dataclass
class GenerationRate:
    load_s: float
    prefill_tokens_per_s: float
    decode_step_s: float
    prefill_probe_tokens: int
    decode_probe_batch: int
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


def median_prompts(lengths: list[int], count: int) -> list[int]:
    """Indices of `count` prompts around the median length (a typical prefill, whatever the outliers)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    start = max(0, min(len(order) - count, len(order) // 2 - count // 2))
    return order[start:start + count]


def measure_generation(cfg: TrainConfig, prompts: list, batch_size: int, bf16: str = "auto") -> GenerationRate:
    """Prefill rate and decode step time of the evaluation model as `evaluate_run` holds it: in the dtype `bf16`
    (eval.bf16) gives, the adapter attached and held as `evaluate_run` holds it (`inference_ready`), so its layers
    cost what the tuned model's do. Prefill: one eval batch of median-length prompts, left-padded as evaluation
    batches them (timed one at a time, prompts ran slower per token: the SuperNI estimate was 1.6x the real time in
    bf16). Decode: `PROBE_NEW_TOKENS` steps of a full eval batch of short prompt tails against the KV cache, so the
    probe stays cheap however long the eval prompts are. `prompts`: texts, or token id lists as `eval_inputs` gives
    them."""
    from llmft.evaluation.generate import (contiguous_head_input, encode_prompt, inference_dtype, inference_ready,
                                           left_pad, model_device)
    from llmft.training.model import attach_adapter, load_model, load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    dtype = inference_dtype(bf16)
    model = load_model(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.method != "full":
        model = attach_adapter(model, cfg)
    model.eval()
    load_s = time.perf_counter() - started
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    tails = [encoded[i % len(encoded)][-DECODE_PROBE_CONTEXT:] for i in range(batch_size)]
    tail_ids, tail_mask = left_pad(tails, pad_id, model_device(model))
    with inference_ready(model), contiguous_head_input(model):     # as evaluate_run scores the tuned model
        _generate(model, tail_ids[:1], tail_mask[:1], 1)            # warm-up
        batch = median_prompts([len(e) for e in encoded], min(batch_size, len(encoded)))
        ids, mask = left_pad([encoded[i] for i in batch], pad_id, model_device(model))
        prefill_s, prefill_tokens = _generate(model, ids, mask, 1), ids.numel()
        decode_step_s = _decode_step_s(model, tail_ids, tail_mask, PROBE_NEW_TOKENS)
    del model
    return GenerationRate(load_s=load_s, prefill_tokens_per_s=prefill_tokens / prefill_s,
                          decode_step_s=decode_step_s,
                          prefill_probe_tokens=prefill_tokens, decode_probe_batch=len(tails),
                          dtype=str(dtype).removeprefix("torch."))


def _decode_step_s(model, ids, mask, steps: int) -> float:
    """Seconds per decoding step of the batch `ids`: one forward of a new token per row against the KV cache, as
    `generate` runs each step after the prompt (timed directly: the difference between two `generate` calls was lost
    in the prefill's noise, and came out 0 in bf16). One untimed step first, then the median step, which one stalled
    step cannot move (a make run's probe said 0.30 s where four repeated probes measured 0.13-0.18 s)."""
    import torch

    from llmft.evaluation.generate import model_device

    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)
    times = []
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        for _ in range(steps + 1):
            started = time.perf_counter()
            token = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=token, attention_mask=mask, use_cache=True, **_cache_of(out))
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _cache_of(out) -> dict:
    """The KV cache keyword of the next forward: `cache` since transformers 5.x renamed it (the old name warns),
    `past_key_values` before."""
    return {"cache": out["cache"]} if "cache" in out else {"past_key_values": out.past_key_values}


def _generate(model, ids, mask, new_tokens: int) -> float:
    """Seconds for greedy generation of exactly `new_tokens` tokens (EOS cannot stop it early)."""
    import torch
    from transformers import GenerationConfig

    from llmft.evaluation.generate import model_device

    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              use_cache=True, pad_token_id=0)
    device = model_device(model)
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
    return time.perf_counter() - started


# ---------------------------------------------------------------- the pipeline hook

def eval_inputs(test_jsonl: Path, cfg: TrainConfig, eval_cfg: EvalConfig) -> dict:
    """Tasks, prompt token ids and prompt and response token counts of the records `evaluate_run` would score: the
    prompts it generates from (`eval_examples`: cut to `max_length` as training cuts them; rendered in full, the
    SuperNI prompts counted 1.4x the tokens evaluation prefilled)."""
    from llmft.evaluation.evaluate import eval_examples, load_eval_records
    from llmft.training.model import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    records = load_eval_records(test_jsonl, eval_cfg.limit)
    info = {"template": cfg.template, "max_length": cfg.max_length, "k_positive": cfg.k_positive}
    prompts, examples = eval_examples(records, tokenizer, info)
    return {"tasks": [r.get("task", "unknown") for r in records], "prompts": prompts,
            "prompt_lengths": [len(p) for p in prompts],
            "response_lengths": [len(e[0]) - len(p) if e else 0 for p, e in zip(prompts, examples)]}


def first_per_task(tasks: list[str], n: int) -> list[int]:
    """Indices of the first `n` records of every task, in file order (the official eval set is a task's first
    instances, so this is a prefix of it)."""
    seen: Counter = Counter()
    keep = []
    for index, task in enumerate(tasks):
        if seen[task] < n:
            keep.append(index)
            seen[task] += 1
    return keep


def choose_eval_size(tasks: list[str], estimate, allowed_s: float, floor: int = 1) -> tuple[int, list[int], float]:
    """The most records per task whose estimated evaluation time (`estimate(indices)`) fits `allowed_s`, but never
    fewer than `floor` (or every record a task has): below it the scores mean too little, so training gives way
    (`fit_steps` says so when nothing is left for it)."""
    most = max(Counter(tasks).values())
    least = max(1, min(floor, most))
    for n in range(most, 0, -1):
        indices = first_per_task(tasks, n)
        seconds = estimate(indices)
        if seconds <= allowed_s or n <= least:
            return n, indices, seconds
    raise AssertionError("unreachable")


def step_cap(train: TrainConfig, steps_per_epoch: int) -> int:
    """The most steps a budget may fit: the recipe's `train.max_steps` when it sets one (a fast machine trains no
    longer than the recipe was tuned for), else `train.epochs` over the data."""
    return train.max_steps if train.max_steps > 0 else max(1, math.ceil(train.epochs * steps_per_epoch))


def spent_seconds(stage_entries: dict) -> float:
    """Wall time of the stages already run (skipped ones keep the seconds of the run that made their output)."""
    return sum(entry.get("seconds") or 0.0 for entry in stage_entries.values())


def measure_and_fit(recipe, data_dir: Path, spent_s: float) -> dict:
    """Probe training and generation, size the evaluation to at most `EVAL_SHARE` of what is left (cutting records
    per task when needed), fit the steps to the rest; everything the fit used, as a dict."""
    started = time.perf_counter()
    budget_s = 60.0 * recipe.run.budget_minutes
    train_cfg = dataclasses.replace(recipe.train, data=str(data_dir))
    training = measure_training(train_cfg)
    inputs = eval_inputs(data_dir / f"{recipe.eval.split}.jsonl", train_cfg, recipe.eval)
    generation = measure_generation(train_cfg, inputs["prompts"], recipe.eval.batch_size, bf16=recipe.eval.bf16)
    probes_s = time.perf_counter() - started
    overhead_s = training.setup_s + 2 * training.dev_loss_s

    def estimate(indices: list[int]) -> float:
        return EVAL_SAFETY * estimate_eval_s(
            [inputs["prompt_lengths"][i] for i in indices], [inputs["response_lengths"][i] for i in indices],
            recipe.eval, prefill_tokens_per_s=generation.prefill_tokens_per_s,
            decode_step_s=generation.decode_step_s, load_s=generation.load_s)

    left = budget_s - spent_s - probes_s - overhead_s - reserve_seconds(budget_s)
    per_task, indices, eval_s = choose_eval_size(inputs["tasks"], estimate, EVAL_SHARE * left,
                                                 floor=recipe.run.budget_min_eval_per_task)
    cap = step_cap(recipe.train, training.steps_per_epoch)
    margin = recipe.run.budget_step_margin
    fit = fit_steps(budget_s=budget_s, spent_s=spent_s + probes_s, step_s=margin * training.step_s, eval_s=eval_s,
                    train_overhead_s=overhead_s, max_steps=cap, floor_steps=recipe.run.budget_min_steps)
    given = max(Counter(inputs["tasks"]).values())
    return {"budget_minutes": recipe.run.budget_minutes, "max_steps": fit.steps, "most_steps": cap,
            "time_limit_minutes": round(fit.train_limit_s / 60.0, 4), "fit": fit.to_dict(),
            "training": training.to_dict(), "generation": generation.to_dict(),
            "eval_tasks": len(set(inputs["tasks"])), "eval_per_task": per_task, "eval_per_task_prepared": given,
            "eval_records": len(indices), "eval_prompt_tokens": sum(inputs["prompt_lengths"][i] for i in indices),
            "step_margin": margin, "probes_s": round(probes_s, 2),
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}


def fit_recipe(recipe, layout, log):
    """The recipe with `train.max_steps` fitted to `run.budget_minutes` (measured once, then read from
    `<out>/budget.json`) and, when the evaluation had to be cut, `eval.data` pointing at `<out>/eval_subset.jsonl`
    (the first `eval_per_task` records of each task of the eval split); `log` is the pipeline's StageLog."""
    path = Path(layout.out) / FIT_FILE
    subset = Path(layout.out) / SUBSET_FILE
    if path.exists():
        log.skip("budget", f"steps already fitted ({path})")
    else:
        spent = spent_seconds(log.entries)
        result = log.run("budget", f"fitting the training steps to {recipe.run.budget_minutes:g} min from "
                                   "measured throughput", lambda: measure_and_fit(recipe, layout.data, spent))
        if result["eval_per_task"] < result["eval_per_task_prepared"]:
            write_eval_subset(layout.data / f"{recipe.eval.split}.jsonl", subset, result["eval_per_task"],
                              recipe.eval.limit)
        io.write_json(path, result)
        log.echo(describe(result))
    fitted = io.load_json(path)
    if fitted.get("time_limit_minutes"):
        # the recipe's most steps, re-fitted during training to the time left (the fit above is the probe's guess)
        train = dataclasses.replace(recipe.train, time_limit_minutes=fitted["time_limit_minutes"],
                                    time_limit_min_steps=recipe.run.budget_min_steps)
    else:
        train = dataclasses.replace(recipe.train, max_steps=fitted["max_steps"])
    evaluation = recipe.eval
    if fitted["eval_per_task"] < fitted["eval_per_task_prepared"]:
        evaluation = dataclasses.replace(recipe.eval, data=str(subset))
    return dataclasses.replace(recipe, train=train, eval=evaluation)


def write_eval_subset(test_jsonl: Path, out: Path, per_task: int, limit: int = 0) -> int:
    from llmft.evaluation.evaluate import load_eval_records

    records = load_eval_records(test_jsonl, limit)
    keep = first_per_task([r.get("task", "unknown") for r in records], per_task)
    return io.write_jsonl(out, (records[i] for i in keep))


def describe(result: dict) -> str:
    fit, training, generation = result["fit"], result["training"], result["generation"]
    cut = (f", cut from {result['eval_per_task_prepared']} to fit"
           if result["eval_per_task"] < result["eval_per_task_prepared"] else "")
    return (f"[budget] {result['budget_minutes']:g} min: {fit['steps']} steps x {fit['step_s']:.1f} s "
            f"(measured {training['step_s']:.1f} s, planned with a {result['step_margin']:g}x margin) "
            f"({training['tokens_per_s']:.0f} tokens/s) = {fit['train_s'] / 60:.1f} min of training"
            f"{_refit_note(result)}"
            f"{' (capped by the recipe)' if fit['capped_by_epochs'] else ''}"
            f"{' (the minimum of budget_min_steps: this machine is too slow or too busy for the budget)' if fit.get('over_budget') else ''}; spent {fit['spent_s']:.0f} s; "
            f"evaluation: the first {result['eval_per_task']} of each of {result['eval_tasks']} tasks{cut} = "
            f"{result['eval_records']} records, estimated {fit['eval_s']:.0f} s "
            f"(prefill {generation['prefill_tokens_per_s']:.0f} tokens/s, decode {generation['decode_step_s']:.2f} "
            f"s/token); setup {fit['train_overhead_s']:.0f} s, reserve {fit['reserve_s']:.0f} s; "
            f"load average {result['load_average'][0]:.1f}")


def _refit_note(result: dict) -> str:
    limit = result.get("time_limit_minutes")
    return (f" (re-fitted while training to end within {limit:.1f} min, at most {result['most_steps']} steps)"
            if limit else "")
