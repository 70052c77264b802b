"""Super-NaturalInstructions task files (`tasks/taskNNN_name.json`), one record per instance.

task = the file stem; instruction = the first Definition string (what the Tk-Instruct encoding uses; all of
them are kept in meta `definitions`); output = the first reference, references = all of them. The official
`splits/default/{train,test,excluded}_tasks.txt` beside the tasks folder give meta `split_hint`; in test tasks
the first `test_instances_per_task` instances are the official evaluation set (meta `official_eval`).

Every instance read is either a record or a reject, so converted = kept + rejected: a task whose languages are
not selected gives one "language not selected" reject per instance, and instances beyond
`max_instances_per_task` (a seeded sample of each non-test task is kept) give "over max_instances_per_task".
An item for `to_records` is one instance, with the task's `TaskInfo` as context.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from llmft.config import DataConfig
from llmft.errors import InputFormatError, LlmftError
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources.base import (
    SkipItem,
    TextFields,
    check_output,
    clean_text,
    decode_utf8,
    expand_units,
    has_surrogate,
    load_json_document,
)

# Rejects that follow from a selection the user made, not from bad input: `--strict` does not fail on them.
POLICY_REASONS = frozenset({"language not selected", "over max_instances_per_task"})

SOURCE = "natural-instructions"
LANGUAGE_FIELDS = ("Instruction_language", "Input_language", "Output_language")
# Task-level fields kept in meta: each a string or a list of strings (or absent).
TEXT_LIST_FIELDS = ("Definition", *LANGUAGE_FIELDS, "Categories", "Domains", "Source", "Reasoning", "Instance License")
EXAMPLE_FIELDS = ("Positive Examples", "Negative Examples")
SPLIT_FILES = (("train", "train_tasks.txt"), ("test", "test_tasks.txt"), ("excluded", "excluded_tasks.txt"))
ALL_LANGUAGES = {"all", "*"}


@dataclass
class TaskInfo:
    """What every instance of one task shares."""
    name: str
    definitions: list[str]
    meta: dict = field(default_factory=dict)
    split_hint: str | None = None
    test_instances: int = 100


def to_records(item, *, task: TaskInfo, index: int) -> list[Record]:
    fields = TextFields(item)
    instance_id = item.get("id")
    if not isinstance(instance_id, str) or not instance_id:
        raise SkipItem("missing field 'id'")
    if not task.definitions or not task.definitions[0]:
        raise SkipItem("empty Definition")
    input_text = fields.text("input", required=False)
    references = _references(fields, item)
    check_output(references[0])
    meta = {
        **task.meta,
        "definitions": task.definitions,
        "instance_id": instance_id,
        "instance_index": index,
        "split_hint": task.split_hint,
        "official_eval": task.split_hint == "test" and index < task.test_instances,
        **fields.meta(),
    }
    return [Record(stable_id(SOURCE, instance_id), SOURCE, task.name, task.definitions[0], input_text,
                   references[0], references, meta)]


def _references(fields: TextFields, item: dict) -> list[str]:
    outputs = item.get("output")
    if outputs is None:
        raise SkipItem("missing field 'output'")
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise SkipItem("field 'output' is not a list of strings")
    if not outputs:
        raise SkipItem("no reference output")
    references = [fields.clean("output", o) for o in outputs]
    return [r for r in references if r] or [""]


def task_info(path: Path, task: dict, cfg: DataConfig) -> TaskInfo:
    definitions = task.get("Definition") or []
    if isinstance(definitions, str):
        definitions = [definitions]
    definitions = [clean_text(d)[0] for d in definitions if isinstance(d, str)]
    meta = {
        "categories": task.get("Categories", []),
        "domains": task.get("Domains", []),
        "source_datasets": task.get("Source", []),
        "reasoning": task.get("Reasoning", []),
        "instruction_language": task.get("Instruction_language", []),
        "input_language": task.get("Input_language", []),
        "output_language": task.get("Output_language", []),
        "instance_license": task.get("Instance License", []),
        "positive_examples": _examples(task.get("Positive Examples")),
        "negative_examples": len(task.get("Negative Examples") or []),
    }
    return TaskInfo(path.stem, definitions, meta, split_hint(path), cfg.test_instances_per_task)


def _examples(examples) -> list[dict]:
    """Positive examples as [{input, output, explanation}] (cleaned like instance text)."""
    def text(value) -> str:
        return clean_text(value)[0] if isinstance(value, str) else ""

    return [{key: text(ex.get(key)) for key in ("input", "output", "explanation")}
            for ex in examples or [] if isinstance(ex, dict)]


def task_problem(task: dict) -> str | None:
    """What makes a task's shared fields unusable (every instance is then rejected with it), or None."""
    for key in TEXT_LIST_FIELDS:
        value = task.get(key)
        values = [value] if isinstance(value, str) else value
        if value is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            return f"task field '{key}' is not a string or a list of strings"
        if value is not None and any(has_surrogate(v) for v in values):
            return f"task field '{key}' is not valid Unicode (a lone surrogate)"
    for key in EXAMPLE_FIELDS:
        examples = task.get(key)
        if examples is not None and (not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples)):
            return f"task field '{key}' is not a list of objects"
    return None


def languages_selected(task: dict, cfg: DataConfig) -> bool:
    """Every language the task declares for its instruction, input and output must be selected."""
    selected = set(cfg.languages)
    if not selected or selected & ALL_LANGUAGES:
        return True
    for key in LANGUAGE_FIELDS:
        declared = task.get(key) or []
        if isinstance(declared, str):
            declared = [declared]
        if not set(declared) <= selected:
            return False
    return True


# ---------------------------------------------------------------- official splits


def splits_folder(task_file: Path) -> Path | None:
    """`<root>/splits/default` for a task file in `<root>/tasks/` (or directly in `<root>/`)."""
    for root in (task_file.parent.parent, task_file.parent):
        folder = root / "splits" / "default"
        if folder.is_dir():
            return folder
    return None


@functools.lru_cache(maxsize=8)
def _split_lists(folder: Path) -> dict[str, str]:
    """task name -> split name, from whichever of the list files exist."""
    membership: dict[str, str] = {}
    for split, filename in SPLIT_FILES:
        file = folder / filename
        if file.is_dir():
            raise InputFormatError(file, "is a folder; a split list is a text file of task names, one per line")
        if file.is_file():
            data = file.read_bytes()
            for name in decode_utf8(data[3:] if data.startswith(b"\xef\xbb\xbf") else data, file).split():
                membership.setdefault(name, split)
    return membership


def split_hint(task_file: Path) -> str | None:
    """train / test / excluded from the official lists (a task in neither list is excluded); None without lists."""
    folder = splits_folder(task_file)
    if folder is None:
        return None
    return _split_lists(folder.resolve()).get(task_file.stem, "excluded")


# ---------------------------------------------------------------- reading


def _load_task(path: Path) -> dict:
    task = load_json_document(path)
    if not isinstance(task, dict):
        raise InputFormatError(path, f"expected a task object, got {type(task).__name__}")
    if not isinstance(task.get("Instances"), list):
        raise InputFormatError(path, "field 'Instances' is missing or not a list")
    return task


def _capped_indices(info: TaskInfo, valid: list[int], cfg: DataConfig) -> set[int]:
    cap = cfg.max_instances_per_task
    if cap is not None and cap < 0:
        raise LlmftError(f"max_instances_per_task must be >= 0, got {cap}")
    if cap is None or info.split_hint == "test" or len(valid) <= cap:
        return set(valid)
    return set(random.Random(f"{cfg.seed}/{info.name}").sample(valid, cap))


def read(path: Path, cfg: DataConfig) -> Iterator[Record | Reject]:
    path = Path(path)
    task = _load_task(path)
    instances = task["Instances"]
    problem = task_problem(task)
    if problem is not None:
        for index, instance in enumerate(instances):
            yield _reject(path, index, instance, problem, brief=True)
        return
    if not languages_selected(task, cfg):
        for index, instance in enumerate(instances):
            yield _reject(path, index, instance, "language not selected", brief=True)
        return
    info = task_info(path, task, cfg)
    converted: dict[int, Record | Reject] = {}
    for index, instance in enumerate(instances):
        try:
            converted[index] = to_records(instance, task=info, index=index)[0]
        except SkipItem as skip:
            converted[index] = _reject(path, index, instance, skip.reason)
    valid = [i for i, r in converted.items() if isinstance(r, Record)]
    keep = _capped_indices(info, valid, cfg)
    for index, out in converted.items():
        if isinstance(out, Record) and index not in keep:
            out = _reject(path, index, instances[index], "over max_instances_per_task", brief=True)
        yield out


def _reject(path: Path, index: int, instance, reason: str, brief: bool = False) -> Reject:
    """`brief` rejects (whole-task decisions) carry only the instance id, not its text."""
    instance_id = instance.get("id") if isinstance(instance, dict) else None
    instance_id = instance_id if isinstance(instance_id, str) else None
    where = f"instance {instance_id}" if instance_id else f"instance index {index}"
    item = {"id": instance_id, "index": index} if brief else instance
    return Reject(SOURCE, str(path), where, reason, item)


def units(path: Path, cfg: DataConfig | None = None) -> list[Path]:
    """A task file, or every task*.json in `<root>/tasks` (given `<root>` or `<root>/tasks`)."""
    path = Path(path)
    if path.is_dir() and (path / "tasks").is_dir():
        path = path / "tasks"
    return expand_units(path, ("task*.json",))
