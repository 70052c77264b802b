"""Rows of any tabular dataset, one at a time with their place, for the `chat` and `table` sources.

What a path may be, and how its rows are read (memory stays bounded in every case):
- `.json` (a top-level array or JSON Lines), `.jsonl`, and either `.gz`-compressed: the project's streaming JSON
  readers, so each row keeps its line (`datasets` would load a JSON array whole, and one row of another type would
  fail the whole file, where here it is one reject).
- `.parquet`, `.arrow` (IPC file or stream), `.csv`, `.tsv`: `datasets.load_dataset(<builder>, data_files=...,
  streaming=True)`; CSV cells are read as text (no "42" -> 42.0, no "NA" -> missing).
- a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` folder: `datasets.load_from_disk` (memory-mapped), read in
  batches; a DatasetDict gives every split in turn, or only `split`.
- a folder of the files above: one unit per file (searched recursively, sorted by path).
- anything else that looks like a hub dataset id (`name` or `owner/name`): `datasets.load_dataset(id,
  streaming=True)`, every split in turn or only `split`.
A row's place is `line N` (JSON Lines), `index N` (JSON array), `row N`, or `split S row N` (0-based rows).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import re
from pathlib import Path
from typing import Any, Iterator

from llmft.data.sources.base import DEFAULT_MAX_LINE_BYTES, iter_json_array, iter_jsonl, sniff_json_kind
from llmft.errors import InputFormatError, LlmftError

JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
DATASETS_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv"}
FILE_SUFFIXES = JSON_SUFFIXES + tuple(DATASETS_BUILDERS)
SAVED_MARKERS = ("state.json", "dataset_dict.json")     # what save_to_disk leaves in its folder
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BATCH = 1000


def suffix_of(name: str) -> str:
    lowered = name.lower()
    return next((s for s in sorted(FILE_SUFFIXES, key=len, reverse=True) if lowered.endswith(s)), "")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)


def is_hub_id(given: str) -> bool:
    """A path that does not exist, has no data-file suffix and reads like `name` or `owner/name`."""
    return (not Path(given).exists() and not suffix_of(given) and not given.startswith((".", "/", "~"))
            and _HUB_ID.match(given) is not None)


def is_remote(given: str) -> bool:
    return is_hub_id(given)


def units(given: str | Path) -> list[str]:
    """What one given path reads as: itself (a file, a saved dataset, a hub id) or a folder's data files."""
    given = str(given)
    path = Path(given)
    if is_remote(given) or path.is_file() or is_saved_dataset(path):
        if path.is_file() and not suffix_of(path.name):
            raise InputFormatError(path, f"not a data file this source reads (expected one of "
                                         f"{', '.join(FILE_SUFFIXES)}, a save_to_disk folder or a hub dataset id)")
        return [given]
    if not path.is_dir():
        raise InputFormatError(path, "no such file or folder (nor a hub dataset id: those read like owner/name)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and suffix_of(p.name) and not p.name.startswith("."))
    if not files:
        raise InputFormatError(path, f"folder holds no {', '.join(FILE_SUFFIXES)} files and is not a save_to_disk "
                                     "folder")
    return [str(p) for p in files]


def stem(given: str) -> str:
    """The name part of record ids: the file name without its data suffix (the last part of a hub id)."""
    base = given.rstrip("/").rsplit("/", 1)[-1] if is_remote(given) else Path(given).name
    suffix = suffix_of(base)
    return base[: len(base) - len(suffix)] if suffix else base


def fingerprint(given: str) -> tuple[str | None, int | None]:
    """(sha256, bytes) of a file, or of a folder's files (names and contents); (None, None) for remote data."""
    path = Path(given)
    if path.is_file():
        from llmft.io import sha256_file

        return sha256_file(path), path.stat().st_size
    if path.is_dir():
        from llmft.io import sha256_file

        digest, size = hashlib.sha256(), 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
            size += file.stat().st_size
        return digest.hexdigest(), size
    return None, None


# ---------------------------------------------------------------- reading


def iter_rows(given: str | Path, *, split: str = "",
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[str, Any]]:
    """(place, row) of every row of one unit (see the module docstring)."""
    given = str(given)
    suffix = suffix_of(given)
    if suffix in JSON_SUFFIXES:
        yield from _json_rows(Path(given), max_line_bytes)
    elif is_saved_dataset(Path(given)):
        yield from _guarded(given, _saved_rows(Path(given), split))
    elif suffix in DATASETS_BUILDERS:
        yield from _guarded(given, _file_rows(given, suffix))
    elif is_hub_id(given):
        yield from _guarded(given, _hub_rows(given, split))
    else:
        raise InputFormatError(given, "not a data file this source reads")


def _json_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as head:
        kind = sniff_json_kind(path, head)
    with opener(path, "rb") as f:
        if kind == "array":
            for index, (_, row) in enumerate(iter_json_array(f, path, max_line_bytes=max_line_bytes)):
                yield f"index {index}", row
        else:
            for line, row in iter_jsonl(f, path, max_line_bytes):
                yield f"line {line}", row


def _quiet_datasets():
    import datasets

    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _guarded(given: str, rows: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """A file `datasets` cannot read becomes one error naming it (not a traceback)."""
    try:
        yield from rows
    except (LlmftError, KeyboardInterrupt):
        raise
    except Exception as e:     # pyarrow, pandas, fsspec and datasets each raise their own types
        raise InputFormatError(given, f"cannot read it with datasets ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _file_rows(given: str, suffix: str) -> Iterator[tuple[str, Any]]:
    datasets = _quiet_datasets()
    builder = DATASETS_BUILDERS[suffix]
    kwargs: dict = {}
    if builder == "csv":
        kwargs = {"sep": "\t" if suffix == ".tsv" else ",", "keep_default_na": False}
        header = _csv_header(given, kwargs["sep"])
        if header:
            kwargs["features"] = datasets.Features({name: datasets.Value("string") for name in header})
    stream = datasets.load_dataset(builder, data_files=given, split="train", streaming=True, **kwargs)
    for index, row in enumerate(stream):
        yield f"row {index}", row


def _csv_header(given: str, sep: str) -> list[str]:
    """The column names of a CSV file, so every column is read as text."""
    with open(given, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f, delimiter=sep), [])


def _saved_rows(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    datasets = _quiet_datasets()
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        for name, part in _chosen_splits(loaded, split, path):
            for index, row in enumerate(_batched(part)):
                yield f"split {name} row {index}", row
    else:
        for index, row in enumerate(_batched(loaded)):
            yield f"row {index}", row


def _batched(dataset) -> Iterator[dict]:
    """A memory-mapped Dataset's rows, read a batch at a time (much faster than one __getitem__ per row)."""
    for batch in dataset.iter(batch_size=_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _hub_rows(dataset_id: str, split: str) -> Iterator[tuple[str, Any]]:
    datasets = _quiet_datasets()
    loaded = datasets.load_dataset(dataset_id, split=split or None, streaming=True)
    parts = [(split, loaded)] if split else _chosen_splits(loaded, "", dataset_id)
    for name, part in parts:
        for index, row in enumerate(part):
            yield f"split {name} row {index}", row


def _chosen_splits(dataset_dict, split: str, where) -> list[tuple[str, Any]]:
    if not split:
        return list(dataset_dict.items())
    if split not in dataset_dict:
        raise InputFormatError(where, f"has no split {split!r} (splits: {', '.join(dataset_dict)})")
    return [(split, dataset_dict[split])]
