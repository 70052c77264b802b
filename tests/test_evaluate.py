"""`evaluate_run` / `llmft eval` on a hand-built run: loss recomputed independently, scores from scripted
predictions computed by hand, the files it writes, and the report table and plot."""
import json
import math
import struct

import pytest
import torch

import llmft.evaluation.evaluate as ev
from llmft.cli import main
from llmft.config import EvalConfig
from llmft.errors import InputFormatError, LlmftError
from llmft.evaluation.evaluate import evaluate_run
from llmft.evaluation.generate import GenerationOptions, encode_prompt, generate
from llmft.training.model import load_run_model
from llmft.data.prompts import render
from llmft.evaluation.report import comparison_table, plot_base_vs_tuned
from llmft.training.tokenize import encode
from run_factory import RECORDS, make_run

# Tuned predictions for RECORDS, scored by hand:
#  alpaca/0  "Eat well, sleep." vs "Eat well, sleep, exercise.": eat well sleep | eat well sleep exercis -> F = 6/7
#  alpaca/1  "paris" vs "Paris": 1, exact match 1
#  task1344  "1": 1, exact match 1
#  task1239  "ありがとう" (Japanese, xlingual): 5 of 6 tokens of "ありがとう。" -> F = 10/11 (vs the second
#            reference: 2*(5/11)/(1+5/11) = 0.625, lower); exact match 0: "。" is not ASCII punctuation
#  self-instruct "No." vs "Yes: oatmeal, yogurt or toast.": 0
TUNED = ["Eat well, sleep.", "paris", "1", "ありがとう", "No."]
BASE = ["", "", "", "", ""]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    return make_run(tmp_path_factory.mktemp("eval"), smol_tokenizer)


def _scripted(monkeypatch):
    """Replace generation by fixed predictions: the first call is the base model, the second the tuned one."""
    answers = [BASE, TUNED]
    calls = []

    def fake_generate(model, tokenizer, prompts, options, *, template=None, desc=""):
        calls.append({"prompts": list(prompts), "adapter_disabled": model._adapters_disabled,
                      "max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size})
        return answers[len(calls) - 1][:len(prompts)]

    monkeypatch.setattr(ev, "generate", fake_generate)
    return calls


def _reference_loss(model, tokenizer, records, max_length=128):
    """Token-weighted response loss from the model's own logits, one record at a time."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for record in records:
            prompt, response = render(record, "alpaca")
            example = encode(prompt, response, tokenizer, max_length)
            ids = torch.tensor(example.input_ids.tolist())[None]
            labels = torch.tensor(example.labels.tolist())[None]
            logits = model(input_ids=ids).logits
            total += torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                       reduction="sum").item()
            tokens += int((labels[0, 1:] != -100).sum())
    return total / tokens, tokens


def test_eval_writes_exact_scores_and_files(run_dir, monkeypatch, capsys):
    calls = _scripted(monkeypatch)
    result = evaluate_run(run_dir, EvalConfig(max_new_tokens=7, batch_size=3, bf16="false"))

    # base runs with the adapter disabled, then the tuned model; both see the run's alpaca prompts, as the token ids
    # of the training examples' prompts
    assert [c["adapter_disabled"] for c in calls] == [True, False]
    tuned_model, tokenizer = load_run_model(run_dir)
    assert calls[0]["prompts"] == [encode_prompt(tokenizer, render(r, "alpaca")[0]) for r in RECORDS] \
        == calls[1]["prompts"]
    assert (calls[0]["max_new_tokens"], calls[0]["batch_size"]) == (7, 3)

    tuned = result["tuned"]
    assert tuned["rougeL"] == round(100 * (6 / 7 + 1 + 1 + 10 / 11 + 0) / 5, 4) == 75.3247
    assert tuned["exact_match"] == 40.0 and tuned["n"] == 5
    assert tuned["per_source"] == {
        "alpaca": {"rougeL": 92.8571, "exact_match": 50.0, "n": 2},
        "natural-instructions": {"rougeL": 95.4545, "exact_match": 50.0, "n": 2},
        "self-instruct": {"rougeL": 0.0, "exact_match": 0.0, "n": 1},
    }
    assert tuned["per_task"]["task1239_ted_translation_gl_ja"] == {"rougeL": 90.9091, "exact_match": 0.0, "n": 1}
    assert sorted(tuned["per_task"]) == ["alpaca", "self-instruct", "task1239_ted_translation_gl_ja",
                                         "task1344_glue_entailment_classification"]
    assert result["base"]["rougeL"] == 0.0 and result["base"]["exact_match"] == 0.0

    # loss: token-weighted over response tokens, the same as scoring each record alone
    loss, tokens = _reference_loss(tuned_model, tokenizer, RECORDS)
    assert tuned["loss_tokens"] == tokens
    assert tuned["loss"] == pytest.approx(loss, abs=1e-5)
    assert tuned["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    base_model, _ = load_run_model(run_dir, adapter=False)
    base_loss, _ = _reference_loss(base_model, tokenizer, RECORDS)
    assert result["base"]["loss"] == pytest.approx(base_loss, abs=1e-5)
    assert result["base"]["loss"] != pytest.approx(tuned["loss"], abs=1e-3)   # the adapter changes the model

    assert json.loads((run_dir / "eval.json").read_text(encoding="utf-8")) == result
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    assert rows[3] == {"id": "natural-instructions/task1239/0", "source": "natural-instructions",
                       "task": "task1239_ted_translation_gl_ja", "prediction_base": "",
                       "prediction_tuned": "ありがとう", "references": ["ありがとう。", "ありがとうございます。"],
                       "scores": {"base": {"rougeL": 0.0, "exact_match": 0.0},
                                  "tuned": {"rougeL": 90.9091, "exact_match": 0.0}}}
    assert (run_dir / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "| ROUGE-L | 0.00 | 75.32 | +75.32 |" in out and "| exact match | 0.00 | 40.00 | +40.00 |" in out


def test_eval_greedy_predictions_are_the_generate_output(run_dir):
    result = evaluate_run(run_dir, EvalConfig(max_new_tokens=4, batch_size=2, limit=2, base=False, bf16="false"))
    assert set(result) == {"tuned"} and result["tuned"]["n"] == 2 and result["tuned"]["dtype"] == "float32"
    model, tokenizer = load_run_model(run_dir)
    expected = generate(model, tokenizer, [render(r, "alpaca")[0] for r in RECORDS[:2]],
                        GenerationOptions(max_new_tokens=4, batch_size=1))
    rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prediction_tuned"] for r in rows] == expected
    assert "prediction_base" not in rows[0] and set(rows[0]["scores"]) == {"tuned"}


def test_eval_without_the_loss_pass_scores_the_same_and_leaves_loss_out(run_dir, monkeypatch, capsys):
    cfg = EvalConfig(max_new_tokens=4, batch_size=2, limit=3)
    with_loss = evaluate_run(run_dir, cfg)
    monkeypatch.setattr(ev, "response_loss", lambda *a, **k: pytest.fail("loss pass not asked for"))
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--max-new-tokens", "4", "--batch-size", "2", "--limit", "3",
                 "--no-loss"]) == 0
    without = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    for name in ("base", "tuned"):
        assert not {"loss", "perplexity", "loss_tokens", "n_loss_skipped"} & set(without[name])
        for key in ("rougeL", "exact_match", "n", "per_task"):
            assert without[name][key] == with_loss[name][key]
    out = capsys.readouterr().out
    assert "| ROUGE-L |" in out and "| loss |" not in out and "| perplexity |" not in out


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_eval_auto_dtype_is_bf16_only_where_this_cpu_measures_it_faster(run_dir, monkeypatch, bf16_faster):
    """`eval.bf16: auto` asks training's per-machine probe; the models are scored in that dtype (said in eval.json),
    and a bf16 loss stays within bf16 rounding of the fp32 one. `false` never asks the probe."""
    from llmft.training import cpu

    asked = []

    def probe(setting, device):
        asked.append(setting)
        return cpu.DtypeChoice(bf16_faster if setting == "auto" else setting == "true", "measured")

    monkeypatch.setattr(cpu, "choose_compute_dtype", probe)
    auto = evaluate_run(run_dir, EvalConfig(max_new_tokens=3, limit=3))
    fp32 = evaluate_run(run_dir, EvalConfig(max_new_tokens=3, limit=3, bf16="false"))
    expected = "bfloat16" if bf16_faster else "float32"
    assert [auto[name]["dtype"] for name in ("base", "tuned")] == [expected, expected]
    assert fp32["tuned"]["dtype"] == "float32" and asked == ["auto", "false"]
    assert auto["tuned"]["loss"] == pytest.approx(fp32["tuned"]["loss"], rel=0 if not bf16_faster else 2e-2)
    assert auto["tuned"]["loss_tokens"] == fp32["tuned"]["loss_tokens"]


def test_yaml_booleans_are_the_bf16_choice_strings(tmp_path):
    from llmft.config import load_config

    path = tmp_path / "eval.yaml"
    path.write_text("bf16: false\n", encoding="utf-8")
    assert load_config(EvalConfig, path).bf16 == "false"
    path.write_text("bf16: maybe\n", encoding="utf-8")
    with pytest.raises(LlmftError, match="bf16 must be auto, true or false, got 'maybe'"):
        load_config(EvalConfig, path)


def test_cli_eval_options(run_dir, tmp_path, monkeypatch, capsys):
    calls = _scripted(monkeypatch)
    other = tmp_path / "other"
    other.mkdir()
    (other / "dev.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS[1:3]),
                                     encoding="utf-8")
    assert main(["eval", str(run_dir), "--data", str(other), "--split", "dev", "--limit", "1",
                 "--max-new-tokens", "3", "--batch-size", "5", "--bf16", "false"]) == 0
    result = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    assert result["tuned"]["n"] == 1 and result["tuned"]["dtype"] == "float32" and list(result["tuned"]["per_source"]) == ["alpaca"]
    assert [len(c["prompts"]) for c in calls] == [1, 1] and (calls[0]["max_new_tokens"], calls[0]["batch_size"]) \
        == (3, 5)
    assert "### Overall" in capsys.readouterr().out


def test_eval_errors_name_the_problem(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--split", "nope"]) == 2
    assert "nope.jsonl: evaluation data not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"id": "x", "source": "alpaca"}) + "\n",
                   encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"bad.jsonl: record 2: 'instruction' is missing or not a string"):
        evaluate_run(run_dir, EvalConfig(data=str(bad)))
    with pytest.raises(LlmftError, match="max_new_tokens must be positive"):
        evaluate_run(run_dir, EvalConfig(max_new_tokens=0))
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err


# ---------------------------------------------------------------- report

EVAL = {
    "base": {"loss": 2.5, "perplexity": 12.1825, "rougeL": 10.0, "exact_match": 0.0, "n": 3,
             "per_source": {"alpaca": {"rougeL": 10.0, "exact_match": 0.0, "n": 3}},
             "per_task": {"alpaca": {"rougeL": 10.0, "exact_match": 0.0, "n": 3}}},
    "tuned": {"loss": 1.25, "perplexity": 3.4903, "rougeL": 42.5, "exact_match": 33.3333, "n": 3,
              "per_source": {"alpaca": {"rougeL": 42.5, "exact_match": 33.3333, "n": 3}},
              "per_task": {"alpaca": {"rougeL": 42.5, "exact_match": 33.3333, "n": 3}}},
}


def test_comparison_table_markdown():
    assert comparison_table(EVAL) == (
        "### Overall\n"
        "| metric | base | tuned | delta |\n"
        "|---|---:|---:|---:|\n"
        "| loss | 2.50 | 1.25 | -1.25 |\n"
        "| perplexity | 12.18 | 3.49 | -8.69 |\n"
        "| ROUGE-L | 10.00 | 42.50 | +32.50 |\n"
        "| exact match | 0.00 | 33.33 | +33.33 |\n"
        "| records | 3 | 3 |  |\n"
        "\n"
        "### Per source\n"
        "| source | n | rougeL base | rougeL tuned | exact_match base | exact_match tuned |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| alpaca | 3 | 10.00 | 42.50 | 0.00 | 33.33 |\n")
    only_tuned = comparison_table({"tuned": EVAL["tuned"]})
    assert "| metric | tuned |\n" in only_tuned and "| ROUGE-L | 42.50 |\n" in only_tuned


def test_plot_is_a_png_of_the_expected_size(tmp_path):
    path = plot_base_vs_tuned(EVAL, tmp_path / "sub" / "eval.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (800, 450)   # figsize (8, 4.5) at 100 dpi
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["eval.png"]   # no temporary file left behind


def test_full_fine_tuning_run_compares_against_separately_loaded_base(tmp_path, smol_tokenizer):
    """A run with model/ (no adapter) still gets a base column: the base weights are loaded beside the tuned ones."""
    import shutil

    from tiny_models import save_tiny_model

    run = make_run(tmp_path, smol_tokenizer)
    shutil.rmtree(run / "adapter")
    save_tiny_model(run / "model", smol_tokenizer, "llama", seed=7)   # the "fine-tuned" weights
    results = evaluate_run(run, EvalConfig(max_new_tokens=4, limit=3, bf16="false"))

    base_model, _ = load_run_model(run, adapter=False)
    tuned_model, _ = load_run_model(run, adapter=True)
    assert results["base"]["loss"] == pytest.approx(_reference_loss(base_model, smol_tokenizer, RECORDS[:3])[0], rel=1e-4)
    assert results["tuned"]["loss"] == pytest.approx(_reference_loss(tuned_model, smol_tokenizer, RECORDS[:3])[0], rel=1e-4)
    assert results["base"]["loss"] != pytest.approx(results["tuned"]["loss"], rel=1e-3)
