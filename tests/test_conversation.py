"""Conversations under --template chat: the trained spans come from the chat template's rendering of the whole
conversation and hold exactly the assistant contents plus their end-of-turn marker; train_on; truncation; training,
packing and `llmft data inspect` on them."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmft.cli import main
from llmft.data.conversation import message_problems, render_conversation
from llmft.data.prompts import render
from llmft.errors import InputFormatError, LlmftError
from llmft.training.tokenize import IGNORE_INDEX, encode_conversation, encode_record, tokenize_records

SYSTEM = {"role": "system", "content": "You answer in one short line."}
TWO_TURNS = [
    {"role": "user", "content": "Is the sky blue? Yes or no."},
    {"role": "assistant", "content": "Yes"},
    {"role": "user", "content": "And grass?"},
    {"role": "assistant", "content": "Green, mostly."},
]
THREE_TURNS = TWO_TURNS + [
    {"role": "user", "content": "Count to three."},
    {"role": "assistant", "content": "1, 2, 3.\nDone!"},
]
CONVERSATIONS = {
    "two_turns_no_system": TWO_TURNS,
    "two_turns_system": [SYSTEM] + TWO_TURNS,
    "three_turns_no_system": THREE_TURNS,
    "three_turns_system": [SYSTEM] + THREE_TURNS,
}


def trained_runs(example, tokenizer) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids.tolist(), example.labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r, skip_special_tokens=False) for r in runs]


def assistant_contents(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_trained_spans_are_the_assistant_turns_of_the_whole_rendering(name, smol_tokenizer):
    messages = CONVERSATIONS[name]
    full = smol_tokenizer.apply_chat_template(messages, tokenize=False)
    rendered = render_conversation(messages, smol_tokenizer)
    assert rendered.text == full
    assert [full[s:e] for s, e in rendered.turns] == [c + "<|im_end|>" for c in assistant_contents(messages)]
    example, cuts = encode_conversation({"messages": messages}, smol_tokenizer, max_length=512)
    assert cuts == (False, False)
    assert smol_tokenizer.decode(example.input_ids.tolist(), skip_special_tokens=False) == full
    assert example.input_ids.tolist() == smol_tokenizer(full, add_special_tokens=False)["input_ids"]
    assert trained_runs(example, smol_tokenizer) == [c + "<|im_end|>" for c in assistant_contents(messages)]
    # the system prompt is in the text (the given one, or the template's default) and never learned
    system = messages[0]["content"] if messages[0]["role"] == "system" else "You are a helpful AI assistant"
    assert system in full and all(system not in run for run in trained_runs(example, smol_tokenizer))


def test_last_assistant_only(smol_tokenizer):
    messages = [SYSTEM] + THREE_TURNS
    example, _ = encode_conversation({"messages": messages}, smol_tokenizer, 512, train_on="last_assistant")
    assert trained_runs(example, smol_tokenizer) == ["1, 2, 3.\nDone!<|im_end|>"]
    with pytest.raises(LlmftError, match="train_on must be one of"):
        encode_conversation({"messages": messages}, smol_tokenizer, 512, train_on="everything")


def test_end_of_turn_marker_that_is_not_eos_and_trimmed_content(smol_tokenizer):
    """A Gemma-like template whose end-of-turn marker is several plain tokens, trimming the content it writes."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
                               "m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
                               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  Hello there \n"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    example, _ = encode_conversation({"messages": messages}, tokenizer, 512)
    assert trained_runs(example, tokenizer) == ["Hello there<end_of_turn>", "Bye!<end_of_turn>"]
    prompt, response = render({"messages": messages}, "chat", tokenizer=tokenizer)
    assert prompt.endswith("<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert response == "Bye!<end_of_turn>"


def test_template_that_rewrites_earlier_turns_is_searched_in_order(smol_tokenizer):
    """The last user turn is written differently, so a prefix rendering is not a prefix of the whole: the turns are
    found in order, and an answer that also occurs in the user turn before it is taken from the assistant turn."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                               "{% if loop.last and m['role'] == 'user' %} (answer now){% endif %}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    example, _ = encode_conversation({"messages": TWO_TURNS}, tokenizer, 512)
    assert trained_runs(example, tokenizer) == ["Yes<|im_end|>", "Green, mostly.<|im_end|>"]


def test_no_end_of_turn_marker_learns_eos_at_the_end(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    rendered = render_conversation(TWO_TURNS, tokenizer)
    assert rendered.text.endswith("assistant: Green, mostly.<|im_end|>\n")
    example, _ = encode_conversation({"messages": TWO_TURNS}, tokenizer, 512)
    # "assistant: Yes" tokenizes as ..., ":", " Yes": a token that straddles the start of a turn is learned whole
    assert trained_runs(example, tokenizer) == [" Yes", " Green, mostly.<|im_end|>"]


def test_truncation_keeps_the_end_of_the_context_and_cuts_answers_from_the_right(smol_tokenizer):
    messages = [SYSTEM] + THREE_TURNS
    whole, _ = encode_conversation({"messages": messages}, smol_tokenizer, 512)
    first = int((whole.labels != IGNORE_INDEX).argmax())
    example, cuts = encode_conversation({"messages": messages}, smol_tokenizer, first)
    assert cuts == (True, True) and len(example) == first
    head = first // 2   # the context keeps half the room, from its right end; the rest is the first answer
    assert example.input_ids[:head].tolist() == whole.input_ids[first - head:first].tolist()
    assert example.input_ids[head:].tolist() == whole.input_ids[first:first + first - head].tolist()
    assert example.labels[head:].tolist() == whole.labels[first:first + first - head].tolist()
    assert (example.labels[:head] == IGNORE_INDEX).all() and example.labels[head] != IGNORE_INDEX


def test_bad_conversations_are_named(smol_tokenizer):
    assert message_problems([{"role": "user", "content": "a"}]) == ["turn 1: no assistant turn"]
    assert message_problems(TWO_TURNS[:3]) == ["turn 3: last turn is not the assistant's"]
    assert message_problems([]) == message_problems("a") == [
        "'messages' must be a non-empty list of {role, content} turns"]
    assert message_problems([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]) == [
        "turn 2: unknown role 'bot' (expected system, user or assistant)"]
    assert message_problems([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                             {"role": "assistant", "content": "c"}]) == ["turn 2: system turn not first"]
    with pytest.raises(LlmftError, match="record 'c1': turn 2: turns do not alternate"):
        render_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                             {"role": "assistant", "content": "c"}], smol_tokenizer, record_id="c1")


def test_training_rows_accept_messages_and_name_bad_ones(tmp_path):
    from llmft.training.data import read_rows

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"messages": TWO_TURNS}) + "\n" + json.dumps({"instruction": "a", "output": "b"})
                    + "\n", encoding="utf-8")
    assert len(read_rows(good)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": TWO_TURNS}) + "\n" + json.dumps({"messages": TWO_TURNS[:3]}) + "\n",
                   encoding="utf-8")
    with pytest.raises(InputFormatError, match=r"(?s)bad.jsonl.*line 2: messages: turn 3: last turn is not the"):
        read_rows(bad)


def test_tokenize_records_mixes_conversations_and_single_turn_rows(tmp_path, smol_tokenizer):
    rows = [{"id": "c", "messages": [SYSTEM] + THREE_TURNS},
            {"id": "s", "instruction": "Name a color.", "input": "", "output": "Red."}]
    examples, report = tokenize_records(rows, smol_tokenizer, template="chat", max_length=512, cache_dir=tmp_path)
    assert trained_runs(examples[0], smol_tokenizer) == [c + "<|im_end|>" for c in assistant_contents(THREE_TURNS)]
    single, _ = encode_record(rows[1], smol_tokenizer, template="chat", max_length=512)
    assert examples[1].input_ids.tolist() == single.input_ids.tolist()   # single-turn rows as before
    assert trained_runs(examples[1], smol_tokenizer) == ["Red.<|im_end|>"]
    last, last_report = tokenize_records(rows, smol_tokenizer, template="chat", max_length=512,
                                         train_on="last_assistant", cache_dir=tmp_path)
    assert last_report.cache_key != report.cache_key and not last_report.cache_hit
    assert last[0].n_trainable < examples[0].n_trainable
    again, again_report = tokenize_records(rows, smol_tokenizer, template="chat", max_length=512, cache_dir=tmp_path)
    assert again_report.cache_hit and [e.labels.tolist() for e in again] == [e.labels.tolist() for e in examples]


def test_conversation_single_turn_view_under_other_templates(smol_tokenizer):
    prompt, response = render({"messages": [SYSTEM] + THREE_TURNS}, "alpaca")
    assert "### Instruction:\nIs the sky blue? Yes or no.\n\n### Response:" in prompt
    assert response == "1, 2, 3.\nDone!"
    prompt, response = render({"messages": [SYSTEM] + THREE_TURNS}, "chat", tokenizer=smol_tokenizer)
    full = smol_tokenizer.apply_chat_template([SYSTEM] + THREE_TURNS, tokenize=False)
    assert prompt == smol_tokenizer.apply_chat_template([SYSTEM] + THREE_TURNS[:-1], tokenize=False,
                                                        add_generation_prompt=True)
    assert response == "1, 2, 3.\nDone!" and full == prompt + response + "<|im_end|>\n"


# ---------------------------------------------------------------- training and inspect

def write_conversations(path: Path, n: int = 12) -> Path:
    keys = sorted(CONVERSATIONS)
    rows = [{"id": f"c/{i}", "messages": CONVERSATIONS[keys[i % len(keys)]]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_inspect_json_and_terminal_marks(tmp_path, smol_tokenizer, capsys):
    model = tmp_path / "tok"
    smol_tokenizer.save_pretrained(model)
    data = write_conversations(tmp_path / "conv.jsonl", 4)
    assert main(["data", "inspect", str(data), "--template", "chat", "--model", str(model), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = sorted(CONVERSATIONS)
    assert len(lines) == 4
    for i, line in enumerate(lines):
        messages = CONVERSATIONS[keys[i]]
        assert line["text"] == smol_tokenizer.apply_chat_template(messages, tokenize=False)
        assert line["trained"] == [c + "<|im_end|>" for c in assistant_contents(messages)]
    assert main(["data", "inspect", str(data), "--template", "chat", "--model", str(model), "-n", "1",
                 "--train-on", "last_assistant"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\nYes<|im_end|>" in out and "[[1, 2, 3.\nDone!<|im_end|>]]" in out
    assert "[[Yes" not in out
    assert out.count("--- example") == 1
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "train.jsonl").write_text(data.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["data", "inspect", str(folder), "--template", "chat", "--model", str(model), "-n", "2",
                 "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["data", "inspect", str(tmp_path / "none.jsonl"), "--template", "chat", "--model", str(model)]) == 2


def test_train_on_conversations_with_packing_on_a_tiny_model(tmp_path, smol_tokenizer, monkeypatch):
    from llmft.config import TrainConfig
    from llmft.training.trainer import train
    from tiny_models import save_tiny_model

    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    base = save_tiny_model(tmp_path / "base", smol_tokenizer, "llama")
    data = write_conversations(tmp_path / "conv.jsonl", 20)
    run = tmp_path / "run"
    summary = train(TrainConfig(data=str(data), out=str(run), model=str(base), template="chat", max_steps=2,
                                batch_tokens=512, max_length=256, lora_r=4, lora_alpha=8, eval_every=0,
                                save_every=0, bf16="false", train_on="last_assistant"))
    assert summary["steps"] == 2
    manifest = json.loads((run / "manifest.json").read_text())
    tokenized = manifest["tokenize"]["train"]
    assert tokenized["kept"] == 19 and tokenized["truncated"] == 0
    assert json.loads((run / "template.json").read_text())["train_on"] == "last_assistant"
    held = json.loads((run / "heldout.json").read_text())
    assert len(held["rows"]) == 1 and held["file"] == str(data.resolve())


def test_resume_on_conversations_equals_one_uninterrupted_run(tmp_path, smol_tokenizer, monkeypatch):
    from llmft.config import TrainConfig
    from llmft.training.trainer import train
    from tiny_models import save_tiny_model

    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    base = save_tiny_model(tmp_path / "base", smol_tokenizer, "llama")
    data = write_conversations(tmp_path / "conv.jsonl", 20)

    def cfg(out, **kw):
        return TrainConfig(data=str(data), out=str(tmp_path / out), model=str(base), template="chat", max_steps=4,
                           batch_tokens=256, max_length=128, lora_r=4, lora_alpha=8, eval_every=2, save_every=2,
                           bf16="false", lr=1e-3, **kw)

    train(cfg("whole"))
    assert train(cfg("parted"), stop_after=2) is None
    summary = train(cfg("parted", resume=True))
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4
    rows = [[{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
             for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()] for name in ("whole", "parted")]
    assert rows[0] == rows[1] and any("dev_loss" in r for r in rows[0])


@pytest.mark.slow
def test_conversations_train_and_inspect_on_the_embedded_model(tmp_path, capsys):
    """A few LoRA steps on conversations with SmolLM2-135M-Instruct, then `inspect --json` with its own chat
    template: every example's trained spans are its assistant turns plus <|im_end|>, and nothing else."""
    from llmft.config import TrainConfig
    from llmft.training.trainer import train

    data = write_conversations(tmp_path / "conv.jsonl", 24)
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), template="chat", max_steps=3,
                                batch_tokens=1024, max_length=256, eval_every=0, save_every=0, dev_limit=4))
    assert summary["steps"] == 3
    tokenized = json.loads((tmp_path / "run" / "manifest.json").read_text())["tokenize"]["train"]
    assert tokenized["kept"] == 23 and tokenized["dropped"] == 0
    assert main(["data", "inspect", str(data), "--template", "chat", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(rows) == 24
    for line, row in zip(lines, rows):
        assert line["trained"] == [c + "<|im_end|>" for c in assistant_contents(row["messages"])]
        assert line["text"].count("<|im_start|>assistant\n") == len(line["trained"])
    # eval defaults to the row training held out, and scores its last assistant turn
    assert main(["eval", str(tmp_path / "run"), "--no-base", "--max-new-tokens", "8"]) == 0
    [prediction] = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    held = json.loads((tmp_path / "run" / "heldout.json").read_text())["rows"]
    assert prediction["references"] == [assistant_contents(rows[held[0]]["messages"])[-1]]


MISTRAL_LIKE = (  # Mistral v0.3's shape: the system prompt goes into the LAST user turn, so prefixes are not prefixes
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + message['content']"
    " + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}")


def test_template_that_moves_the_system_prompt(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = MISTRAL_LIKE
    messages = [SYSTEM] + THREE_TURNS
    rendered = render_conversation(messages, tokenizer)
    assert [rendered.text[s:e] for s, e in rendered.turns] == [c + "<|im_end|>" for c in assistant_contents(messages)]
    example, _ = encode_conversation({"messages": messages}, tokenizer, 512)
    # "[/INST] Yes" tokenizes as ..., "]", " Yes": the template's space rides with a word's token (digits are
    # split from it, so the third answer starts clean)
    assert trained_runs(example, tokenizer) == [" Yes<|im_end|>", " Green, mostly.<|im_end|>",
                                                "1, 2, 3.\nDone!<|im_end|>"]


def test_a_template_that_refuses_a_conversation_is_named(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                               "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(LlmftError, match="record 'x': the chat template .* refuses this conversation: System role"):
        render_conversation([SYSTEM] + TWO_TURNS, tokenizer, record_id="x")


def test_spans_agree_with_the_templates_own_generation_mask(smol_tokenizer):
    """A template that marks assistant text with {% generation %}: transformers' assistant mask (an independent
    reading of the same rendering) equals the trained tokens."""
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
        "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for messages in CONVERSATIONS.values():
        hf = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        example, _ = encode_conversation({"messages": messages}, tokenizer, 512)
        assert example.input_ids.tolist() == list(hf["input_ids"])
        assert (example.labels != IGNORE_INDEX).astype(int).tolist() == list(hf["assistant_masks"])
