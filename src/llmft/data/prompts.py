"""Render a record as (prompt, response) text under one of the prompt templates.

- `alpaca`: Stanford Alpaca's PROMPT_DICT, character for character (tatsu-lab/stanford_alpaca train.py). Upstream the
  prompt ends in "### Response:" with no newline and the target follows directly.
- `superni`: the Tk-Instruct source encoding (yizhongw/Tk-Instruct src/ni_collator.py, DataCollatorForNI with the
  definition and k positive examples, no task name, no negative examples, no explanations). One deliberate
  difference: where Tk-Instruct cuts the whole source from the end, a prompt over `max_prompt_tokens` here drops
  positive examples first, then shortens the definition, and never cuts the "Now complete the following example" tail.
- `chat`: the tokenizer's chat template; the prompt ends with the generation prompt and the response is the
  assistant content, so prompt + response + EOS is the rendered conversation (plus any end-of-turn marker). A
  conversation (a record with `messages`) renders here as its last assistant turn after everything before it, from
  the rendering of the whole conversation (data/conversation.py); training learns every assistant turn instead.
- Under alpaca/superni a conversation is its single-turn view (first user turn -> last assistant turn).
- Rows that already are `{"prompt", "completion"}` pass through unchanged under every template.
"""
from __future__ import annotations

import string

from llmft.data.conversation import conversation_prompt, is_conversation, with_single_turn_view
from llmft.errors import LlmftError

TEMPLATES = ("alpaca", "superni", "chat")

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def render(record: dict, template: str, *, tokenizer=None, k_positive: int = 0,
           max_prompt_tokens: int | None = None) -> tuple[str, str]:
    """(prompt, response) for one record dict (a `Record.to_dict()` or a `{prompt, completion}` row)."""
    if "prompt" in record and "completion" in record:
        return _text(record, "prompt"), _text(record, "completion")
    if template == "chat" and is_conversation(record):
        if tokenizer is None:
            raise LlmftError("the chat template needs a tokenizer (give --model)")
        return conversation_prompt(record["messages"], tokenizer, record_id=record.get("id"))
    record = with_single_turn_view(record)
    if template == "alpaca":
        return render_alpaca(record)
    if template == "superni":
        return render_superni(record, k_positive=k_positive, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens)
    if template == "chat":
        if tokenizer is None:
            raise LlmftError("the chat template needs a tokenizer (give --model)")
        return render_chat(record, tokenizer)
    raise LlmftError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        where = f"record {record['id']!r}" if "id" in record else "record"
        what = "missing" if value is None else f"not a string ({type(value).__name__})"
        raise LlmftError(f"{where}: field '{key}' is {what}")
    return value


# ---------------------------------------------------------------- alpaca

def render_alpaca(record: dict) -> tuple[str, str]:
    instruction, input_, output = _text(record, "instruction"), record.get("input") or "", _text(record, "output")
    if input_ != "":
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_), output
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction), output


# ---------------------------------------------------------------- superni (Tk-Instruct)

def _full_stop(text: str) -> str:
    """Tk-Instruct adds a full stop to a field that does not already end in ASCII punctuation."""
    return text if text and text[-1] in string.punctuation else text + "."


def superni_definition(record: dict) -> str:
    """The task definition: the first string of `meta.definitions` (natural-instructions records keep the task's
    Definition list there), else the instruction (every other source)."""
    definitions = (record.get("meta") or {}).get("definitions")
    if isinstance(definitions, list) and definitions and isinstance(definitions[0], str):
        return definitions[0]
    return _text(record, "instruction")


def superni_definition_block(definition: str) -> str:
    return _full_stop("Definition: " + definition.strip()) + "\n\n"


def superni_task_input(input_text: str) -> str:
    return "Now complete the following example -\n" + _full_stop(f"Input: {input_text.strip()}") + "\nOutput: "


def superni_positive_example(index: int, example: dict) -> str:
    """` Positive Example i -` block, whitespace as Tk-Instruct writes it (leading spaces included)."""
    text = f" Positive Example {index} -\n"
    text += _full_stop(f"Input: {str(example.get('input', '')).strip()}") + "\n"
    text += _full_stop(f" Output: {str(example.get('output', '')).strip()}") + "\n"
    return text + "\n"


def render_superni(record: dict, *, k_positive: int = 0, tokenizer=None,
                   max_prompt_tokens: int | None = None) -> tuple[str, str]:
    definition = superni_definition(record)
    tail = superni_task_input(record.get("input") or "")
    positives = (record.get("meta") or {}).get("positive_examples") or []
    blocks = [superni_positive_example(i + 1, ex) for i, ex in enumerate(positives[:k_positive])]
    output = _text(record, "output")
    if max_prompt_tokens is None or tokenizer is None:
        return superni_definition_block(definition) + "".join(blocks) + tail, output
    return _fit_superni(definition, blocks, tail, tokenizer, max_prompt_tokens), output


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fit_superni(definition: str, blocks: list[str], tail: str, tokenizer, budget: int) -> str:
    """Add positive examples only while they fit (as Tk-Instruct does), then shorten the definition from its end
    until the prompt fits; the task input tail is kept whole."""
    head = superni_definition_block(definition)
    kept: list[str] = []
    for block in blocks:
        if _count(tokenizer, head + "".join(kept) + block + tail) > budget:
            break
        kept.append(block)
    prompt = head + "".join(kept) + tail
    if kept or _count(tokenizer, prompt) <= budget:
        return prompt
    return _shorten_definition(definition, tail, tokenizer, budget)


def _shorten_definition(definition: str, tail: str, tokenizer, budget: int) -> str:
    ids = tokenizer(definition.strip(), add_special_tokens=False)["input_ids"]
    keep = len(ids)
    overflow = _count(tokenizer, superni_definition_block(definition) + tail) - budget
    while keep > 0:
        keep = max(0, keep - overflow)  # overflow >= 1 here, so this always shrinks
        text = tokenizer.decode(ids[:keep], skip_special_tokens=True).strip()
        if not text:
            break
        prompt = superni_definition_block(text) + tail
        overflow = _count(tokenizer, prompt) - budget
        if overflow <= 0:
            return prompt
    return tail  # not even a shortened definition fits: the tail alone (tokenize cuts it from the left)


# ---------------------------------------------------------------- chat

def chat_messages(record: dict) -> list[dict]:
    user = _text(record, "instruction")
    if record.get("input"):
        user += "\n\n" + record["input"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record, "output")}]


def render_chat(record: dict, tokenizer) -> tuple[str, str]:
    """Prompt = the conversation up to the assistant turn's generation prompt; response = the assistant content,
    plus the template's end-of-turn marker when that marker is not the EOS token (the tokenizer step appends EOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise LlmftError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; use --template alpaca or superni")
    messages = chat_messages(record)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    response = messages[1]["content"]
    if not full.startswith(prompt + response):
        raise LlmftError(
            f"record {record.get('id', '?')!r}: the chat template of {tokenizer.name_or_path!r} does not render the "
            "conversation as generation prompt + assistant content; use --template alpaca or superni")
    return prompt, response + _turn_end_marker(full[len(prompt + response):], tokenizer.eos_token)


def _turn_end_marker(suffix: str, eos_token: str | None) -> str:
    """What the template writes after the assistant content, when it is not simply EOS (e.g. Gemma's
    `<end_of_turn>`); trailing whitespace after the marker is left to the next turn."""
    suffix = suffix.rstrip()
    if not suffix or (eos_token and suffix.startswith(eos_token)):
        return ""
    if eos_token and suffix.endswith(eos_token):
        suffix = suffix[: -len(eos_token)]
    return suffix
