"""The training rows of `llmft train --data`: a prepared folder (train.jsonl + dev.jsonl) or one JSONL file of
records or {prompt, completion} rows, of which a seeded 5% becomes the dev set."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from llmft import io
from llmft.config import TrainConfig
from llmft.errors import InputFormatError, LlmftError

DEV_FRACTION = 0.05       # held out of a single JSONL file when no dev split is given



@dataclass
class TrainData:
    train: list[dict]
    dev: list[dict]
    files: list[Path]
    dev_origin: str          # "dev.jsonl" or "5% of <file>, seed N"


def read_training_data(cfg: TrainConfig) -> TrainData:
    """A prepared folder (train.jsonl + dev.jsonl) or one JSONL file of records or {prompt, completion} rows, of
    which a seeded 5% becomes the dev set."""
    path = Path(cfg.data)
    if path.is_dir():
        train_file = path / "train.jsonl"
        if not train_file.exists():
            raise LlmftError(f"{path}: a data folder needs train.jsonl (run `llmft data prepare --out {path}`)")
        train = _read_rows(train_file)
        dev_file = path / "dev.jsonl"
        if dev_file.exists():
            return TrainData(train, _read_rows(dev_file), [train_file, dev_file], str(dev_file))
        return _split_dev(train, [train_file], cfg.seed)
    if not path.is_file():
        raise LlmftError(f"{path}: no such data file or folder")
    return _split_dev(_read_rows(path), [path], cfg.seed)


def _split_dev(rows: list[dict], files: list[Path], seed: int) -> TrainData:
    n_dev = max(1, round(len(rows) * DEV_FRACTION)) if len(rows) >= 2 else 0
    dev_ids = set(random.Random(seed).sample(range(len(rows)), n_dev))
    train = [r for i, r in enumerate(rows) if i not in dev_ids]
    dev = [r for i, r in enumerate(rows) if i in dev_ids]
    return TrainData(train, dev, files, f"{n_dev} of {len(rows)} rows of {files[0]} (seed {seed})")


def _read_rows(path: Path) -> list[dict]:
    """Records (instruction/output) or {prompt, completion} rows; every malformed row is listed by line."""
    rows, problems = [], []
    for lineno, row in enumerate(io.read_jsonl(path), 1):
        problem = _row_problem(row)
        if problem:
            problems.append(f"line {lineno}: {problem}")
        rows.append(row)
    if problems:
        shown = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InputFormatError(path, f"{len(problems)} row(s) are neither records nor prompt/completion:\n  - {shown}")
    if not rows:
        raise InputFormatError(path, "no rows")
    return rows


def _row_problem(row: dict) -> str | None:
    if "prompt" in row or "completion" in row:
        keys = ("prompt", "completion")
    else:
        keys = ("instruction", "output")
    bad = [k for k in keys if not isinstance(row.get(k), str)]
    return f"'{bad[0]}' is missing or not a string" if bad else None

