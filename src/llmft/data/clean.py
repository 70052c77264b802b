"""Cleaning stage of `llmft data prepare`: normalise each record's text, then run filters that each return
(keep, reason). A dropped record is counted under its reason; nothing is dropped silently.

The source readers already clean what they read; this stage applies the same rules to every source (and to
records that come from elsewhere) so the prepared data holds one invariant whatever its origin.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

from llmft.config import DataConfig
from llmft.data import turns
from llmft.data.records import Record

# C0/C1 control characters and DEL, except tab and newline (carriage returns become newlines first).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Spaces that look like spaces but break exact matching (NBSP, thin spaces, zero-width, BOM).
_ODD_SPACES = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_TRAILING_SPACES = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
# Anything the rules below would change inside a text; most texts have none, and one search is cheaper than six.
_NEEDS_WORK = re.compile(r"[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00a0\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff]"
                         r"|[ \t]\n|\n\n\n")

REASON_EMPTY_INSTRUCTION = "empty instruction"
REASON_EMPTY_OUTPUT = "empty output"
REASON_NOOUTPUT = "<nooutput> output"
REASON_OVERLONG = "overlong record"

Filter = Callable[[Record, DataConfig], tuple[bool, "str | None"]]


def normalize_text(text: str) -> str:
    """Line ends to \\n, control and zero-width characters removed, odd spaces to plain spaces, no trailing
    spaces on lines, at most one blank line in a row, no surrounding whitespace. Inner spacing (code
    indentation, tables) is otherwise kept."""
    if not _NEEDS_WORK.search(text):
        return text.strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _ZERO_WIDTH.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING_SPACES.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_whitespace(record: Record) -> Record:
    """The record with every text normalised; the very same object when nothing changed (the usual case, which
    lets the caller reuse what it already serialised). A conversation's turns are normalised and its single-turn
    view (first user turn, last assistant turn) follows them."""
    if record.messages:
        return normalize_conversation(record)
    instruction, input_text, output = (normalize_text(t) for t in (record.instruction, record.input, record.output))
    references = [r for r in map(normalize_text, record.references) if r] or ([output] if output else [])
    if (instruction, input_text, output, references) == (record.instruction, record.input, record.output,
                                                         record.references):
        return record
    return dataclasses.replace(record, instruction=instruction, input=input_text, output=output, references=references)


def normalize_conversation(record: Record) -> Record:
    messages = [{"role": turn["role"], "content": normalize_text(turn["content"])} for turn in record.messages]
    if messages == record.messages:
        return record
    if turns.problem(messages):      # e.g. a turn of zero-width spaces is empty now: conversation_shape rejects it
        return dataclasses.replace(record, messages=messages)
    instruction, output = turns.single_turn_view(messages)
    references = [output] if record.references == [record.output] else [r for r in map(normalize_text,
                                                                                          record.references) if r]
    return dataclasses.replace(record, instruction=instruction, output=output, references=references or [output],
                               messages=messages)


def conversation_shape(record: Record, cfg: DataConfig) -> tuple[bool, str | None]:
    """A conversation must still be one after normalising (no empty turn, roles in order); see turns.problem."""
    if not record.messages:
        return True, None
    found = turns.problem(record.messages)
    return (True, None) if found is None else (False, found[0])


def empty_instruction(record: Record, cfg: DataConfig) -> tuple[bool, str | None]:
    return (True, None) if record.instruction else (False, REASON_EMPTY_INSTRUCTION)


def empty_output(record: Record, cfg: DataConfig) -> tuple[bool, str | None]:
    return (True, None) if record.output else (False, REASON_EMPTY_OUTPUT)


def nooutput_marker(record: Record, cfg: DataConfig) -> tuple[bool, str | None]:
    """Alpaca marks instructions a text model cannot carry out (images, actions) with `<nooutput>`."""
    return (False, REASON_NOOUTPUT) if record.output.lower().startswith("<nooutput>") else (True, None)


def overlong(record: Record, cfg: DataConfig) -> tuple[bool, str | None]:
    if cfg.max_chars and record_chars(record) > cfg.max_chars:
        return False, REASON_OVERLONG
    return True, None


def record_chars(record: Record) -> int:
    if record.messages:
        return sum(len(turn["content"]) for turn in record.messages)
    return len(record.instruction) + len(record.input) + len(record.output)


FILTERS: tuple[Filter, ...] = (conversation_shape, empty_instruction, empty_output, nooutput_marker, overlong)


def clean(record: Record, cfg: DataConfig) -> tuple[Record | None, str | None]:
    """(cleaned record, None) if it is kept, else (None, reason) from the first filter that drops it."""
    record = normalize_whitespace(record)
    for keep_filter in FILTERS:
        keep, reason = keep_filter(record, cfg)
        if not keep:
            return None, reason
    return record, None
