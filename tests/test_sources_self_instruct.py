"""Self-Instruct reader: the real seed tasks (raw/self_instruct/seed_tasks.jsonl, 125 of 175) and hand-made
files in the formats of all_instances_82K.jsonl and gpt3_finetuning_data.jsonl (no real copy is available)."""
from __future__ import annotations

import collections
import json

import pytest

from llmft.errors import InputFormatError, LlmftError
from llmft.data.records import Record, Reject
from llmft.data.sources import convert, self_instruct


@pytest.fixture(scope="module")
def seed_records(raw_dir):
    out = list(self_instruct.read(raw_dir / "self_instruct" / "seed_tasks.jsonl"))
    assert all(isinstance(o, Record) for o in out)
    return {o.id: o for o in out}


def test_seed_tasks_counts(seed_records):
    assert len(seed_records) == 125
    assert sum(1 for r in seed_records.values() if r.input == "") == 42
    assert len({r.task for r in seed_records.values()}) == 125
    assert collections.Counter(r.meta["is_classification"] for r in seed_records.values()) == {False: 125}


def test_seed_task_0_field_by_field(seed_records):
    r = seed_records["self-instruct/seed_task_0/0"]
    assert (r.source, r.task, r.input) == ("self-instruct", "breakfast_suggestion", "")
    assert r.instruction == ("Is there anything I can eat for a breakfast that doesn't include eggs, yet includes "
                             "protein, and has roughly 700-1000 calories?")
    assert r.output.startswith("Yes, you can have 1 oatmeal banana protein shake and 4 strips of bacon.")
    assert r.output.endswith("The 4 strips of bacon contains about 200 calories.")
    assert r.references == [r.output]
    assert r.meta == {"seed_task": "seed_task_0", "instance_index": 0, "is_classification": False}


def test_seed_task_with_input(seed_records):
    r = seed_records["self-instruct/seed_task_1/0"]
    assert (r.task, r.instruction) == ("antonym_relation", "What is the relation between the given pairs?")
    assert (r.input, r.output) == ("Night : Day :: Right : Left",
                                   "The relation between the given pairs is that they are opposites.")


def test_ids_are_stable_across_runs(raw_dir, seed_records):
    again = list(convert("self-instruct", raw_dir / "self_instruct"))
    assert [o.to_dict() for o in again] == [r.to_dict() for r in seed_records.values()]


def _write_jsonl(path, rows):
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generated_instances_one_record_per_line(tmp_path):
    path = _write_jsonl(tmp_path / "all_instances_82K.jsonl", [
        {"instruction": "Give me a synonym for the word.", "input": "big", "output": "large"},
        "",
        {"instruction": "Write a haiku about autumn.", "input": "", "output": "Leaves drift slowly down\n..."},
        {"instruction": "Sort the numbers.", "input": "3, 1, 2"},
        {"instruction": "Name a colour.", "input": "", "output": "   "},
        {"instruction": "Count the words.", "input": ["a", "b"], "output": "2"},
        {"instruction": "Name a fruit.", "output": "apple"},
        {"id": "seed_task_9", "name": "mixed_in", "instruction": "Say yes.", "is_classification": True,
         "instances": [{"input": "", "output": "yes"}, {"input": "", "output": ""}]},
    ])
    out = list(self_instruct.read(path))
    kept = [o for o in out if isinstance(o, Record)]
    assert [(r.id, r.task, r.input, r.output) for r in kept] == [
        ("self-instruct/all_instances_82K/1", "self-instruct", "big", "large"),
        ("self-instruct/all_instances_82K/3", "self-instruct", "", "Leaves drift slowly down\n..."),
        ("self-instruct/all_instances_82K/7", "self-instruct", "", "apple"),
        ("self-instruct/seed_task_9/0", "mixed_in", "", "yes"),
    ]
    assert kept[3].meta["is_classification"] is True
    assert [(o.where, o.reason) for o in out if isinstance(o, Reject)] == [
        ("line 4", "missing field 'output'"), ("line 5", "empty output"), ("line 6", "field 'input' is not a string"),
        ("line 8 instance 1", "empty output"),
    ]


def test_finetuning_file_is_refused_with_a_pointer(tmp_path):
    path = _write_jsonl(tmp_path / "gpt3_finetuning_data.jsonl", [
        {"prompt": "Give me a synonym for the word.\n\nInput: big\n\nOutput:", "completion": " large<|endoftext|>"},
    ])
    with pytest.raises(LlmftError) as err:
        list(self_instruct.read(path))
    message = str(err.value)
    assert message.startswith(f"{path}, line 1: ")
    assert "cannot be split back into instruction and input" in message
    assert "all_instances_82K.jsonl" in message


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "seed_tasks.jsonl", [
        {"instruction": "Say hi.", "input": "", "output": "hi"}, '{"instruction": "Say hi.", "input": ',
    ])
    with pytest.raises(InputFormatError) as err:
        list(self_instruct.read(path))
    assert (err.value.path, err.value.line) == (path, 2)
    assert "malformed JSON" in str(err.value)


def test_seed_task_without_instances_is_rejected(tmp_path):
    path = _write_jsonl(tmp_path / "seed_tasks.jsonl", [
        {"id": "seed_task_5", "name": "empty", "instruction": "Do it.", "instances": [], "is_classification": False},
    ])
    assert [(o.where, o.reason) for o in self_instruct.read(path)] == [
        ("line 1", "field 'instances' is not a non-empty list")]
