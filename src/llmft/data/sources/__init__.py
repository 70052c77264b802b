"""Dataset readers: each turns one raw dataset's files into `Record`s (kept) and `Reject`s (counted, with a reason).

Every module has `to_records(item, **context) -> list[Record]` (pure; raises `SkipItem(reason)`),
`read(path, cfg) -> Iterator[Record | Reject]` (one unit, streaming) and `units(path, cfg) -> list[Path]`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from llmft.config import DataConfig
from llmft.errors import LlmftError
from llmft.data.records import Record, Reject
from llmft.data.sources import alpaca, natural_instructions, self_instruct, unnatural_instructions
from llmft.data.sources.base import SkipItem

SOURCES = {
    "alpaca": alpaca,
    "self-instruct": self_instruct,
    "natural-instructions": natural_instructions,
    "unnatural-instructions": unnatural_instructions,
}

__all__ = ["SOURCES", "SkipItem", "get_source", "convert"]


def get_source(name: str):
    """The module for a source name; `self_instruct` and `self-instruct` both work."""
    module = SOURCES.get(name.replace("_", "-"))
    if module is None:
        raise LlmftError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return module


def convert(source: str, path: str | Path, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    """Every record and reject of every unit `path` expands to, in unit order."""
    module = get_source(source)
    cfg = cfg or DataConfig()
    for unit in module.units(Path(path), cfg):
        yield from module.read(unit, cfg)
