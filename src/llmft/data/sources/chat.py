"""Conversations in the two common chat formats, detected per file:

- `messages` (OpenAI / Hugging Face chat): `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
  (content may also be a list of `{"type": "text", "text": ...}` parts, joined);
- ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}`, with an optional top-level
  `"system"` prompt (LLaMA-Factory's variant).
Role names go through `turns.ROLE_ALIASES` (user/human/prompter, assistant/gpt/bot/model/chatgpt/..., system/
developer). The file is any `rows` reads (JSON, JSONL, Parquet, Arrow, save_to_disk, CSV with the turns as JSON
text, a hub dataset id). One record per conversation: id `chat/<file stem>/<row>`, source `chat`, task = the row's
`task` or `category` field when it has one, else `chat`; `messages` keeps every turn, and the single-turn view is
instruction = the first user turn, input = "", output = the last assistant turn. A conversation with no assistant
turn, an empty turn, an unknown role, turns that do not alternate or a system turn that is not first is rejected
with that reason; the reject's place names the turn (0-based, as in the file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from llmft.config import DataConfig
from llmft.data import turns
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources import rows
from llmft.data.sources.base import SkipItem, TextFields

SOURCE = "chat"
MESSAGES, SHAREGPT = "messages", "sharegpt"
FORMAT_KEYS = {MESSAGES: "messages", SHAREGPT: "conversations"}
# (role key, content key) of a turn, in the order tried
TURN_KEYS = {MESSAGES: (("role", "content"), ("from", "value")), SHAREGPT: (("from", "value"), ("role", "content"))}
TASK_FIELDS = ("task", "category")


class SkipTurn(SkipItem):
    """A conversation rejected because of one turn (`turn`: its index in the file, or "system" for the field)."""

    def __init__(self, reason: str, turn: int | str):
        super().__init__(reason)
        self.turn = turn


def detect_format(item: Any) -> str | None:
    """`messages` or `sharegpt` from the keys of one row, None when it has neither."""
    if isinstance(item, dict):
        for fmt, key in FORMAT_KEYS.items():
            if key in item:
                return fmt
    return None


def to_records(item, *, stem: str, index: int, fmt: str | None = None) -> list[Record]:
    """The record of one conversation row (`fmt` is the file's format; detected from the row when not given)."""
    fields = TextFields(item)
    fmt = fmt or detect_format(item)
    if fmt is None:
        raise SkipItem("missing field 'messages' or 'conversations'")
    raw_turns = _turn_list(item, FORMAT_KEYS[fmt])
    messages, origin = _system_field(fields, item)
    for position, turn in enumerate(raw_turns):
        messages.append(_turn(fields, turn, position, fmt))
        origin.append(position)
    found = turns.problem(messages)
    if found:
        reason, at = found
        raise SkipTurn(reason, origin[at] if origin else 0)
    instruction, output = turns.single_turn_view(messages)
    meta: dict = {"format": fmt, "index": index, "assistant_turns": sum(m["role"] == turns.ASSISTANT
                                                                          for m in messages)}
    if isinstance(item.get("id"), (str, int)) and not isinstance(item.get("id"), bool):
        meta["original_id"] = item["id"]
    meta.update(fields.meta())
    return [Record(stable_id(SOURCE, stem, index), SOURCE, _task(item), instruction, "", output, [output], meta,
                   messages)]


def _turn_list(item: dict, key: str) -> list:
    value = item.get(key)
    if isinstance(value, str):       # a CSV cell holds the turns as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SkipItem(f"field '{key}' is text but not JSON") from None
    if value is None:
        raise SkipItem(f"missing field '{key}'")
    if not isinstance(value, list):
        raise SkipItem(f"field '{key}' is not a list")
    if not value:
        raise SkipItem(turns.NO_TURNS)
    return value


def _system_field(fields: TextFields, item: dict) -> tuple[list[dict], list]:
    """A top-level `system` prompt becomes the first turn (unless the turns already start with one)."""
    system = item.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return [], []
    if not isinstance(system, str):
        raise SkipTurn("content is not text", "system")
    # with a system turn in the list as well, the list's one is rejected as not first
    return [{"role": turns.SYSTEM, "content": fields.clean("system", system)}], ["system"]


def _turn(fields: TextFields, turn: Any, position: int, fmt: str) -> dict:
    if not isinstance(turn, dict):
        raise SkipTurn("turn is not an object", position)
    # a Parquet/Arrow struct holds every key any turn of the file had, None where a turn lacked it
    role_key, content_key = next(((r, c) for r, c in TURN_KEYS[fmt] if turn.get(r) is not None), TURN_KEYS[fmt][0])
    name = turn.get(role_key)
    role = turns.canonical_role(name)
    if role is None:
        raise SkipTurn(f"unknown role {name!r}" if isinstance(name, str) else f"missing field '{role_key}'",
                       position)
    content = _content_text(turn.get(content_key), position)
    try:
        return {"role": role, "content": fields.clean("content", content)}
    except SkipItem as skip:
        raise SkipTurn(skip.reason, position) from None


def _content_text(content: Any, position: int) -> str:
    """A string; a list of text parts joined; missing or null content is empty (then rejected as such)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise SkipTurn("content is not text", position)


def _task(item: dict) -> str:
    for key in TASK_FIELDS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return SOURCE


# ---------------------------------------------------------------- files


def read(path: Path | str, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    """Every conversation of one unit; the format is that of the first row naming one."""
    cfg = cfg or DataConfig()
    name = str(path)
    stem = rows.stem(name)
    fmt = None
    for index, (where, item) in enumerate(rows.iter_rows(name, split=cfg.dataset_split,
                                                         max_line_bytes=cfg.max_line_bytes)):
        fmt = fmt or detect_format(item)
        try:
            yield from to_records(item, stem=stem, index=index, fmt=fmt)
        except SkipTurn as skip:
            yield Reject(SOURCE, name, f"{where}, turn {skip.turn}", skip.reason, item)
        except SkipItem as skip:
            yield Reject(SOURCE, name, where, skip.reason, item)


def units(path: Path | str, cfg: DataConfig | None = None) -> list[str]:
    return rows.units(path)


def fingerprint(path: str) -> tuple[str | None, int | None]:
    return rows.fingerprint(path)


def accepts_remote(given: str) -> bool:
    return rows.is_remote(given)
