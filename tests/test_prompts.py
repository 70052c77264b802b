"""Prompt templates: exact strings against the upstream encodings, the chat template round trip, `data format`."""
from __future__ import annotations

import json

import pytest

from llmft.errors import InputFormatError, LlmftError
from llmft.data.prompts import render
from llmft.training.tokenize import encode

ALPACA_HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n")
ALPACA_HEADER_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n")
BARCODE_DEFINITION = (
    "In this task, you are given a country name and you need to return the barcode prefix of the given country. "
    "A barcode prefix is a 3-digit number at the begining of all the barcodes on products from a company or "
    "country. Some countries have ranges of barcode prefixes such as, 730 - 739; in such a case, a number from "
    "within that range will be considered as a valid output.")


def ni_record(raw_dir, task: str, index: int) -> dict:
    """A natural-instructions record built the way the sources module builds it, straight from the task json."""
    data = json.loads((raw_dir / "natural_instructions" / "tasks" / f"{task}.json").read_text(encoding="utf-8"))
    instance = data["Instances"][index]
    return {"id": f"natural-instructions/{instance['id']}", "source": "natural-instructions", "task": task,
            "instruction": data["Definition"][0], "input": instance["input"], "output": instance["output"][0],
            "references": instance["output"],
            "meta": {"definitions": data["Definition"], "positive_examples": [
                {k: ex.get(k, "") for k in ("input", "output", "explanation")} for ex in data["Positive Examples"]]}}


def alpaca_records(raw_dir) -> list[dict]:
    return json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- alpaca

def test_alpaca_with_input_is_upstream_prompt_exactly(raw_dir):
    record = next(r for r in alpaca_records(raw_dir) if r["input"])
    prompt, response = render(record, "alpaca")
    assert prompt == (ALPACA_HEADER_INPUT + f"### Instruction:\n{record['instruction']}\n\n### Input:\n"
                      f"{record['input']}\n\n### Response:")
    assert response == record["output"]


def test_alpaca_exact_strings_for_a_known_record(raw_dir):
    first = alpaca_records(raw_dir)[0]
    assert first["instruction"] == "Give three tips for staying healthy." and first["input"] == ""
    prompt, response = render(first, "alpaca")
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      "the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:")
    assert response == first["output"]
    prompt, _ = render({"instruction": "Add.", "input": "2 + 3", "output": "5"}, "alpaca")
    assert prompt == ("Below is an instruction that describes a task, paired with an input that provides further "
                      "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                      "Add.\n\n### Input:\n2 + 3\n\n### Response:")


def test_prompt_completion_rows_pass_through_every_template(smol_tokenizer):
    row = {"prompt": "Q: 2+2?\nA:", "completion": " 4"}
    for template in ("alpaca", "superni", "chat"):
        assert render(row, template, tokenizer=smol_tokenizer) == ("Q: 2+2?\nA:", " 4")


def test_bad_records_and_templates_are_named():
    with pytest.raises(LlmftError, match=r"record 'r1': field 'output' is missing"):
        render({"id": "r1", "instruction": "x", "input": ""}, "alpaca")
    with pytest.raises(LlmftError, match="unknown template 'vicuna'"):
        render({"instruction": "x", "input": "", "output": "y"}, "vicuna")
    with pytest.raises(LlmftError, match="needs a tokenizer"):
        render({"instruction": "x", "input": "", "output": "y"}, "chat")


# ---------------------------------------------------------------- superni (Tk-Instruct)

def test_superni_k0_on_a_real_task_instance(raw_dir):
    record = ni_record(raw_dir, "task1319_country_by_barcode_prefix", 0)
    prompt, response = render(record, "superni", k_positive=0)
    assert prompt == ("Definition: " + BARCODE_DEFINITION + "\n\n"
                      "Now complete the following example -\nInput: United States drugs.\nOutput: ")
    assert response == "030"


def test_superni_k2_on_a_real_task_instance(raw_dir):
    record = ni_record(raw_dir, "task1319_country_by_barcode_prefix", 0)
    prompt, response = render(record, "superni", k_positive=2)
    assert prompt == ("Definition: " + BARCODE_DEFINITION + "\n\n"
                      " Positive Example 1 -\nInput: Bulgaria.\n Output: 380.\n\n"
                      " Positive Example 2 -\nInput: Slovenia.\n Output: 383.\n\n"
                      "Now complete the following example -\nInput: United States drugs.\nOutput: ")
    assert response == "030"
    assert render(record, "superni", k_positive=1)[0].count("Positive Example") == 1


def test_superni_full_stops_whitespace_and_non_ni_records():
    record = {"id": "a", "instruction": "  Translate to French  ", "input": " Where is it? ", "output": "Où?",
              "meta": {"positive_examples": [{"input": "Hello!", "output": " Bonjour ", "explanation": "x"}]}}
    prompt, response = render(record, "superni", k_positive=2)
    assert prompt == ("Definition: Translate to French.\n\n"
                      " Positive Example 1 -\nInput: Hello!\n Output: Bonjour.\n\n"
                      "Now complete the following example -\nInput: Where is it?\nOutput: ")
    assert response == "Où?"
    prompt, _ = render({"instruction": "Name a color", "input": "", "output": "red"}, "superni")
    assert prompt == "Definition: Name a color.\n\nNow complete the following example -\nInput: .\nOutput: "


def test_superni_budget_drops_examples_then_shortens_definition(raw_dir, smol_tokenizer):
    record = ni_record(raw_dir, "task1319_country_by_barcode_prefix", 0)
    count = lambda text: len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    full_k2, _ = render(record, "superni", k_positive=2)
    full_k1, _ = render(record, "superni", k_positive=1)
    full_k0, _ = render(record, "superni", k_positive=0)
    tail = "Now complete the following example -\nInput: United States drugs.\nOutput: "

    fits = lambda budget: render(record, "superni", k_positive=2, tokenizer=smol_tokenizer,  # noqa: E731
                                 max_prompt_tokens=budget)[0]
    assert fits(count(full_k2)) == full_k2
    assert fits(count(full_k2) - 1) == full_k1
    assert fits(count(full_k1) - 1) == full_k0
    short = fits(count(full_k0) - 20)
    assert short.startswith("Definition: In this task, you are given a country name") and short.endswith(tail)
    assert "Positive Example" not in short and count(short) <= count(full_k0) - 20
    assert fits(count(tail) - 5) == tail  # nothing but the tail fits: it is kept whole (tokenize cuts the left)


# ---------------------------------------------------------------- chat

def test_chat_prompt_and_tokens_match_the_rendered_conversation(smol_tokenizer):
    record = {"id": "c1", "instruction": "Name a primary color.", "input": "Not green.", "output": "Red."}
    prompt, response = render(record, "chat", tokenizer=smol_tokenizer)
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\nName a primary color.\n\nNot green.<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert response == "Red."
    full = smol_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a primary color.\n\nNot green."},
         {"role": "assistant", "content": "Red."}], tokenize=False)
    assert full == prompt + response + "<|im_end|>\n"
    example = encode(prompt, response, smol_tokenizer, max_length=512)
    expected = smol_tokenizer(prompt + response + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert example.input_ids.tolist() == expected
    assert example.input_ids[-1] == smol_tokenizer.eos_token_id == smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    n_response = len(smol_tokenizer("Red.", add_special_tokens=False)["input_ids"])
    assert example.n_trainable == n_response + 1


def test_chat_end_of_turn_marker_that_is_not_eos(smol_tokenizer):
    import copy

    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                               "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>assistant\n"
                               "{% endif %}")
    prompt, response = render({"instruction": "Hi", "input": "", "output": "Hello"}, "chat", tokenizer=tokenizer)
    assert prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>assistant\n"
    assert response == "Hello<end_of_turn>"


# ---------------------------------------------------------------- llmft data format

def write_prepared(folder, raw_dir) -> list[dict]:
    records = [dict(id=f"alpaca/{i}", source="alpaca", task="alpaca", instruction=r["instruction"],
                    input=r["input"], output=r["output"], references=[r["output"]], meta={})
               for i, r in enumerate(alpaca_records(raw_dir)[:5])]
    folder.mkdir()
    for split, rows in (("train", records[:3]), ("dev", records[3:4]), ("test", records[4:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return records


def test_data_format_writes_loadable_prompt_completion_jsonl(tmp_path, raw_dir):
    import datasets

    from llmft.cli import main

    records = write_prepared(tmp_path / "data", raw_dir)
    assert main(["data", "format", str(tmp_path / "data"), "--template", "alpaca", "--out",
                 str(tmp_path / "fmt")]) == 0
    assert sorted(p.name for p in (tmp_path / "fmt").iterdir()) == [".llmft.json", "dev.jsonl", "format.json",
                                                                     "test.jsonl", "train.jsonl"]   # + the marker
    ds = datasets.load_dataset("json", data_files={s: str(tmp_path / "fmt" / f"{s}.jsonl")
                                                    for s in ("train", "dev", "test")},
                               cache_dir=str(tmp_path / "hf"))
    assert {s: ds[s].num_rows for s in ds} == {"train": 3, "dev": 1, "test": 1}
    assert ds["train"].column_names == ["prompt", "completion"]
    assert ds["train"][0] == dict(zip(("prompt", "completion"), render(records[0], "alpaca")))
    assert ds["test"][0]["completion"] == records[4]["output"]
    meta = json.loads((tmp_path / "fmt" / "format.json").read_text())
    assert meta["counts"] == {"train": 3, "dev": 1, "test": 1} and meta["template"] == "alpaca"


def test_data_format_errors_name_file_and_record(tmp_path, raw_dir):
    from llmft.cli.data_format import format_folder

    write_prepared(tmp_path / "data", raw_dir)
    with open(tmp_path / "data" / "dev.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "broken", "instruction": "x", "input": ""}) + "\n")
    with pytest.raises(InputFormatError, match=r"dev\.jsonl: record 2: record 'broken': field 'output' is missing"):
        format_folder(tmp_path / "data", tmp_path / "fmt", "alpaca")
    assert not (tmp_path / "fmt").exists()  # nothing half-written
    with pytest.raises(LlmftError, match="needs --model"):
        format_folder(tmp_path / "data", tmp_path / "fmt", "chat")
    with pytest.raises(LlmftError, match="no train.jsonl, dev.jsonl or test.jsonl"):
        format_folder(tmp_path, tmp_path / "fmt", "alpaca")


def test_data_format_superni_and_chat_with_a_model_folder(tmp_path, raw_dir, smol_tokenizer):
    from llmft.cli import main

    data = tmp_path / "data"
    data.mkdir()
    record = ni_record(raw_dir, "task1319_country_by_barcode_prefix", 0)
    (data / "test.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert main(["data", "format", str(data), "--template", "superni", "--k-positive", "2",
                 "--out", str(tmp_path / "ni")]) == 0
    row = json.loads((tmp_path / "ni" / "test.jsonl").read_text(encoding="utf-8"))
    assert row == {"prompt": render(record, "superni", k_positive=2)[0], "completion": "030"}
    assert sorted(p.name for p in (tmp_path / "ni").iterdir()) == [".llmft.json", "format.json", "test.jsonl"]

    from tiny_models import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", smol_tokenizer)
    assert main(["data", "format", str(data), "--template", "chat", "--model", str(model_dir),
                 "--out", str(tmp_path / "chat")]) == 0
    row = json.loads((tmp_path / "chat" / "test.jsonl").read_text(encoding="utf-8"))
    assert row["prompt"].startswith("<|im_start|>system\n")
    assert row["prompt"].endswith("\n\nUnited States drugs<|im_end|>\n<|im_start|>assistant\n")
    assert row["completion"] == "030"
