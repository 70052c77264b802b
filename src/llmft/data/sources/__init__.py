"""Dataset readers: each turns one raw dataset's files into `Record`s (kept) and `Reject`s (counted, with a reason).

Every module has `to_records(item, **context) -> list[Record]` (pure; raises `SkipItem(reason)`),
`read(path, cfg) -> Iterator[Record | Reject]` (one unit, streaming) and `units(path, cfg) -> list[Path]`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from llmft.config import DataConfig
from llmft.errors import LlmftError, os_error_message
from llmft.data.records import NOT_UNICODE, Record, Reject, has_surrogate
from llmft.io import dumps_record
from llmft.data.sources import alpaca, chat, natural_instructions, self_instruct, table, unnatural_instructions
from llmft.data.sources.base import SkipItem

SOURCES = {
    "alpaca": alpaca,
    "self-instruct": self_instruct,
    "natural-instructions": natural_instructions,
    "unnatural-instructions": unnatural_instructions,
    "chat": chat,
    "table": table,
}

__all__ = ["SOURCES", "SkipItem", "get_source", "convert"]


def get_source(name: str):
    """The module for a source name; `self_instruct` and `self-instruct` both work."""
    module = SOURCES.get(name.replace("_", "-"))
    if module is None:
        raise LlmftError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return module


def convert(source: str, path: str | Path, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    """Every record and reject of every unit `path` expands to, in unit order. A record that no UTF-8 file can
    hold (a lone surrogate in its meta) is a reject: one item, not the whole file, fails."""
    module = get_source(source)
    cfg = cfg or DataConfig()
    for unit in module.units(str(path), cfg):    # chat and table also read hub dataset ids
        try:
            for item in module.read(unit, cfg):
                if isinstance(item, Record) and has_surrogate(dumps_record(item.to_dict())):
                    item = Reject(item.source, str(unit), f"record {item.id}", NOT_UNICODE, item.to_dict())
                yield item
        except OSError as e:     # reading the unit (writing happens in the caller, outside this generator)
            raise LlmftError(os_error_message(e, where=unit)) from None
