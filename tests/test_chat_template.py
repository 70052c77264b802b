"""The training prompt formats as chat templates: apply_chat_template reproduces data.prompts.render() exactly, and
`llmft merge` ships them (with the end token and a model card) in the merged folder."""
import copy
import json

import pytest
import yaml

from llmft.data.prompts import render
from llmft.evaluation.chat_template import end_token_ids, training_chat_template
from llmft.evaluation.merge import merge_run
from run_factory import RECORDS, make_run

EXTRA = [
    {"id": "x/punct", "instruction": "  Say hi  ", "input": "  no punctuation at the end  ", "output": "hi",
     "meta": {"positive_examples": [{"input": "a", "output": "b?"}, {"input": "it's \"quoted\"\\", "output": 3}]}},
    {"id": "x/ends", "instruction": "Already ends with a full stop.", "input": "Question?", "output": "Yes.",
     "meta": {"definitions": ["Definition from the task file"],
              "positive_examples": [{"input": "", "output": ""}]}},
    {"id": "x/multiline", "instruction": "Line one\nline two", "input": "x\ny", "output": "z", "meta": {}},
]
ALL = RECORDS + EXTRA


@pytest.fixture
def tokenizer(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def user_message(record: dict, template: str, k_positive: int = 0, shape: str = "key") -> dict:
    """How a record maps onto a user message (the convention documented in evaluation/chat_template.py)."""
    from llmft.data.prompts import superni_definition

    instruction = superni_definition(record) if template == "superni" else record["instruction"]
    if shape == "parts":
        message = {"role": "user", "content": [{"type": "text", "text": instruction},
                                               {"type": "text", "text": record["input"]}]}
    else:
        message = {"role": "user", "content": instruction, "input": record["input"]}
    if k_positive:
        message["positive_examples"] = record["meta"].get("positive_examples", [])[:k_positive]
    return message


@pytest.mark.parametrize("template,k_positive", [("alpaca", 0), ("superni", 0), ("superni", 2)])
@pytest.mark.parametrize("shape", ["key", "parts"])
def test_template_reproduces_render(tokenizer, template, k_positive, shape):
    tokenizer.chat_template = training_chat_template(template, tokenizer)
    for record in ALL:
        prompt, response = render(record, template, k_positive=k_positive)
        message = user_message(record, template, k_positive, shape)
        assert tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True) == prompt
        full = tokenizer.apply_chat_template([message, {"role": "assistant", "content": response}], tokenize=False)
        assert full == prompt + response + tokenizer.eos_token      # the sequence training learned


def test_plain_instruction_without_input(tokenizer):
    tokenizer.chat_template = training_chat_template("alpaca", tokenizer)
    got = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                        add_generation_prompt=True)
    assert got == render({"instruction": "Name a colour.", "input": "", "output": "red"}, "alpaca")[0]
    assert got.endswith("### Instruction:\nName a colour.\n\n### Response:")


def test_system_message_is_refused(tokenizer):
    from jinja2.exceptions import TemplateError

    tokenizer.chat_template = training_chat_template("superni", tokenizer)
    with pytest.raises(TemplateError, match="superni prompt format has no 'system' role"):
        tokenizer.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}],
                                      tokenize=False)


def test_chat_template_kept_and_input_joined(tokenizer):
    assert training_chat_template("chat", tokenizer) == tokenizer.chat_template
    for record in ALL:
        prompt, _ = render(record, "chat", tokenizer=tokenizer)
        user = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
        assert tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True) == prompt


def test_end_tokens_include_a_turn_marker_that_is_not_eos(tokenizer):
    assert end_token_ids("alpaca", tokenizer) == [tokenizer.eos_token_id]
    assert end_token_ids("chat", tokenizer) == [tokenizer.eos_token_id]      # ChatML ends a turn with EOS itself
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "{% if m['role'] == 'assistant' %}<file_sep>{% endif %}\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert end_token_ids("chat", tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<file_sep>")]


# ---------------------------------------------------------------- llmft merge ships it

def _card_header(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


@pytest.mark.parametrize("template", ["alpaca", "superni"])
def test_merged_folder_prompts_like_training(tmp_path, smol_tokenizer, template):
    from transformers import AutoTokenizer

    run = make_run(tmp_path, smol_tokenizer, template=template)
    (run / "eval.json").write_text(json.dumps({"base": {"exact_match": 0.0, "rouge_l": 10.5, "loss": 3.2},
                                               "tuned": {"exact_match": 40.0, "rouge_l": 55.25, "loss": 1.5}}))
    merged = merge_run(run, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    for record in RECORDS:
        prompt, _ = render(record, template)
        assert tokenizer.apply_chat_template([user_message(record, template)], tokenize=False,
                                             add_generation_prompt=True) == prompt
    generation = json.loads((merged / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    meta, text = _card_header(merged)
    assert meta["library_name"] == "transformers"
    assert "base_model" not in meta                     # a local folder is no Hub id
    assert f"{template}-template" in meta["tags"] and "llmft" in meta["tags"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"exact_match": 40.0, "rouge_l": 55.25, "loss": 1.5}
    assert "| tuned | 40 | 55.25 | 1.5 |" in text


def test_model_card_names_hub_base_model_and_datasets(tmp_path, smol_tokenizer):
    from llmft.evaluation.model_card import card_metadata

    run = make_run(tmp_path, smol_tokenizer)
    data = tmp_path / "data"
    (data / "manifest.json").write_text(json.dumps({"counts": {"by_source": {"alpaca": 3, "natural-instructions": 2}}}))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "model": "smollm2-135m"}))
    meta = card_metadata(run, {"template": "alpaca", "method": "lora"}, "m")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["tatsu-lab/alpaca", "Muennighoff/natural-instructions"]
    assert "model-index" not in meta                    # no eval.json: no results claimed
