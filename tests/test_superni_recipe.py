"""The `superni` recipe: its settings, the Tk-Instruct prompt encoding on records made by the real sources module,
ROUGE-L / exact match parity with Tk-Instruct's compute_metrics.py on the same predictions, and (slow) the whole
`llmft run --recipe superni` on the fixture tasks within a time budget."""
from __future__ import annotations

import json
import shutil
import string
from collections import defaultdict
from pathlib import Path

import pytest

from llmft.config import DataConfig
from llmft.evaluation.metrics import aggregate, aggregate_by, score_prediction
from llmft.data.prompts import render
from llmft.data.records import Record
from llmft.data.sources import natural_instructions

TEST_TASKS = ("task1393_superglue_copa_text_completion", "task648_answer_generation",
              "task1344_glue_entailment_classification", "task957_e2e_nlg_text_generation_generate",
              "task121_zest_text_modification", "task1562_zest_text_modification", "task743_eurlex_summarization",
              "task891_gap_coreference_resolution")


def converted(raw_dir: Path, task: str) -> list[dict]:
    """Records of one task file exactly as `llmft data convert/prepare` makes them."""
    path = raw_dir / "natural_instructions" / "tasks" / f"{task}.json"
    return [item.to_dict() for item in natural_instructions.read(path, DataConfig())
            if isinstance(item, Record)]


# ---------------------------------------------------------------- the recipe

def test_recipe_follows_the_protocol_and_the_ablation():
    from llmft.pipeline.recipe import builtin_recipes, load_recipe

    assert "superni" in builtin_recipes()
    recipe = load_recipe("superni")
    assert recipe.run.budget_minutes == 15.0
    d, t, e = recipe.data, recipe.train, recipe.eval
    assert (d.split, d.languages, d.max_instances_per_task, d.test_instances_per_task) == (
        "tasks", ["English"], 40, 20)
    assert (t.model, t.method, t.template, t.k_positive, t.lora_r, t.lora_targets, t.lr, t.max_steps) == (
        "smollm2-135m", "lora", "superni", 2, 16, "all-linear", 1e-3, 0)
    assert (t.max_length, t.batch_tokens, t.epochs) == (512, 1024, 1.0)
    assert (e.split, e.max_new_tokens, e.base) == ("test", 32, True)
    assert load_recipe("superni", ["train.k_positive=0", "budget_minutes=5"]).train.k_positive == 0


# ---------------------------------------------------------------- Tk-Instruct encoding

def tk_instruct_source(definition: str, positives: list[dict], instance_input: str, k: int) -> str:
    """Written from Tk-Instruct's DataCollatorForNI (definition, k positive examples, no task name, no negative
    examples, no explanations; a field gets a full stop unless it ends in ASCII punctuation), for checking."""
    def stop(text: str) -> str:
        return text if text[-1] in string.punctuation else text + "."

    source = stop("Definition: " + definition.strip()) + "\n\n"
    for number, example in enumerate(positives[:k], 1):
        source += f" Positive Example {number} -\n"
        source += stop("Input: " + example["input"].strip()) + "\n"
        source += stop(" Output: " + example["output"].strip()) + "\n\n"
    return source + "Now complete the following example -\n" + stop("Input: " + instance_input.strip()) + "\nOutput: "


def test_superni_encoding_of_a_known_test_task_instance(raw_dir):
    record = converted(raw_dir, "task648_answer_generation")[0]
    assert record["task"] == "task648_answer_generation" and record["meta"]["split_hint"] == "test"
    prompt, response = render(record, "superni", k_positive=2)
    assert prompt == (
        "Definition: You will see a sentence and a given pronoun. Answer with the word in the sentence to which the "
        "pronoun is referring.\n\n"
        " Positive Example 1 -\nInput: text: this book introduced shakespeare to ovid; it was a fine selection of "
        "his writing.; pronoun: his.\n Output: shakespeare.\n\n"
        " Positive Example 2 -\nInput: text: madonna fired her trainer because she couldnt stand her boyfriend.; "
        "pronoun: her.\n Output: trainer.\n\n"
        "Now complete the following example -\nInput: text: the city councilmen refused the demonstrators a permit "
        "because they feared violence.; pronoun: they.\nOutput: ")
    assert response == "the city councilmen"


@pytest.mark.parametrize("task", TEST_TASKS)
def test_superni_encoding_matches_tk_instruct_on_every_test_task(raw_dir, task):
    data = json.loads((raw_dir / "natural_instructions" / "tasks" / f"{task}.json").read_text(encoding="utf-8"))
    records = converted(raw_dir, task)[:100]
    assert len(records) == 100
    for index, record in enumerate(records):
        instance = data["Instances"][index]
        assert record["references"] == instance["output"]
        for k in (0, 1, 2):
            expected = tk_instruct_source(data["Definition"][0], data["Positive Examples"], instance["input"], k)
            assert render(record, "superni", k_positive=k)[0] == expected, (task, index, k)


# ---------------------------------------------------------------- metric parity with compute_metrics.py

def tk_normalize(text: str) -> str:
    """Tk-Instruct's normalize_answer (SQuAD's without the article removal)."""
    kept = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(kept.split())


def tk_compute_metrics(predictions: list[str], references: list[list[str]]) -> dict:
    """Tk-Instruct's compute_metrics for English: per record the best over the references of exact match and of
    rouge_score's ROUGE-L F-measure (stemmer on, default tokenizer), summed, x100 / n, rounded to 4 places."""
    from rouge_score import rouge_scorer

    exact, rouge = 0.0, 0.0
    for prediction, golds in zip(predictions, references):
        exact += max(float(tk_normalize(prediction) == tk_normalize(g)) for g in golds)
        rouge += max(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
                     .score(prediction=prediction, target=g)["rougeL"].fmeasure for g in golds)
    n = len(references)
    return {"exact_match": round(100.0 * exact / n, 4), "rougeL": round(100.0 * rouge / n, 4)}


def tk_grouped(predictions, references, groups) -> dict:
    by_group = defaultdict(list)
    for prediction, golds, group in zip(predictions, references, groups):
        by_group[group].append((prediction, golds))
    return {g: tk_compute_metrics([p for p, _ in pairs], [r for _, r in pairs]) for g, pairs in by_group.items()}


def parity_predictions(records: list[dict]) -> list[str]:
    """A mix that exercises the metric: the reference itself, case/punctuation/article changes, inflections for the
    stemmer, a copied demonstration output (Tk-Instruct's 'copy demo' baseline), padding words, empty output."""
    out = []
    for i, record in enumerate(records):
        ref = record["references"][-1]
        demo = (record["meta"].get("positive_examples") or [{"output": ""}])[0]["output"]
        variants = [ref, ref.upper() + "!!", f"The {ref}.", ref.replace("s ", "ing "), demo,
                    f"Answer: {ref} and some more words", "", ref.split(" ")[0]]
        out.append(variants[i % len(variants)])
    return out


def test_metrics_agree_with_tk_instruct_compute_metrics(raw_dir):
    records = [r for task in TEST_TASKS for r in converted(raw_dir, task)[:12]]
    predictions = parity_predictions(records)
    references = [r["references"] for r in records]
    tasks = [r["task"] for r in records]
    scores = [score_prediction(p, r) for p, r in zip(predictions, records)]

    ours = aggregate(scores)
    theirs = tk_compute_metrics(predictions, references)
    assert (ours["rougeL"], ours["exact_match"]) == (theirs["rougeL"], theirs["exact_match"])
    assert ours["n"] == 96 and 0 < theirs["exact_match"] < theirs["rougeL"] < 100
    ours_by_task = aggregate_by(scores, tasks)
    theirs_by_task = tk_grouped(predictions, references, tasks)
    assert set(ours_by_task) == set(TEST_TASKS)
    for task in TEST_TASKS:
        assert (ours_by_task[task]["rougeL"], ours_by_task[task]["exact_match"]) == (
            theirs_by_task[task]["rougeL"], theirs_by_task[task]["exact_match"]), task


def test_metric_parity_on_known_values():
    """Hand-checked cases: stemming, articles kept for exact match, best over references."""
    record = {"references": ["The cats are running", "felines"], "meta": {}}
    assert score_prediction("the cat is running.", record) == pytest.approx(
        {"rougeL": 0.75, "exact_match": 0.0})                          # the/cat/run match 3 of 4 tokens each side
    assert tk_compute_metrics(["the cat is running."], [record["references"]]) == {"exact_match": 0.0,
                                                                                    "rougeL": 75.0}
    assert score_prediction("FELINES!", record) == {"rougeL": 1.0, "exact_match": 1.0}
    assert score_prediction("cats are running", record)["exact_match"] == 0.0    # "the" is not removed


# ---------------------------------------------------------------- end to end (slow)

def small_ni_root(raw_dir: Path, root: Path, test_tasks: tuple[str, ...]) -> Path:
    """Every fixture train task and a few short test tasks, with the official split files (read-only fixtures are
    linked, not copied into the repository)."""
    source = raw_dir / "natural_instructions"
    (root / "tasks").mkdir(parents=True)
    shutil.copytree(source / "splits", root / "splits")
    train = set((source / "splits" / "default" / "train_tasks.txt").read_text().split())
    for path in (source / "tasks").glob("task*.json"):
        if path.stem in train or path.stem in test_tasks:
            (root / "tasks" / path.name).symlink_to(path)
    return root


@pytest.mark.slow
def test_superni_recipe_end_to_end_within_budget(raw_dir, tmp_path):
    from llmft.cli import main

    test_tasks = ("task1393_superglue_copa_text_completion", "task648_answer_generation",
                  "task1344_glue_entailment_classification")
    ni = small_ni_root(raw_dir, tmp_path / "ni", test_tasks)
    out = tmp_path / "run"
    budget_minutes = 3.0
    assert main(["run", "--recipe", "superni", "--natural-instructions", str(ni), "--out", str(out),
                 "--budget-minutes", str(budget_minutes), "--set", "data.max_instances_per_task=8",
                 "--set", "data.test_instances_per_task=3", "--set", "eval.max_new_tokens=8"]) == 0
    fit = json.loads((out / "budget.json").read_text())
    # The plan fits the budget by construction (wall time itself is not asserted: it moves with the machine's load).
    shares = fit["fit"]
    planned = shares["spent_s"] + shares["eval_s"] + shares["train_overhead_s"] + shares["reserve_s"] + shares["train_s"]
    assert planned <= 60 * budget_minutes and shares["budget_s"] == 60 * budget_minutes
    summary = json.loads((out / "summary.json").read_text())
    # training re-fitted its steps to the time the budget left it: all the recipe allows, or fewer by a re-fit
    trained = json.loads((out / "train" / "summary.json").read_text())
    assert trained["time_limit_minutes"] == fit["time_limit_minutes"] > 0 and trained["most_steps"] == fit["most_steps"]
    assert 1 <= summary["train"]["steps"] == trained["steps"] <= fit["most_steps"]
    assert trained["steps"] == fit["most_steps"] or trained["refits"][-1]["to"] == trained["steps"]
    assert summary["data"]["splits"]["test"] == 9
    assert summary["held_out_tasks"]["tasks"] == sorted(test_tasks) and summary["seen_tasks"]["tasks"] == []
    assert set(summary["stages"]) == {"demo", "prepare", "budget", "train", "eval"}
    per_task = fit["eval_per_task"]             # the first N of each test task that the budget left room for
    assert fit["eval_per_task_prepared"] == 3 and 1 <= per_task <= 3 and fit["eval_records"] == 3 * per_task
    assert (out / "eval_subset.jsonl").exists() == (per_task < 3)
    evaluation = json.loads((out / "train" / "eval.json").read_text())
    assert evaluation["base"]["n"] == evaluation["tuned"]["n"] == 3 * per_task
    assert set(evaluation["base"]["per_task"]) == set(evaluation["tuned"]["per_task"]) == set(test_tasks)
    report = (out / "report.md").read_text()
    assert "| task | n | rougeL base | rougeL tuned |" in report
    for task in test_tasks:
        row = next(line for line in report.splitlines() if line.startswith(f"| {task} | {per_task} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) == round(evaluation["base"]["per_task"][task]["rougeL"], 2) and float(cells[3]) == \
            round(evaluation["tuned"]["per_task"][task]["rougeL"], 2)
