"""The training rows of `llmft train --data`: a prepared folder (train.jsonl + dev.jsonl) or one JSONL file of
records, {prompt, completion} rows or {messages} conversations, of which a seeded 5% becomes the dev set (its row
numbers are kept, so evaluation can use exactly the held-out rows)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from llmft import io
from llmft.config import TrainConfig
from llmft.data.conversation import message_problems
from llmft.errors import InputFormatError, LlmftError

DEV_FRACTION = 0.05       # held out of a single JSONL file when no dev split is given



@dataclass
class TrainData:
    train: list[dict]
    dev: list[dict]
    files: list[Path]
    dev_origin: str          # "dev.jsonl" or "5% of <file>, seed N"
    dev_rows: list[int] | None = None   # 0-based rows of files[0] held out as dev, when split from it


def read_training_data(cfg: TrainConfig) -> TrainData:
    """A prepared folder (train.jsonl + dev.jsonl) or one JSONL file of records, {prompt, completion} rows or
    {messages} conversations, of which a seeded 5% becomes the dev set."""
    path = Path(cfg.data)
    if path.is_dir():
        train_file = path / "train.jsonl"
        if not train_file.exists():
            raise LlmftError(f"{path}: a data folder needs train.jsonl (run `llmft data prepare --out {path}`)")
        train = read_rows(train_file)
        dev_file = path / "dev.jsonl"
        if dev_file.exists():
            return TrainData(train, read_rows(dev_file), [train_file, dev_file], str(dev_file))
        return _split_dev(train, [train_file], cfg.seed)
    if not path.is_file():
        raise LlmftError(f"{path}: no such data file or folder")
    return _split_dev(read_rows(path), [path], cfg.seed)


def _split_dev(rows: list[dict], files: list[Path], seed: int) -> TrainData:
    dev_ids = held_out_rows(len(rows), seed)
    n_dev = len(dev_ids)
    train = [r for i, r in enumerate(rows) if i not in dev_ids]
    dev = [r for i, r in enumerate(rows) if i in dev_ids]
    return TrainData(train, dev, files, f"{n_dev} of {len(rows)} rows of {files[0]} (seed {seed})",
                     sorted(dev_ids))


def held_out_rows(n_rows: int, seed: int) -> set[int]:
    """The rows of a single training file that become the dev set (seeded, so evaluation can recompute them)."""
    n_dev = max(1, round(n_rows * DEV_FRACTION)) if n_rows >= 2 else 0
    return set(random.Random(seed).sample(range(n_rows), n_dev))


def read_rows(path: Path) -> list[dict]:
    """Records (instruction/output), {prompt, completion} rows or {messages} conversations; every malformed row is
    listed by line."""
    rows, problems = [], []
    for lineno, row in enumerate(io.read_jsonl(path), 1):
        problem = row_problem(row)
        if problem:
            problems.append(f"line {lineno}: {problem}")
        rows.append(row)
    if problems:
        shown = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise InputFormatError(path, f"{len(problems)} row(s) are neither records, prompt/completion rows nor conversations:\n  - {shown}")
    if not rows:
        raise InputFormatError(path, "no rows")
    return rows


def row_problem(row: dict) -> str | None:
    """Why a row is not trainable (None when it is): what `llmft train --data` and `llmft eval --data` accept."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    if "prompt" in row or "completion" in row:
        keys = ("prompt", "completion")
    elif "messages" in row and "instruction" not in row:
        keys = ()
    else:
        keys = ("instruction", "output")
    bad = [k for k in keys if not isinstance(row.get(k), str)]
    if bad:
        return f"'{bad[0]}' is missing or not a string"
    if row.get("messages") or ("messages" in row and not keys):
        problems = message_problems(row["messages"])
        return "messages: " + "; ".join(problems) if problems else None
    return None

