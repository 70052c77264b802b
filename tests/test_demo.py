"""The demo data generator: deterministic, real schemas, correct answers, held-out test tasks."""
from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path

import pytest

from llmft.cli import main
from llmft.data import demo

INSTANCES = 12


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.write_demo(out, seed=3, instances=INSTANCES)
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _ni_tasks(root: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text("utf-8")) for p in (root / "natural_instructions" / "tasks").glob("*.json")}


def _split(root: Path, name: str) -> list[str]:
    return (root / "natural_instructions" / "splits" / "default" / f"{name}_tasks.txt").read_text().splitlines()


def test_same_seed_gives_byte_identical_files(demo_dir, tmp_path):
    assert main(["data", "demo", "--out", str(tmp_path), "--seed", "3", "--instances", str(INSTANCES)]) == 0
    assert _all_files(tmp_path) == _all_files(demo_dir)


def test_other_seed_changes_the_data(demo_dir, tmp_path):
    demo.write_demo(tmp_path, seed=4, instances=INSTANCES)
    first, second = _all_files(demo_dir), _all_files(tmp_path)
    assert first.keys() == second.keys()
    assert first["alpaca/alpaca_data.json"] != second["alpaca/alpaca_data.json"]


def test_file_layout_and_counts(demo_dir):
    files = _all_files(demo_dir)
    assert len(files) == 1 + 25 + 2 + 1 + 1 + 1      # + the chat conversations, the .llmft.json marker
    alpaca = json.loads(files["alpaca/alpaca_data.json"])
    assert len(alpaca) == 8 * INSTANCES
    lines = (demo_dir / "unnatural_instructions" / "core_data.jsonl").read_text("utf-8").splitlines()
    assert sum(len(json.loads(line)["instances"]) for line in lines) == 7 * INSTANCES
    assert sum(len(t["Instances"]) for t in _ni_tasks(demo_dir).values()) == 25 * INSTANCES
    assert sum(len(f) for f in files.values()) < 2_000_000


def test_alpaca_serialised_like_upstream(demo_dir, raw_dir):
    text = (demo_dir / "alpaca" / "alpaca_data.json").read_text("utf-8")
    records = json.loads(text)
    assert text == json.dumps(records, indent=4)          # 4-space indent, ASCII escapes, no final newline
    real = json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text("utf-8"))
    assert {tuple(r) for r in records} == {tuple(r) for r in real} == {("instruction", "input", "output")}
    empty_inputs = [r for r in records if r["input"] == ""]
    assert 0 < len(empty_inputs) < len(records)
    assert all(isinstance(v, str) and v for r in records for k, v in r.items() if k != "input")


def test_natural_instructions_has_the_real_schema(demo_dir, raw_dir):
    real = json.loads((raw_dir / "natural_instructions" / "tasks" / "task1319_country_by_barcode_prefix.json")
                      .read_text("utf-8"))
    for name, task in _ni_tasks(demo_dir).items():
        assert list(task) == list(real), name                     # same keys, same order
        path = demo_dir / "natural_instructions" / "tasks" / f"{name}.json"
        assert path.read_text("utf-8") == json.dumps(task, indent=4, ensure_ascii=False)
        for key, value in task.items():
            assert type(value) is type(real[key]), (name, key)
        assert len(task["Definition"]) == 1 and task["Input_language"] == ["English"]
        for example in task["Positive Examples"] + task["Negative Examples"]:
            assert set(example) == set(real["Positive Examples"][0])
        for instance in task["Instances"]:
            assert set(instance) == set(real["Instances"][0])
            assert instance["id"].startswith(name.split("_")[0] + "-")
            assert isinstance(instance["output"], list) and len(instance["output"]) == 1
        assert len({i["id"] for i in task["Instances"]}) == INSTANCES


def test_unnatural_core_schema(demo_dir):
    for line in (demo_dir / "unnatural_instructions" / "core_data.jsonl").read_text("utf-8").splitlines():
        row = json.loads(line)
        assert list(row) == ["instruction", "instances"]          # core: no reformulations
        assert 1 <= len(row["instances"]) <= 3
        for inst in row["instances"]:
            assert list(inst) == ["instruction_with_input", "input", "constraints", "output"]
            assert inst["instruction_with_input"] == f"{row['instruction']}\n{inst['input']}"


def test_test_tasks_are_held_out_siblings(demo_dir):
    train, test = _split(demo_dir, "train"), _split(demo_dir, "test")
    assert len(train) == 16 and len(test) == 9
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(_ni_tasks(demo_dir))
    assert "task9017_demo_uppercase_sentence" in test and "task9001_demo_uppercase_word" in train
    for task in demo.TASKS:
        if task.where == demo.NI_TEST:
            assert demo.TASK_BY_NAME[task.sibling_of].where != demo.NI_TEST, task.name


def _ni_pairs(root: Path, task: str) -> list[tuple[str, str]]:
    data = _ni_tasks(root)[demo.ni_task_name(demo.TASK_BY_NAME[task])]
    return [(i["input"], i["output"][0]) for i in data["Instances"]]


def test_answers_recomputed_from_the_files(demo_dir):
    for inp, out in _ni_pairs(demo_dir, "add_three_numbers"):
        assert int(out) == sum(int(x) for x in inp.split(", "))
    for inp, out in _ni_pairs(demo_dir, "sort_numbers_ascending"):
        assert [int(x) for x in out.split(", ")] == sorted(int(x) for x in inp.split(", "))
    for inp, out in _ni_pairs(demo_dir, "date_us_to_iso"):
        month, day, year = (int(x) for x in inp.split("/"))
        assert out == date(year, month, day).isoformat()
    for inp, out in _ni_pairs(demo_dir, "month_of_date"):
        assert out == date.fromisoformat(inp).strftime("%B")
    for inp, out in _ni_pairs(demo_dir, "acronym"):
        assert out == "".join(w[0] for w in inp.split()).upper()
    for inp, out in _ni_pairs(demo_dir, "extract_name"):
        assert [w for w in inp.split() if w[0].isupper()] == [out]
    for inp, out in _ni_pairs(demo_dir, "review_sentiment"):
        assert out == ("positive" if inp.split()[-1] in demo.POSITIVE_WORDS else "negative")
    rows = [json.loads(line) for line in
            (demo_dir / "unnatural_instructions" / "core_data.jsonl").read_text("utf-8").splitlines()]
    vowel_free = [i for r in rows for i in r["instances"] if "vowel" in r["instruction"]]
    assert len(vowel_free) == INSTANCES
    for inst in vowel_free:
        assert inst["output"] == "".join(c for c in inst["input"] if c not in "aeiou")


def test_alpaca_inline_records_carry_the_input_in_the_instruction(demo_dir):
    records = json.loads((demo_dir / "alpaca" / "alpaca_data.json").read_text("utf-8"))
    multiply = [r for r in records if r["instruction"].startswith("Multiply ") and r["input"] == ""]
    assert multiply
    for r in multiply:
        a, b = r["instruction"].removeprefix("Multiply ").removesuffix(".").split(" and ")
        assert r["output"] == str(int(a) * int(b))


def test_task_functions_are_pure_and_exact():
    assert demo.make_reverse_word(random.Random(1)) == demo.make_reverse_word(random.Random(1))
    rng = random.Random(0)
    for _ in range(20):
        values, answer = demo.make_dedupe_list(rng)
        seen = []
        for v in values.split(", "):
            if v not in seen:
                seen.append(v)
        assert answer == ", ".join(seen) and len(seen) < len(values.split(", "))
    for _ in range(20):
        word, answer = demo.make_vowel_start(rng)
        assert answer == ("vowel" if word[0] in "aeiou" else "consonant")
    assert len(demo.TASKS) == 40 and len(demo.TASK_BY_NAME) == 40
    assert all(len(t.make(random.Random(5))[1].split()) <= 6 for t in demo.TASKS)   # short answers


def test_instances_must_be_positive(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path), "--instances", "0"]) == 2
    assert "--instances must be at least 1" in capsys.readouterr().err


def test_demo_data_converts_with_zero_rejects(demo_dir):
    from llmft.data.records import Reject
    from llmft.data.sources import convert

    inputs = {
        "alpaca": demo_dir / "alpaca" / "alpaca_data.json",
        "natural-instructions": demo_dir / "natural_instructions",
        "unnatural-instructions": demo_dir / "unnatural_instructions" / "core_data.jsonl",
    }
    converted = {source: list(convert(source, path)) for source, path in inputs.items()}
    rejects = [item for items in converted.values() for item in items if isinstance(item, Reject)]
    assert rejects == []
    assert {source: len(items) for source, items in converted.items()} == {
        "alpaca": 8 * INSTANCES, "natural-instructions": 25 * INSTANCES, "unnatural-instructions": 7 * INSTANCES}
    ni = converted["natural-instructions"]
    hints = {r.task: r.meta["split_hint"] for r in ni}
    assert sorted(t for t, h in hints.items() if h == "test") == sorted(_split(demo_dir, "test"))
    assert sorted(t for t, h in hints.items() if h == "train") == sorted(_split(demo_dir, "train"))
    first = next(r for r in ni if r.task == "task9001_demo_uppercase_word")
    assert first.output == first.input.upper() and first.references == [first.output]
    assert sum(r.input == "" for r in converted["alpaca"]) == sum(
        r["input"] == "" for r in json.loads((inputs["alpaca"]).read_text("utf-8")))
