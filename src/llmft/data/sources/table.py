"""Any table `datasets` reads (JSON, JSONL, Parquet, Arrow, save_to_disk, CSV/TSV or a hub dataset id; see
`rows`) with a column mapping: `instruction=question,input=context,output=answer`, or `prompt=text,completion=label`
(prompt becomes the instruction and completion the output; the template formats them as any record).

Mapping keys: instruction and output (or prompt and completion) are required; input, task and id are optional. A
value names a column, or a path into a nested column (`output=answers.text`). Without a mapping, the columns
instruction/input/output or prompt/completion are used when the table has them. A cell may be text, a number or a
boolean (written as text), or a list of texts: the first is the output and all are references (SQuAD-style). One
record per row: id `table/<file stem>/<row>`, source `table`, task = the mapped task column, else `table`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from llmft.config import DataConfig
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources import rows
from llmft.data.sources.base import SkipItem, TextFields, check_instruction, check_output
from llmft.errors import InputFormatError, LlmftError, one_line

SOURCE = "table"
KEYS = ("instruction", "input", "output", "prompt", "completion", "task", "id")
ALIASES = {"prompt": "instruction", "completion": "output"}
OPTIONAL = ("input", "task", "id")      # a row without them has no input, the default task, no original id
DEFAULT_MAPPINGS = ({"instruction": "instruction", "input": "input", "output": "output"},
                    {"prompt": "prompt", "completion": "completion"})


def parse_columns(text: str) -> dict[str, str]:
    """`instruction=question,input=context,output=answer` -> {"instruction": "question", ...}, checked."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not key or not column:
            raise LlmftError(f"--columns {text!r}: {part!r} must look like key=column")
        if key not in KEYS:
            raise LlmftError(f"--columns {text!r}: unknown key {key!r}; known: {', '.join(KEYS)}")
        if key in mapping:
            raise LlmftError(f"--columns {text!r}: {key!r} given twice")
        mapping[key] = column
    check_mapping(mapping, f"--columns {text!r}")
    return mapping


def check_mapping(mapping: dict[str, str], where: str) -> None:
    record_keys = [ALIASES.get(k, k) for k in mapping]
    duplicated = sorted({k for k in record_keys if record_keys.count(k) > 1})
    if duplicated:
        raise LlmftError(f"{where}: give instruction/output or prompt/completion, not both ({', '.join(duplicated)})")
    missing = [k for k in ("instruction", "output") if k not in record_keys]
    if missing:
        raise LlmftError(f"{where}: no column for {' and '.join(missing)} (give instruction=...,output=... or "
                         "prompt=...,completion=...)")


def cell(row: dict, column: str) -> Any:
    """The value of `column`, or of a dotted path into nested columns; KeyError when it is not there."""
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(column)
        value = value[part]
    return value


def _texts(fields: TextFields, key: str, column: str, value: Any) -> list[str]:
    """A cell as a list of cleaned texts (one for a scalar, all of a list of texts)."""
    if value is None:
        return []
    if isinstance(value, (bool, int, float)):
        value = str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return [t for t in (fields.clean(key, str(v)) for v in value) if t]
    if not isinstance(value, str):
        raise SkipItem(f"column '{column}' is not text")
    return [fields.clean(key, value)]


def to_records(item, *, mapping: dict[str, str], stem: str, index: int) -> list[Record]:
    fields = TextFields(item)
    values: dict[str, list[str]] = {}
    for key, column in mapping.items():
        try:
            raw = cell(item, column)
        except KeyError:
            if key in OPTIONAL:
                continue
            raise SkipItem(f"missing column '{column}'") from None
        values[ALIASES.get(key, key)] = _texts(fields, ALIASES.get(key, key), column, raw)
    instruction = " ".join(values["instruction"])
    input_text = "\n".join(values.get("input", []))
    references = values["output"]
    output = references[0] if references else ""
    check_instruction(instruction)
    check_output(output)
    meta: dict = {"index": index, "columns": dict(mapping)}
    if values.get("id"):
        meta["original_id"] = values["id"][0]
    meta.update(fields.meta())
    task = values["task"][0] if values.get("task") else SOURCE
    return [Record(stable_id(SOURCE, stem, index), SOURCE, task, instruction, input_text, output, references, meta)]


# ---------------------------------------------------------------- files


def mapping_for(unit: str, cfg: DataConfig) -> dict[str, str] | None:
    """The --columns of the table `unit` came from: the only one given, or the one paired with its path."""
    given = cfg.table_columns
    if not given:
        return None
    if len(given) == 1:
        return parse_columns(given[0])
    if len(given) != len(cfg.table):
        raise LlmftError(f"give one --columns for every --table, or one for all ({len(cfg.table)} tables, "
                         f"{len(given)} --columns)")
    for table, columns in zip(cfg.table, given):
        if unit == table or Path(unit).is_relative_to(Path(table)):
            return parse_columns(columns)
    raise LlmftError(f"{unit}: no --columns paired with it")


def _default_mapping(unit: str, row: dict) -> dict[str, str]:
    for mapping in DEFAULT_MAPPINGS:
        if all(column in row for column in mapping.values() if column != "input"):
            return {k: v for k, v in mapping.items() if k != "input" or v in row}
    raise InputFormatError(unit, f"give --columns (e.g. instruction=question,output=answer): the table has no "
                                 f"instruction/output or prompt/completion columns (columns: {_names(row)})")


def _check_columns(unit: str, mapping: dict[str, str], row: dict) -> None:
    """A required column absent from the first row is a mistake in --columns, not a bad row."""
    for column in (column for key, column in mapping.items() if key not in OPTIONAL):
        try:
            cell(row, column)
        except KeyError:
            raise InputFormatError(unit, f"no column {column!r} (columns: {_names(row)})") from None


def _names(row: dict) -> str:
    return ", ".join(one_line(str(name)) for name in row) or "none"   # a column name may hold a line break


def read(path: Path | str, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    cfg = cfg or DataConfig()
    name = str(path)
    stem = rows.stem(name)
    mapping = mapping_for(name, cfg)
    for index, (where, item) in enumerate(rows.iter_rows(name, split=cfg.dataset_split,
                                                         max_line_bytes=cfg.max_line_bytes)):
        if index == 0 and isinstance(item, dict):
            mapping = mapping or _default_mapping(name, item)
            _check_columns(name, mapping, item)
        try:
            if mapping is None:
                raise SkipItem("item is not an object")
            yield from to_records(item, mapping=mapping, stem=stem, index=index)
        except SkipItem as skip:
            yield Reject(SOURCE, name, where, skip.reason, item)


def units(path: Path | str, cfg: DataConfig | None = None) -> list[str]:
    return rows.units(path)


def fingerprint(path: str) -> tuple[str | None, int | None]:
    return rows.fingerprint(path)


def accepts_remote(given: str) -> bool:
    return rows.is_remote(given)
