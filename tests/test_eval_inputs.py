"""What `llmft eval` reads and what it scores against: the rows train takes, {prompt, completion} references, the
held-out rows of a run trained on one file, superni prompts built as in training, and conversations."""
from __future__ import annotations

import json

import pytest

import llmft.evaluation.evaluate as ev
from llmft.config import EvalConfig, TrainConfig
from llmft.errors import LlmftError
from llmft.evaluation.evaluate import evaluate_run
from llmft.training.tokenize import IGNORE_INDEX, tokenize_records
from run_factory import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    return make_run(tmp_path_factory.mktemp("evalinputs"), smol_tokenizer)


def set_template(run_dir, **info):
    path = run_dir / "template.json"
    template = {**json.loads(path.read_text()), "template": "alpaca", "k_positive": 0, "max_length": 128, **info}
    path.write_text(json.dumps(template), encoding="utf-8")


def scripted(monkeypatch, answer):
    """Generation replaced by `answer(prompt index)`; the prompts each call saw are recorded."""
    calls = []

    def fake_generate(model, tokenizer, prompts, options, *, template=None, desc=""):
        calls.append(list(prompts))
        return [answer(i) for i in range(len(prompts))]

    monkeypatch.setattr(ev, "generate", fake_generate)
    return calls


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def predictions(run_dir):
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


PLAIN = [{"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
         {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}]


def test_plain_instruction_rows_are_evaluated_like_train_takes_them(run_dir, tmp_path, monkeypatch):
    set_template(run_dir)
    scripted(monkeypatch, lambda i: PLAIN[i]["output"])
    result = evaluate_run(run_dir, EvalConfig(data=str(write_jsonl(tmp_path / "plain.jsonl", PLAIN)), base=False))
    assert result["tuned"]["n"] == 2 and result["tuned"]["exact_match"] == 100.0
    assert result["tuned"]["loss_tokens"] > 0
    assert [(r["id"], r["references"]) for r in predictions(run_dir)] == [
        ("plain.jsonl:1", ["Paris"]), ("plain.jsonl:2", ["5"])]


def test_prompt_completion_rows_are_scored_against_the_completion(run_dir, tmp_path, monkeypatch):
    set_template(run_dir)
    rows = [{"prompt": "Q: capital of France?\nA:", "completion": " Paris"},
            {"prompt": "Q: 2+3?\nA:", "completion": " 5"}]
    scripted(monkeypatch, lambda i: rows[i]["completion"].strip())
    result = evaluate_run(run_dir, EvalConfig(data=str(write_jsonl(tmp_path / "pc.jsonl", rows)), base=False))
    assert result["tuned"]["rougeL"] == 100.0 and result["tuned"]["exact_match"] == 100.0
    assert [r["references"] for r in predictions(run_dir)] == [[" Paris"], [" 5"]]


def test_a_run_trained_on_one_file_is_evaluated_on_its_held_out_rows(run_dir, tmp_path, monkeypatch, capsys):
    from llmft.training.data import read_training_data
    from llmft.training.run_folder import HELDOUT_FILE, write_heldout

    set_template(run_dir)
    rows = [{"id": f"r{i}", "instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(40)]
    data = write_jsonl(tmp_path / "one.jsonl", rows)
    config = run_dir / "config.yaml"
    saved_config = config.read_text()
    config.write_text(saved_config.replace(str(run_dir.parent / "data"), str(data)) + "seed: 3\n")
    try:
        split = read_training_data(TrainConfig(data=str(data), out=str(run_dir), seed=3))
        write_heldout(run_dir, split)          # what train writes into the run folder
        held = {r["id"] for r in split.dev}
        assert len(held) == 2 and held.isdisjoint(r["id"] for r in split.train)

        scripted(monkeypatch, lambda i: "")
        assert evaluate_run(run_dir, EvalConfig(base=False))["tuned"]["n"] == 2
        assert {r["id"] for r in predictions(run_dir)} == held
        assert "evaluating the 2 rows of" in capsys.readouterr().out

        (run_dir / HELDOUT_FILE).unlink()       # a run from before heldout.json: recomputed from its seed
        evaluate_run(run_dir, EvalConfig(base=False))
        assert {r["id"] for r in predictions(run_dir)} == held

        write_heldout(run_dir, split)
        write_jsonl(data, rows[:39])            # the file changed since training: its held-out rows are unknown
        with pytest.raises(LlmftError, match="changed since training"):
            evaluate_run(run_dir, EvalConfig(base=False))
    finally:
        config.write_text(saved_config)
        (run_dir / HELDOUT_FILE).unlink(missing_ok=True)


def superni_record() -> dict:
    definition = ("In this task you are given a short English sentence about animals, plants or weather, and you "
                  "must answer with the single word that names the main subject of the sentence, in lower case, "
                  "without any punctuation, and without repeating the sentence itself.")
    positives = [{"input": f"The old grey {w} walked slowly along the wide river bank at dawn.", "output": w,
                  "explanation": ""} for w in ("elephant", "heron")]
    return {"id": "ni/0", "source": "natural-instructions", "task": "task_x", "instruction": definition,
            "input": "A small red fox jumped over the fence.", "output": "fox", "references": ["fox"],
            "meta": {"definitions": [definition], "positive_examples": positives}}


def test_superni_eval_prompt_is_the_shrunk_prompt_of_training(run_dir, tmp_path, monkeypatch, smol_tokenizer):
    from llmft.data.prompts import render

    set_template(run_dir, template="superni", k_positive=2, max_length=128)
    record = superni_record()
    full_prompt = render(record, "superni", k_positive=2)[0]
    assert len(smol_tokenizer(full_prompt)["input_ids"]) > 128     # the prompt does not fit as it is
    calls = scripted(monkeypatch, lambda i: "fox")
    result = evaluate_run(run_dir, EvalConfig(data=str(write_jsonl(tmp_path / "ni.jsonl", [record])), base=False))
    [example], _ = tokenize_records([record], smol_tokenizer, template="superni", max_length=128, k_positive=2)
    first_trained = int((example.labels != IGNORE_INDEX).argmax())
    assert calls[0] == [example.input_ids[:first_trained].tolist()]
    prompt = smol_tokenizer.decode(calls[0][0])
    assert "Positive Example 2" not in prompt and record["instruction"].strip() in prompt   # examples dropped to fit
    assert len(calls[0][0]) < len(smol_tokenizer(full_prompt)["input_ids"])
    assert prompt.endswith("Now complete the following example -\nInput: A small red fox jumped over the fence.\n"
                           "Output: ")
    assert result["tuned"]["exact_match"] == 100.0


def test_conversations_score_the_last_assistant_turn(run_dir, tmp_path, monkeypatch, smol_tokenizer):
    set_template(run_dir, template="chat")
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome."}]
    calls = scripted(monkeypatch, lambda i: "Rome.")
    data = write_jsonl(tmp_path / "conv.jsonl", [{"messages": messages}])
    result = evaluate_run(run_dir, EvalConfig(data=str(data), base=False))
    prefix = smol_tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert calls[0] == [smol_tokenizer(prefix, add_special_tokens=False)["input_ids"]]
    assert predictions(run_dir)[0]["references"] == ["Rome."]
    assert result["tuned"]["exact_match"] == 100.0
    # the loss covers the last answer and its end-of-turn token only
    n_answer = len(smol_tokenizer("Rome.<|im_end|>", add_special_tokens=False)["input_ids"])
    assert result["tuned"]["loss_tokens"] == n_answer
