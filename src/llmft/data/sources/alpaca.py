"""Stanford Alpaca (`alpaca_data.json`: a JSON array of {instruction, input, output}; JSON Lines also accepted).

An item is one array element (or line). Placeholder inputs the generator wrote instead of leaving the input
empty ("No input", "<noinput>", "N/A", "None", ... in any case, quoted, bracketed or with trailing punctuation)
become ""; the original is kept in meta `input_placeholder`. Empty and `<nooutput>` outputs are rejected.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from llmft.config import DataConfig
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources.base import (
    SkipItem,
    TextFields,
    check_instruction,
    check_output,
    expand_units,
    iter_json_array,
    iter_jsonl,
    sniff_json_kind,
)

SOURCE = "alpaca"

# What remains of a placeholder once case, spaces, wrapping quotes/brackets and trailing punctuation are dropped.
# "NA" counts only in capitals: "Na" may well be sodium.
_PLACEHOLDERS = {"noinput", "noinputrequired", "noinputneeded", "n/a", "none"}
_WRAPPING = re.compile(r"""^[\s"'`\\<]+|[\s"'`\\>.,;:!]+$""")


def is_placeholder_input(text: str) -> bool:
    core = re.sub(r"\s+", "", _WRAPPING.sub("", text))
    return core.lower() in _PLACEHOLDERS or core == "NA"


def to_records(item, *, index: int) -> list[Record]:
    fields = TextFields(item)
    instruction = fields.text("instruction")
    input_text = fields.text("input", required=False)
    output = fields.text("output")
    check_instruction(instruction)
    check_output(output)
    meta: dict = {"index": index}
    if input_text and is_placeholder_input(input_text):
        meta["input_placeholder"] = input_text
        input_text = ""
    meta.update(fields.meta())
    return [Record(stable_id(SOURCE, index), SOURCE, SOURCE, instruction, input_text, output, [output], meta)]


def read(path: Path, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    path, limit = Path(path), (cfg or DataConfig()).max_line_bytes
    kind = sniff_json_kind(path)
    with open(path, "rb") as f:
        items = iter_json_array(f, path, max_line_bytes=limit) if kind == "array" else iter_jsonl(f, path, limit)
        for index, (line, item) in enumerate(items):
            try:
                yield from to_records(item, index=index)
            except SkipItem as skip:
                where = f"index {index}" if kind == "array" else f"line {line}"
                yield Reject(SOURCE, str(path), where, skip.reason, item)


def units(path: Path, cfg: DataConfig | None = None) -> list[Path]:
    return expand_units(path, ("*.json", "*.jsonl"))
