"""The training prompt format as a Jinja chat template, so a merged or exported model prompts itself the way it was
trained: `tokenizer.apply_chat_template([{"role": "user", "content": INSTRUCTION}], add_generation_prompt=True)`
returns exactly `data.prompts.render(record, template)[0]`.

How a record maps onto messages (alpaca and superni):
- the user message's content is the instruction (superni: the task definition, `meta.definitions[0]` when the
  record has one); the input goes in the message's `"input"` key, or in a second text part when the content is a
  list of parts (`[{"type": "text", "text": INSTRUCTION}, {"type": "text", "text": INPUT}]`);
- superni only: the message's `"positive_examples"` key (`[{"input", "output"}, ...]`) gives the k positive
  examples a `k_positive > 0` run was trained with;
- an assistant message renders as the generation prompt, its content and EOS: prompt + response + EOS, the
  sequence training saw. A later user turn starts a new prompt block (the formats are single-turn; nothing else
  was trained). A system message is refused (raise_exception): neither format has a place for one.
- `chat`: the tokenizer's own template is already the training format and is kept; the user content is the
  instruction, a blank line and the input (`prompts.chat_messages`).
What a template cannot redo: superni's shortening of an over-long prompt by the tokenizer (`max_prompt_tokens`).

Every piece of text is emitted from a `{{ '...' }}` literal and every tag strips the whitespace around it, so the
output is the same under any engine's trim_blocks / lstrip_blocks settings (transformers, llama.cpp, jinja2).
"""
from __future__ import annotations

import string

from llmft.data.prompts import ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, render_chat
from llmft.errors import LlmftError

RESPONSE_MARK = "### Response:"    # Alpaca's generation prompt: the prompt's last line
SUPERNI_OUTPUT_MARK = "Output: "   # Tk-Instruct's generation prompt


def _lit(text: str) -> str:
    """A Jinja string literal for `text`."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def _out(text: str) -> str:
    return "{{ " + _lit(text) + " }}"


# The instruction and the input of the current user message, whatever shape it has.
_USER_FIELDS = (
    "{%- set ns.instruction = '' -%}{%- set ns.input = '' -%}"
    "{%- if message['content'] is string -%}{%- set ns.instruction = message['content'] -%}"
    "{%- else -%}{%- set ns.parts = 0 -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}"
    "{%- if ns.parts == 0 -%}{%- set ns.instruction = part['text'] -%}"
    "{%- elif ns.parts == 1 -%}{%- set ns.input = part['text'] -%}{%- endif -%}"
    "{%- set ns.parts = ns.parts + 1 -%}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if message['input'] is defined and message['input'] -%}{%- set ns.input = message['input'] -%}{%- endif -%}"
)


def _conversation(user_block: str, generation_prompt: str, template: str) -> str:
    """The loop shared by alpaca and superni: user -> its prompt block, assistant -> generation prompt + content +
    EOS, and the generation prompt at the end when asked for."""
    return (
        "{%- set ns = namespace(instruction='', input='', parts=0, text='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}" + _USER_FIELDS + user_block +
        "{%- elif message['role'] == 'assistant' -%}"
        + _out(generation_prompt) + "{{ message['content'] }}{{ eos_token }}"
        "{%- else -%}{{ raise_exception(" + _lit(f"the {template} prompt format has no '") + " ~ message['role'] ~ "
        + _lit("' role; put it into the user message") + ") }}"
        "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + _out(generation_prompt) + "{%- endif -%}"
    )


def _split(template: str, field: str) -> tuple[str, str]:
    head, tail = template.split("{" + field + "}")
    return head, tail


def alpaca_chat_template() -> str:
    """Stanford Alpaca's two prompts (with and without input), cut from `prompts.ALPACA_PROMPT_*` themselves."""
    head_input, rest = _split(ALPACA_PROMPT_INPUT, "instruction")
    between, tail_input = _split(rest, "input")
    head_plain, tail_plain = _split(ALPACA_PROMPT_NO_INPUT, "instruction")
    if not (tail_input.endswith(RESPONSE_MARK) and tail_plain.endswith(RESPONSE_MARK)):
        raise AssertionError("the Alpaca prompts no longer end in '### Response:'")
    block = (
        "{%- if ns.input -%}" + _out(head_input) + "{{ ns.instruction }}" + _out(between) + "{{ ns.input }}"
        + _out(tail_input[: -len(RESPONSE_MARK)])
        + "{%- else -%}" + _out(head_plain) + "{{ ns.instruction }}" + _out(tail_plain[: -len(RESPONSE_MARK)])
        + "{%- endif -%}"
    )
    return _conversation(block, RESPONSE_MARK, "alpaca")


def _full_stop(expression_var: str) -> str:
    """Tk-Instruct's rule (prompts._full_stop): a full stop after text that does not end in ASCII punctuation."""
    punctuation = _lit(string.punctuation)
    return ("{{ " + expression_var + " }}{%- if not " + expression_var + " or " + expression_var + "["
            + expression_var + "|length - 1] not in " + punctuation + " -%}" + _out(".") + "{%- endif -%}")


def superni_chat_template() -> str:
    """The Tk-Instruct encoding of `prompts.render_superni`: definition, positive examples, the task input."""
    block = (
        "{%- set ns.text = 'Definition: ' ~ (ns.instruction | trim) -%}" + _full_stop("ns.text") + _out("\n\n")
        + "{%- if message['positive_examples'] is defined and message['positive_examples'] -%}"
        "{%- for example in message['positive_examples'] -%}"
        + _out(" Positive Example ") + "{{ loop.index }}" + _out(" -\n")
        + "{%- set ns.text = 'Input: ' ~ (example['input'] | string | trim) -%}" + _full_stop("ns.text") + _out("\n")
        + "{%- set ns.text = ' Output: ' ~ (example['output'] | string | trim) -%}" + _full_stop("ns.text")
        + _out("\n\n") + "{%- endfor -%}{%- endif -%}"
        + _out("Now complete the following example -\n")
        + "{%- set ns.text = 'Input: ' ~ (ns.input | trim) -%}" + _full_stop("ns.text") + _out("\n")
    )
    return _conversation(block, SUPERNI_OUTPUT_MARK, "superni")


def training_chat_template(template: str, tokenizer) -> str:
    """The chat template that reproduces `template`'s prompts (the tokenizer's own one for `chat`)."""
    if template == "alpaca":
        return alpaca_chat_template()
    if template == "superni":
        return superni_chat_template()
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise LlmftError("the run was trained with the chat template, but its tokenizer has none")
        return tokenizer.chat_template
    raise LlmftError(f"unknown template {template!r}; expected alpaca, superni or chat")


def end_token_ids(template: str, tokenizer) -> list[int]:
    """The token ids the trained model ends a response with: EOS, and for a chat template whose turn ends in its
    own marker (Gemma's `<end_of_turn>`) that marker's id as well, so generation stops at either."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if template == "chat":
        _, response = render_chat({"instruction": "x", "output": "y"}, tokenizer)
        marker = response[1:].strip()
        marker_id = tokenizer.convert_tokens_to_ids(marker) if marker else None
        if marker_id is not None and marker_id != tokenizer.unk_token_id and marker_id not in ids:
            ids.append(marker_id)
    if not ids:
        raise LlmftError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token: nothing would end a response")
    return ids
