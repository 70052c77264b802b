"""The one record type that flows through every stage, from raw file to prompt."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FIELDS = ("id", "source", "task", "instruction", "input", "output", "references", "meta", "messages")
ROLES = ("system", "user", "assistant")
NOT_UNICODE = "text is not valid Unicode (a lone surrogate)"
# Unpaired UTF-16 surrogates: JSON's "\ud800" escape decodes to one, and no UTF-8 file can hold it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
SOURCES = ("alpaca", "self-instruct", "natural-instructions", "unnatural-instructions", "chat", "table")


@dataclass
class Record:
    id: str
    source: str
    task: str
    instruction: str
    input: str
    output: str
    references: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # A conversation keeps its turns here, [{"role": "system"|"user"|"assistant", "content": str}, ...]; its
    # single-turn view is instruction = the first user turn, input = "", output = the last assistant turn.
    # Empty for single-turn records (and then left out on disk, so their files are unchanged).
    messages: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if not self.references:
            self.references = [self.output]

    @property
    def is_conversation(self) -> bool:
        return bool(self.messages)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.messages:
            del d["messages"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        return cls(**{k: d[k] for k in FIELDS if k in d})


def stable_id(source: str, *parts: object) -> str:
    """An id that depends only on where the item sits in its source (file name, index), never on run order."""
    return "/".join([source, *(str(p) for p in parts)])


def content_hash(*texts: str) -> str:
    return hashlib.sha1("\x1f".join(texts).encode("utf-8")).hexdigest()[:16]


def validate_record(d: dict) -> list[str]:
    """Every problem with a record dict, so one message can list them all."""
    problems = []
    for key in ("id", "source", "task", "instruction", "input", "output"):
        if key not in d:
            problems.append(f"missing field '{key}'")
        elif not isinstance(d[key], str):
            problems.append(f"field '{key}' must be a string, got {type(d[key]).__name__}")
    refs = d.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        problems.append("field 'references' must be a list of strings")
    if not isinstance(d.get("meta", {}), dict):
        problems.append("field 'meta' must be an object")
    messages = d.get("messages", [])
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
        problems.append("field 'messages' must be a list of {role: system|user|assistant, content: string}")
    return problems


@dataclass
class Reject:
    """A raw item or record that was not kept: where it came from and why. Written to rejects.jsonl."""
    source: str
    path: str
    where: str          # "line 12", "index 4031", "instance task1344-abc", ...
    reason: str         # short, countable: "empty output", "missing field 'output'", ...
    item: Any = None    # the raw item (or record dict) as read

    def to_dict(self) -> dict:
        return asdict(self)


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def dumps_reject(row: dict) -> str:
    """One line of a rejects file. The raw item may be the very reason for the reject: a lone surrogate is written
    as its \\u escape (the line stays UTF-8 JSON), an item nested too deeply to write is replaced by a note."""
    from llmft.io import dumps_record

    try:
        line = dumps_record(row)
    except RecursionError:
        row = {**row, "item": "<not written: nested too deeply>"}
        line = dumps_record(row)
    return json.dumps(row, separators=(",", ":")) if has_surrogate(line) else line
