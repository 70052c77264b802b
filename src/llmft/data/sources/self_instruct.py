"""Self-Instruct (yizhongw/self-instruct), JSON Lines, format detected per line by its keys:

- generated instances (`all_instances_82K.jsonl`): {instruction, input, output} -> one record;
  id `self-instruct/<file stem>/<line>`, task `self-instruct`.
- seed tasks (`seed_tasks.jsonl`): {id, name, instruction, instances: [{input, output}], is_classification}
  -> one record per instance; id `self-instruct/<seed id>/<instance index>`, task = the seed task's name.
- the GPT-3 fine-tuning file (`gpt3_finetuning_data.jsonl`, {prompt, completion}) is refused: its prompts
  cannot be split back into instruction and input.

An item for `to_records` is one generated-instance line, or one seed-task instance (with its task as context).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from llmft.config import DataConfig
from llmft.errors import LlmftError
from llmft.data.records import Record, Reject, stable_id
from llmft.data.sources.base import SkipItem, TextFields, check_instruction, check_output, expand_units, iter_jsonl

SOURCE = "self-instruct"


def to_records(item, *, stem: str = "", line: int = 0, seed_task: dict | None = None, index: int = 0) -> list[Record]:
    """One generated instance (id from file stem and line), or instance `index` of `seed_task`."""
    fields = TextFields(item)
    if seed_task is None:
        instruction = fields.text("instruction")
        rid, task, meta = stable_id(SOURCE, stem, line), SOURCE, {"line": line}
    else:
        instruction = fields.text("instruction", source=seed_task)
        seed_id = _seed_id(seed_task)
        rid, task = stable_id(SOURCE, seed_id, index), _seed_name(seed_task) or seed_id
        meta = {"seed_task": seed_id, "instance_index": index, "is_classification": _is_classification(seed_task)}
    input_text = fields.text("input", required=False)
    output = fields.text("output")
    check_instruction(instruction)
    check_output(output)
    meta.update(fields.meta())
    return [Record(rid, SOURCE, task, instruction, input_text, output, [output], meta)]


def _seed_id(seed_task: dict) -> str:
    seed_id = seed_task.get("id")
    if not isinstance(seed_id, str) or not seed_id:
        raise SkipItem("missing field 'id'")
    return seed_id


def _seed_name(seed_task: dict) -> str:
    name = seed_task.get("name")
    if name is not None and not isinstance(name, str):
        raise SkipItem("field 'name' is not a string")
    return name or ""


# The seed file has JSON booleans; a hand-edited one may spell them. Anything else is refused, not guessed at
# (bool("no") is True).
_BOOLEAN_WORDS = {"true": True, "yes": True, "false": False, "no": False}


def _is_classification(seed_task: dict) -> bool:
    value = seed_task.get("is_classification", False)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.strip().lower()]
    if value is None or isinstance(value, bool):
        return bool(value)
    raise SkipItem("field 'is_classification' is not true or false")


def _refuse_finetuning_file(path: Path, line: int) -> None:
    raise LlmftError(
        f"{path}, line {line}: this is the Self-Instruct GPT-3 fine-tuning file ({{prompt, completion}} pairs); "
        "its prompts cannot be split back into instruction and input. Convert the generated instances instead: "
        "data/gpt3_generations/batch_221203/all_instances_82K.jsonl (and data/seed_tasks.jsonl for the seed tasks)."
    )


def _line_records(path: Path, line: int, item) -> Iterator[Record | Reject]:
    if isinstance(item, dict) and "instances" in item:
        yield from _seed_task_records(path, line, item)
        return
    if isinstance(item, dict) and "prompt" in item and "completion" in item and "instruction" not in item:
        _refuse_finetuning_file(path, line)
    try:
        yield from to_records(item, stem=path.stem, line=line)
    except SkipItem as skip:
        yield Reject(SOURCE, str(path), f"line {line}", skip.reason, item)


def _seed_task_records(path: Path, line: int, task: dict) -> Iterator[Record | Reject]:
    instances = task["instances"]
    if not isinstance(instances, list) or not instances:
        yield Reject(SOURCE, str(path), f"line {line}", "field 'instances' is not a non-empty list", task)
        return
    for index, instance in enumerate(instances):
        try:
            yield from to_records(instance, seed_task=task, index=index)
        except SkipItem as skip:
            where = f"line {line} instance {index}"
            yield Reject(SOURCE, str(path), where, skip.reason, {"task": task.get("id"), "instance": instance})


def read(path: Path, cfg: DataConfig | None = None) -> Iterator[Record | Reject]:
    path = Path(path)
    with open(path, "rb") as f:
        for line, item in iter_jsonl(f, path, (cfg or DataConfig()).max_line_bytes):
            yield from _line_records(path, line, item)


def units(path: Path, cfg: DataConfig | None = None) -> list[Path]:
    return expand_units(path, ("*.jsonl",))
