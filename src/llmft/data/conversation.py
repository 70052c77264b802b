"""Conversations under the model's own chat template: the whole conversation rendered once, and the character span
of every assistant turn (its content plus the end-of-turn marker the template writes after it) found in that one
rendering.

Rendering turns one by one and joining them is the best-known masking bug of chat fine-tuning (templates inject
default system prompts, dates, BOS tokens or strip earlier turns), so the text trained on is always
`apply_chat_template(all messages)`. Each assistant turn is located by rendering the conversation before it with the
generation prompt, which must be a prefix of the whole rendering; the content then has to sit right there. Only when a
template rewrites earlier turns (so a prefix rendering is not a prefix) are the turns searched for in order.
The shape rules of a conversation are data/turns.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmft.data import turns as shape
from llmft.errors import LlmftError

ROLES = (shape.SYSTEM, shape.USER, shape.ASSISTANT)
TRAIN_ON = ("all_assistant", "last_assistant")
# End-of-turn markers of common templates, used only when a prefix rendering cannot tell where a turn ends.
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def message_problems(messages) -> list[str]:
    """What is wrong with a `messages` list (empty when nothing): {role, content} turns with string content and a
    system/user/assistant role, in the shape of data/turns.py (system first if any, user and assistant alternating
    from a user turn, ending with an assistant turn, no empty turn)."""
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list of {role, content} turns"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            problems.append(f"turn {i + 1}: needs a string 'content'")
        elif m.get("role") not in ROLES:
            problems.append(f"turn {i + 1}: unknown role {m.get('role')!r} (expected system, user or assistant)")
    if problems:
        return problems
    found = shape.problem(messages)
    return [f"turn {found[1] + 1}: {found[0]}"] if found else []


def single_turn_view(messages: list[dict]) -> dict:
    """instruction = the first user turn, input = "", output = the last assistant turn."""
    first_user = next((m["content"] for m in messages if m["role"] == shape.USER), "")
    last_assistant = next((m["content"] for m in reversed(messages) if m["role"] == shape.ASSISTANT), "")
    return {"instruction": first_user, "input": "", "output": last_assistant}


def with_single_turn_view(row: dict) -> dict:
    """A plain {"messages": [...]} row filled out with the single-turn fields the other templates read."""
    if row.get("messages") and "instruction" not in row and "prompt" not in row:
        return {**single_turn_view(row["messages"]), **row}
    return row


def is_conversation(row: dict) -> bool:
    return bool(row.get("messages")) and "prompt" not in row


@dataclass
class RenderedConversation:
    text: str                          # apply_chat_template(messages), the whole conversation
    turns: list[tuple[int, int]]       # per assistant turn: [start, end) of content + end-of-turn marker in text
    content_ends: list[int]            # per assistant turn: where its content ends (the marker follows)

    def trained_spans(self, train_on: str) -> list[tuple[int, int]]:
        if train_on not in TRAIN_ON:
            raise LlmftError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
        return list(self.turns) if train_on == "all_assistant" else self.turns[-1:]


def render_conversation(messages: list[dict], tokenizer, *, record_id: str | None = None) -> RenderedConversation:
    """The whole conversation through the tokenizer's chat template, with every assistant turn's span."""
    name = getattr(tokenizer, "name_or_path", "?")
    if not getattr(tokenizer, "chat_template", None):
        raise LlmftError(f"tokenizer {name!r} has no chat template; use --template alpaca or superni")
    where = f"record {record_id!r}" if record_id is not None else "conversation"
    problems = message_problems(messages)
    if problems:
        raise LlmftError(f"{where}: " + "; ".join(problems))
    try:
        text = _apply(tokenizer, messages)
    except Exception as e:  # jinja's TemplateError and the template's own raise_exception(...)
        raise LlmftError(f"{where}: the chat template of {name!r} refuses this conversation: {e}") from None
    turns, content_ends, cursor = [], [], 0
    for i, message in enumerate(messages):
        if message["role"] != shape.ASSISTANT:
            continue
        start, end = _locate_content(tokenizer, messages, i, text, cursor)
        if start < 0:
            raise LlmftError(f"{where}: the chat template of {name!r} does not write turn {i + 1} (assistant) as "
                             "given: its content was not found in the rendered conversation")
        marker = _end_of_turn(tokenizer, messages, i, text, end)
        turns.append((start, end + len(marker)))
        content_ends.append(end)
        cursor = end + len(marker)
    eos = getattr(tokenizer, "eos_token", None)
    if turns[-1][1] == content_ends[-1] and eos:
        # The template writes nothing after the last answer: end it with EOS, so the model learns to stop.
        cut = turns[-1][1]
        text = text[:cut] + eos + text[cut:]
        turns[-1] = (turns[-1][0], cut + len(eos))
    return RenderedConversation(text, turns, content_ends)


def conversation_prompt(messages: list[dict], tokenizer, *, record_id: str | None = None) -> tuple[str, str]:
    """(the conversation up to the last assistant turn, that turn's content plus its end-of-turn marker unless the
    marker is EOS, which the tokenizing step appends): the single-turn view of prompts.render under the chat template,
    for generation, evaluation and `data format`, cut from the rendering of the whole conversation."""
    rendered = render_conversation(messages, tokenizer, record_id=record_id)
    start, end = rendered.turns[-1]
    content_end = rendered.content_ends[-1]
    marker = rendered.text[content_end:end]
    eos = getattr(tokenizer, "eos_token", None)
    response = rendered.text[start:content_end] + ("" if eos and marker.strip() == eos else marker)
    return rendered.text[:start], response


def _apply(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _content_variants(content: str) -> list[str]:
    """The content as given, then as templates that trim it write it."""
    return [v for v in dict.fromkeys([content, content.strip(), content.lstrip(), content.rstrip()]) if v]


def _locate_content(tokenizer, messages: list[dict], i: int, text: str, cursor: int) -> tuple[int, int]:
    """[start, end) of assistant turn i's content in `text`, or (-1, -1)."""
    prefix = _apply(tokenizer, messages[:i], generation_prompt=True)
    if text.startswith(prefix) and len(prefix) >= cursor:
        for variant in _content_variants(messages[i]["content"]):
            if text.startswith(variant, len(prefix)):
                return len(prefix), len(prefix) + len(variant)
    # The template rewrites earlier turns (e.g. Mistral's moves the system prompt into the last user turn): find the
    # user and assistant contents in order, so an answer that also occurs in the user turn before it is not taken
    # from there.
    position = 0
    for j, message in enumerate(messages[: i + 1]):
        if message["role"] == shape.SYSTEM:
            continue
        for variant in _content_variants(message["content"]):
            found = text.find(variant, position)
            if found >= 0:
                break
        else:
            return -1, -1
        position = found + len(variant)
        if j == i:
            return (found, position) if found >= cursor else (-1, -1)
    return -1, -1


def _end_of_turn(tokenizer, messages: list[dict], i: int, text: str, content_end: int) -> str:
    """The end-of-turn marker the template writes after assistant turn i (trailing whitespace left to the next
    turn): what lies between the content and the end of the conversation rendered up to this turn."""
    if i + 1 < len(messages):
        upto = _apply(tokenizer, messages[: i + 1])
        suffix = text[content_end:len(upto)] if text.startswith(upto) and len(upto) >= content_end else None
    else:
        suffix = text[content_end:]
    if suffix is None:
        rest = text[content_end:]
        known = [m for m in (*END_OF_TURN_MARKERS, getattr(tokenizer, "eos_token", None) or "") if m]
        return next((m for m in sorted(known, key=len, reverse=True) if rest.startswith(m)), "")
    return suffix.rstrip()
