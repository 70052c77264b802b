"""Fitting training steps to a wall-clock budget (llmft.pipeline.budget): the arithmetic on fake measured rates, the eval
estimate, and the pipeline hook (budget.json reused on a rerun) on fake stages."""
from __future__ import annotations

import dataclasses
import time

import pytest

from llmft.pipeline import budget
from llmft.config import EvalConfig, RunConfig
from llmft.errors import LlmftError


# ---------------------------------------------------------------- fit_steps

def test_fit_steps_gives_training_what_is_left():
    # 900 s budget - 60 spent - 200 eval - 40 setup - 36 reserve (4%) = 564 s -> 564 // 8 = 70 steps
    fit = budget.fit_steps(budget_s=900, spent_s=60, step_s=8.0, eval_s=200, train_overhead_s=40)
    assert fit.reserve_s == 36.0
    assert fit.steps == 70 and fit.train_s == 560.0 and not fit.capped_by_epochs
    assert fit.to_dict() == {"steps": 70, "budget_s": 900, "spent_s": 60, "eval_s": 200, "train_overhead_s": 40,
                             "reserve_s": 36.0, "step_s": 8.0, "train_s": 560.0, "capped_by_epochs": False,
                             "over_budget": False, "train_limit_s": 564.0}   # all 564 s: steps are re-fitted


def test_fit_steps_slower_machine_fewer_steps_and_minimum_reserve():
    fast = budget.fit_steps(budget_s=120, spent_s=10, step_s=2.0, eval_s=30)      # reserve 10 s (min): 70 s left
    slow = budget.fit_steps(budget_s=120, spent_s=10, step_s=7.0, eval_s=30)
    assert (fast.reserve_s, fast.steps, slow.steps) == (10.0, 35, 10)


def test_fit_steps_capped_by_epochs():
    fit = budget.fit_steps(budget_s=900, spent_s=0, step_s=1.0, eval_s=0, reserve_s=0, max_steps=120)
    assert fit.steps == 120 and fit.capped_by_epochs and fit.train_s == 120.0


def test_fit_steps_refuses_a_budget_without_room_for_one_step():
    with pytest.raises(LlmftError) as info:
        budget.fit_steps(budget_s=300, spent_s=100, step_s=9.0, eval_s=180, train_overhead_s=5)
    message = str(info.value)
    assert "5.0 min leaves 3 s for training, less than 1 step(s) of 9.0 s" in message
    assert "evaluation estimated 180 s" in message and "test_instances_per_task" in message
    with pytest.raises(ValueError, match="step_s must be positive"):
        budget.fit_steps(budget_s=300, spent_s=0, step_s=0, eval_s=0)


# ---------------------------------------------------------------- the eval estimate

def test_length_sorted_batches_and_padding():
    from llmft.evaluation.generate import length_sorted_batches     # the estimate prices generation's own batches

    lengths = [10, 50, 30, 40, 20]
    assert length_sorted_batches(lengths, 2) == [[1, 3], [2, 4], [0]]
    assert [budget.padded_tokens(lengths, b) for b in length_sorted_batches(lengths, 2)] == [100, 60, 10]


def test_estimate_generation_and_eval_seconds():
    lengths = [10, 50, 30, 40, 20]
    # prefill (100 + 60 + 10) / 10 tok/s = 17 s, decode 3 batches x 4 tokens x 0.5 s = 6 s
    assert budget.estimate_generation_s(lengths, 2, 4, prefill_tokens_per_s=10, decode_step_s=0.5) == 23.0
    cfg = EvalConfig(batch_size=2, max_new_tokens=4)
    responses = [2, 2, 2, 2, 2]
    # loss pass (150 + 10) / 10 = 16 s; base + tuned: 2 x (23 + 16) + 5 s load
    assert budget.estimate_eval_s(lengths, responses, cfg, prefill_tokens_per_s=10, decode_step_s=0.5,
                                  load_s=5) == 83.0
    no_base = dataclasses.replace(cfg, base=False)
    assert budget.estimate_eval_s(lengths, responses, no_base, prefill_tokens_per_s=10, decode_step_s=0.5) == 39.0


def test_median_prompts_picks_the_middle_lengths():
    lengths = [500, 10, 30, 20, 40, 1200, 25]
    assert sorted(lengths[i] for i in budget.median_prompts(lengths, 3)) == [25, 30, 40]
    assert budget.median_prompts([7, 3], 3) == [1, 0]


# ---------------------------------------------------------------- the pipeline hook

class FakeLog:
    def __init__(self, entries):
        self.entries, self.lines = entries, []

    def echo(self, line):
        self.lines.append(line)

    def skip(self, name, why):
        self.entries[name] = {"status": "skipped", "why": why, "seconds": self.entries.get(name, {}).get("seconds")}

    def run(self, name, what, fn):
        result = fn()
        self.entries[name] = {"status": "ran", "seconds": 1.5}
        return result


def fake_fit(max_steps: int, per_task: int, prepared: int) -> dict:
    return {"budget_minutes": 10.0, "max_steps": max_steps, "eval_tasks": 2, "eval_per_task": per_task,
            "eval_per_task_prepared": prepared, "eval_records": 2 * per_task, "load_average": [3.0, 3.0, 3.0],
            "step_margin": 1.3,
            "fit": {"steps": max_steps, "step_s": 9.0, "train_s": 9.0 * max_steps, "capped_by_epochs": False,
                    "spent_s": 70.0, "eval_s": 120.0, "train_overhead_s": 20.0, "reserve_s": 24.0},
            "training": {"tokens_per_s": 250.0, "step_s": 7.5}, "generation": {"prefill_tokens_per_s": 400.0,
                                                               "decode_step_s": 0.2}}


def test_fit_recipe_measures_once_then_reuses_budget_json(tmp_path, monkeypatch):
    from llmft.pipeline.layout import Layout
    from llmft.pipeline.recipe import load_recipe

    recipe = load_recipe("superni", ["budget_minutes=10"])
    layout = Layout(tmp_path)
    calls = []

    def fake_measure(rec, data_dir, spent_s):
        calls.append((data_dir, spent_s))
        return fake_fit(42, 20, 20)

    monkeypatch.setattr(budget, "measure_and_fit", fake_measure)
    log = FakeLog({"demo": {"status": "skipped", "seconds": None}, "prepare": {"status": "ran", "seconds": 6.25}})
    out = budget.fit_recipe(recipe, layout, log)
    assert calls == [(layout.data, 6.25)]
    assert out.train.max_steps == 42 and recipe.train.max_steps == 0
    assert dataclasses.replace(out.train, max_steps=0) == recipe.train and out.eval == recipe.eval
    assert (tmp_path / "budget.json").exists() and log.entries["budget"]["status"] == "ran"
    assert not (tmp_path / "eval_subset.jsonl").exists()
    assert log.lines == ["[budget] 10 min: 42 steps x 9.0 s (measured 7.5 s, planned with a 1.3x margin) (250 tokens/s) = 6.3 min of training; spent 70 s; "
                         "evaluation: the first 20 of each of 2 tasks = 40 records, estimated 120 s (prefill 400 "
                         "tokens/s, decode 0.20 s/token); setup 20 s, reserve 24 s; load average 3.0"]

    again = budget.fit_recipe(recipe, layout, FakeLog({}))     # a rerun: no new measurement
    assert calls == [(layout.data, 6.25)] and again.train.max_steps == 42


def test_fit_recipe_cuts_the_evaluation_to_the_first_records_of_each_task(tmp_path, monkeypatch):
    from llmft import io
    from llmft.pipeline.layout import Layout
    from llmft.pipeline.recipe import load_recipe

    layout = Layout(tmp_path)
    rows = [{"id": f"{task}-{i}", "task": task, "instruction": "d", "input": str(i), "output": "o",
             "source": "natural-instructions"} for task in ("a", "b") for i in range(4)]
    io.write_jsonl(layout.data / "test.jsonl", rows)
    monkeypatch.setattr(budget, "measure_and_fit", lambda rec, data_dir, spent_s: fake_fit(30, 2, 4))
    log = FakeLog({})
    out = budget.fit_recipe(load_recipe("superni"), layout, log)
    subset = tmp_path / "eval_subset.jsonl"
    assert out.eval.data == str(subset) and out.train.max_steps == 30
    assert [r["id"] for r in io.read_jsonl(subset)] == ["a-0", "a-1", "b-0", "b-1"]
    assert "evaluation: the first 2 of each of 2 tasks, cut from 4 to fit = 4 records" in log.lines[0]
    assert budget.fit_recipe(load_recipe("superni"), layout, FakeLog({})).eval.data == str(subset)


def fake_rates(monkeypatch, step_s: float, decode_step_s: float = 0.05, records: int = 105, tasks: int = 21):
    """measure_and_fit on fake measured rates: `records` eval prompts of 100 tokens spread over `tasks` tasks."""
    rate = budget.TrainingRate(setup_s=10.0, dev_loss_s=2.0, step_s=step_s, tokens_per_s=512 / step_s,
                               steps_per_epoch=105)
    generation = budget.GenerationRate(load_s=3.0, prefill_tokens_per_s=2000.0, decode_step_s=decode_step_s,
                                       prefill_probe_tokens=300, decode_probe_batch=16)
    inputs = {"tasks": [f"t{i % tasks}" for i in range(records)], "prompts": ["p"] * records,
              "prompt_lengths": [100] * records, "response_lengths": [10] * records}
    monkeypatch.setattr(budget, "measure_training", lambda cfg: rate)
    monkeypatch.setattr(budget, "measure_generation", lambda cfg, prompts, batch_size, bf16: generation)
    monkeypatch.setattr(budget, "eval_inputs", lambda path, cfg, eval_cfg: inputs)


def test_demo_budget_trains_fewer_steps_on_a_slow_machine_and_at_most_the_recipe_steps_on_a_fast_one(
        tmp_path, monkeypatch):
    from llmft.pipeline.recipe import load_recipe

    recipe = load_recipe("demo")
    assert recipe.run.budget_minutes > 0 and recipe.train.max_steps > 0
    budget_s = 60 * recipe.run.budget_minutes
    fake_rates(monkeypatch, step_s=0.5)
    fast = budget.measure_and_fit(recipe, tmp_path, spent_s=5.0)
    fake_rates(monkeypatch, step_s=3.0, decode_step_s=0.2)
    slow = budget.measure_and_fit(recipe, tmp_path, spent_s=5.0)
    assert fast["max_steps"] == recipe.train.max_steps and fast["fit"]["capped_by_epochs"]   # the recipe's cap
    assert 0 < slow["max_steps"] < recipe.train.max_steps and not slow["fit"]["capped_by_epochs"]
    fit = slow["fit"]
    # what the slow machine trains fills the budget: its steps (at the measured time plus the margin) plus every other
    # share, and one more step would not fit
    shares = fit["spent_s"] + fit["eval_s"] + fit["train_overhead_s"] + fit["reserve_s"]
    planned = recipe.run.budget_step_margin * 3.0
    assert fit["step_s"] == pytest.approx(planned)
    assert shares + fit["steps"] * planned <= budget_s < shares + (fit["steps"] + 1) * planned
    # the eval estimate: 7 length-sorted batches of 16 (prefill 1600 tokens at 2000/s + 24 decode steps) plus the
    # loss pass, base and tuned, model load, x EVAL_SAFETY; all 5 records of each task kept
    generation = 7 * 24 * 0.2 + (6 * 1600 + 900) / 2000
    loss = 105 * 110 / 2000 if recipe.eval.loss else 0.0
    assert fit["eval_s"] == pytest.approx(round(budget.EVAL_SAFETY * (3.0 + 2 * (generation + loss)), 2))
    assert slow["eval_per_task"] == slow["eval_per_task_prepared"] == 5
    # training gets all that is left as its time limit (it re-fits its steps to it), at most the recipe's steps
    assert 60 * slow["time_limit_minutes"] == pytest.approx(budget_s - shares, abs=0.01)
    assert slow["most_steps"] == fast["most_steps"] == recipe.train.max_steps


def test_fit_recipe_gives_training_the_time_limit_and_keeps_the_recipe_cap(tmp_path, monkeypatch):
    from llmft.pipeline.layout import Layout
    from llmft.pipeline.recipe import load_recipe

    recipe = load_recipe("demo")
    monkeypatch.setattr(budget, "measure_and_fit", lambda rec, data_dir, spent_s: {
        **fake_fit(42, 20, 20), "most_steps": 120, "time_limit_minutes": 6.3})
    log = FakeLog({})
    out = budget.fit_recipe(recipe, Layout(tmp_path), log)
    assert out.train.time_limit_minutes == 6.3 and out.train.max_steps == recipe.train.max_steps == 120
    assert "42 steps x 9.0 s" in log.lines[0]
    assert "(re-fitted while training to end within 6.3 min, at most 120 steps)" in log.lines[0]


def test_step_cap_prefers_the_recipe_steps_over_epochs():
    from llmft.config import TrainConfig

    assert budget.step_cap(TrainConfig(max_steps=120, epochs=3.0), 105) == 120
    assert budget.step_cap(TrainConfig(epochs=1.5), 105) == 158


def test_first_per_task_and_choose_eval_size():
    tasks = ["a", "a", "b", "a", "b", "c", "b", "a"]
    assert budget.first_per_task(tasks, 2) == [0, 1, 2, 4, 5]
    assert budget.first_per_task(tasks, 9) == list(range(8))
    cost = lambda indices: 10.0 * len(indices)     # noqa: E731
    assert budget.choose_eval_size(tasks, cost, 80) == (4, list(range(8)), 80.0)
    assert budget.choose_eval_size(tasks, cost, 55) == (2, [0, 1, 2, 4, 5], 50.0)
    assert budget.choose_eval_size(tasks, cost, 5) == (1, [0, 2, 5], 30.0)      # the floor: fit_steps decides
    # a recipe's floor on the evaluation size: kept even when it does not fit (training gives way)
    assert budget.choose_eval_size(tasks, cost, 5, floor=2) == (2, [0, 1, 2, 4, 5], 50.0)
    assert budget.choose_eval_size(tasks, cost, 55, floor=2) == (2, [0, 1, 2, 4, 5], 50.0)
    assert budget.choose_eval_size(tasks, cost, 5, floor=9) == (4, list(range(8)), 80.0)    # all a task has


def test_run_config_budget_minutes_validated_and_set_by_the_cli_flag(tmp_path, monkeypatch):
    import llmft.pipeline.runner
    from llmft.cli import main
    from llmft.config import check

    assert RunConfig().budget_minutes == 0.0
    with pytest.raises(LlmftError, match="budget_minutes must be >= 0"):
        check(RunConfig(budget_minutes=-1))
    seen = []
    monkeypatch.setattr(llmft.pipeline.runner, "run_pipeline", lambda recipe, out, sources: seen.append((recipe, sources)))
    assert main(["run", "--out", str(tmp_path), "--recipe", "superni", "--natural-instructions", "NI",
                 "--budget-minutes", "2.5"]) == 0
    assert main(["run", "--out", str(tmp_path), "--recipe", "superni", "--natural-instructions", "NI"]) == 0
    assert [r.run.budget_minutes for r, _ in seen] == [2.5, 15.0]
    assert seen[0][1] == {"natural_instructions": ["NI"]}


# ---------------------------------------------------------------- the probes, on a tiny random model

def test_probes_measure_a_tiny_model_on_real_records(tmp_path, raw_dir, smol_tokenizer, monkeypatch):
    from llmft import io
    from llmft.config import DataConfig, TrainConfig
    from llmft.evaluation.generate import encode_prompt
    from llmft.data.prompts import render
    from llmft.data.records import Record
    from llmft.data.sources import natural_instructions
    from tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", smol_tokenizer)
    task = raw_dir / "natural_instructions" / "tasks" / "task1319_country_by_barcode_prefix.json"
    records = [r.to_dict() for r in natural_instructions.read(task, DataConfig()) if isinstance(r, Record)][:24]
    io.write_jsonl(tmp_path / "data" / "train.jsonl", records[:20])
    io.write_jsonl(tmp_path / "data" / "dev.jsonl", records[20:])
    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "unused"), model=str(model),
                      template="superni", k_positive=2, max_length=256, batch_tokens=256, lora_r=4, lora_alpha=8)

    from llmft.training import model as model_module

    resolved, real_resolve, real_clock, jumped = [], model_module.resolve_model, time.perf_counter, [0.0]

    def slow_first_resolve(name):          # as converting the embedded GGUF on a fresh cache: once, and slow
        if not resolved:
            jumped[0] = 1000.0             # the clock jumps rather than the test sleeping: no race with real work
        resolved.append(name)
        return real_resolve(name)

    monkeypatch.setattr(model_module, "resolve_model", slow_first_resolve)
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + jumped[0])
    training = budget.measure_training(cfg)
    assert resolved[0] == str(model) and training.setup_s < 1000.0  # the one-time conversion is not a setup cost
    assert training.step_s > 0 and training.setup_s > 0 and training.dev_loss_s > 0 and training.tokens_per_s > 0
    from llmft.training.batching import Batcher
    from llmft.training.tokenize import tokenize_records

    examples, _ = tokenize_records(records[:20], smol_tokenizer, template="superni", max_length=256, k_positive=2)
    packed = Batcher(examples, packing=True, batch_tokens=256, seed=0, pad_id=smol_tokenizer.pad_token_id)
    assert training.steps_per_epoch == len(packed) > 1                     # grad_accum 1, one process
    assert not (tmp_path / "unused").exists()                              # the probe trained in a temporary folder

    prompts = [render(r, "superni", k_positive=2)[0] for r in records[:7]]
    generation = budget.measure_generation(cfg, prompts, batch_size=4, bf16="false")
    lengths = [len(encode_prompt(smol_tokenizer, p)) for p in prompts]
    assert generation.decode_probe_batch == 4 and generation.dtype == "float32"   # the dtype evaluation will use
    assert generation.prefill_probe_tokens == 4 * max(lengths[i] for i in budget.median_prompts(lengths, 4))
    assert generation.prefill_tokens_per_s > 0 and generation.decode_step_s > 0


def test_eval_inputs_count_the_prompts_evaluation_generates_from(tmp_path, raw_dir, smol_tokenizer):
    """Cut to max_length as training cuts them: rendered whole, SuperNI prompts priced 1.4x the real prefill."""
    from llmft import io
    from llmft.config import DataConfig, TrainConfig
    from llmft.data.prompts import render
    from llmft.data.records import Record
    from llmft.data.sources import natural_instructions
    from llmft.evaluation.generate import encode_prompt
    from tiny_models import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny", smol_tokenizer)
    task = raw_dir / "natural_instructions" / "tasks" / "task1319_country_by_barcode_prefix.json"
    records = [r.to_dict() for r in natural_instructions.read(task, DataConfig()) if isinstance(r, Record)][:6]
    io.write_jsonl(tmp_path / "test.jsonl", records)
    cfg = TrainConfig(model=str(model), template="superni", k_positive=2, max_length=128)
    inputs = budget.eval_inputs(tmp_path / "test.jsonl", cfg, EvalConfig())
    whole = [len(encode_prompt(smol_tokenizer, render(r, "superni", k_positive=2)[0])) for r in records]
    assert min(whole) > 128                                          # every rendered prompt is longer than max_length
    assert all(0 < p and p + r <= 128 and r > 0 for p, r in zip(inputs["prompt_lengths"], inputs["response_lengths"]))
    assert [len(p) for p in inputs["prompts"]] == inputs["prompt_lengths"]
    assert inputs["tasks"] == [r["task"] for r in records]


def test_floor_steps_train_over_budget_instead_of_failing():
    fit = budget.fit_steps(budget_s=300, spent_s=100, step_s=9.0, eval_s=180, train_overhead_s=5, floor_steps=30,
                           max_steps=120)
    assert fit.steps == 30 and fit.over_budget and fit.train_limit_s == 0   # the floor, with no time limit
    roomy = budget.fit_steps(budget_s=900, spent_s=0, step_s=1.0, eval_s=0, reserve_s=0, max_steps=120,
                             floor_steps=30)
    assert roomy.steps == 120 and not roomy.over_budget


def test_the_recipe_floor_on_eval_size_takes_time_from_training(tmp_path, monkeypatch):
    from llmft.pipeline.recipe import load_recipe

    fake_rates(monkeypatch, step_s=1.0, decode_step_s=1.5)        # generation too slow for all 5 records a task
    cut = budget.measure_and_fit(load_recipe("demo"), tmp_path, spent_s=5.0)
    kept = budget.measure_and_fit(load_recipe("demo", ["budget_min_eval_per_task=5"]), tmp_path, spent_s=5.0)
    assert cut["eval_per_task"] < 5 == kept["eval_per_task"] == kept["eval_per_task_prepared"]
    assert kept["fit"]["eval_s"] > cut["fit"]["eval_s"] and kept["max_steps"] < cut["max_steps"]
    assert load_recipe("superni").run.budget_min_eval_per_task == 20


def test_the_step_margin_is_the_recipes(tmp_path, monkeypatch):
    from llmft.pipeline.recipe import load_recipe

    fake_rates(monkeypatch, step_s=3.0, decode_step_s=0.2)
    tight = budget.measure_and_fit(load_recipe("demo", ["budget_step_margin=1.0"]), tmp_path, spent_s=5.0)
    wide = budget.measure_and_fit(load_recipe("demo", ["budget_step_margin=1.5"]), tmp_path, spent_s=5.0)
    assert (tight["fit"]["step_s"], wide["fit"]["step_s"]) == (3.0, 4.5)
    assert tight["max_steps"] > wide["max_steps"] and wide["step_margin"] == 1.5
    assert "1.5x margin" in budget.describe(wide)
    with pytest.raises(Exception, match="budget_step_margin must be >= 1"):
        load_recipe("demo", ["budget_step_margin=0.8"])
