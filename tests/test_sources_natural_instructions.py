"""Super-NaturalInstructions reader on the real sample (raw/natural_instructions: 30 task files, 7,682 instances,
the official splits/default train and test lists)."""
from __future__ import annotations

import collections
import json
import shutil

import pytest

from llmft.config import DataConfig
from llmft.errors import InputFormatError, LlmftError
from llmft.data.records import Record, Reject
from llmft.data.sources import convert, natural_instructions

ENTAILMENT = "task1344_glue_entailment_classification"


def _split(out):
    out = list(out)
    return [o for o in out if isinstance(o, Record)], [o for o in out if isinstance(o, Reject)]


@pytest.fixture(scope="module")
def default_run(raw_dir):
    out = list(convert("natural-instructions", raw_dir / "natural_instructions", DataConfig()))
    records, rejects = _split(out)
    return out, {r.id: r for r in records}, rejects


def test_units(raw_dir):
    root = raw_dir / "natural_instructions"
    files = natural_instructions.units(root)
    assert len(files) == 30
    assert files == natural_instructions.units(root / "tasks") == sorted(files, key=lambda p: p.name)
    assert files[0].name == "task048_multirc_question_generation.json"
    assert natural_instructions.units(files[3]) == [files[3]]


def test_default_counts_english_only(default_run):
    out, records, rejects = default_run
    assert len(out) == 7682
    assert len(records) == 7082
    assert collections.Counter((r.reason, r.path.rsplit("/", 1)[-1]) for r in rejects) == {
        ("language not selected", "task1239_ted_translation_gl_ja.json"): 300,
        ("language not selected", "task1435_ro_sts_parallel_language_translation_ro_to_en.json"): 300,
    }
    assert rejects[0].where.startswith("instance task1239-") and set(rejects[0].item) == {"id", "index"}
    assert collections.Counter(r.meta["split_hint"] for r in records.values()) == {
        "train": 4733, "test": 1947, "excluded": 402}
    assert collections.Counter((r.meta["split_hint"], r.meta["official_eval"]) for r in records.values()) == {
        ("train", False): 4733, ("test", True): 800, ("test", False): 1147, ("excluded", False): 402}
    assert len({r.task for r in records.values()}) == 28


def test_instance_with_several_references(default_run):
    _, records, _ = default_run
    r = records["natural-instructions/task121-7f496a8fe142413f9b8b8c50b24932a3"]
    assert (r.source, r.task) == ("natural-instructions", "task121_zest_text_modification")
    assert r.instruction.startswith("In this task, you are given two questions about a domain.")
    assert r.instruction == r.meta["definitions"][0] and len(r.meta["definitions"]) == 1
    assert r.input == ("Did this president have both a son and a daughter? "
                       "What are the first names of the sons of this president?")
    assert r.output == "What are the names of the children of this president?"
    assert r.references == ["What are the names of the children of this president?",
                            "What are the first names of the daughters of this president?"]
    assert {k: r.meta[k] for k in ("instance_id", "instance_index", "split_hint", "official_eval", "categories",
                                   "domains", "source_datasets", "negative_examples")} == {
        "instance_id": "task121-7f496a8fe142413f9b8b8c50b24932a3", "instance_index": 73, "split_hint": "test",
        "official_eval": True, "categories": ["Question Rewriting"], "domains": ["Government and Politics"],
        "source_datasets": ["zest"], "negative_examples": 2}
    assert (r.meta["input_language"], r.meta["output_language"], r.meta["instruction_language"]) == (
        ["English"], ["English"], ["English"])
    assert r.meta["positive_examples"][0] == {
        "input": "What college did this president attend? Where did this president meet his wife?",
        "output": "Did this president meet his wife in college?",
        "explanation": 'This is a good question. By combining "meet wife" and "college" we get to a new question.'}
    assert len(r.meta["positive_examples"]) == 3


def test_reference_counts(default_run):
    _, records, _ = default_run
    counts = collections.Counter(len(r.references) for r in records.values())
    assert counts[1] == 5771 and counts[4] == 407 and sum(counts.values()) == 7082
    assert all(r.output == r.references[0] for r in records.values())


def test_official_eval_is_the_first_100_of_test_tasks(default_run):
    _, records, _ = default_run
    entail = sorted((r for r in records.values() if r.task == ENTAILMENT), key=lambda r: r.meta["instance_index"])
    assert len(entail) == 300
    assert [r.meta["official_eval"] for r in entail].count(True) == 100
    assert entail[99].meta["official_eval"] and not entail[100].meta["official_eval"]
    first = entail[0]
    assert first.id == "natural-instructions/task1344-e2e0b311e9054658a24644d11122ce31"
    assert (first.output, first.references) == ("0", ["0"])
    assert first.meta["positive_examples"][0]["output"] == "0"
    assert len(first.meta["positive_examples"]) == 4 and first.meta["negative_examples"] == 2


def test_control_character_in_a_reference(default_run):
    _, records, _ = default_run
    r = records["natural-instructions/task820-f3ebd3f752a948bfaf1617db4396f595"]
    assert r.references[0] == "â¦come,first served"   # mojibake upstream: the C1 character \x80 is dropped
    assert r.meta["control_chars_removed"] == {"output": 1}
    assert len(r.references) == 7


def test_language_selection(raw_dir):
    root = raw_dir / "natural_instructions"
    records, rejects = _split(convert("natural-instructions", root, DataConfig(languages=["all"])))
    assert (len(records), len(rejects)) == (7682, 0)
    records, rejects = _split(convert("natural-instructions", root, DataConfig(languages=["English", "Romanian"])))
    assert (len(records), len(rejects)) == (7382, 300)
    assert {r.path.rsplit("/", 1)[-1] for r in rejects} == {"task1239_ted_translation_gl_ja.json"}


def test_max_instances_per_task_caps_non_test_tasks(raw_dir):
    root = raw_dir / "natural_instructions"
    cfg = DataConfig(max_instances_per_task=50)
    records, rejects = _split(convert("natural-instructions", root, cfg))
    assert len(records) + len(rejects) == 7682
    assert collections.Counter(r.reason for r in rejects) == {
        "over max_instances_per_task": 4135, "language not selected": 600}
    per_task = collections.Counter(r.task for r in records)
    assert per_task[ENTAILMENT] == 300                      # test tasks are never capped
    assert per_task["task1319_country_by_barcode_prefix"] == 50
    assert per_task["task048_multirc_question_generation"] == 50   # excluded tasks are capped too
    assert len(records) == 1947 + 20 * 50

    again = [r.id for r in _split(convert("natural-instructions", root, cfg))[0]]
    assert again == [r.id for r in records]
    other_seed = {r.id for r in _split(convert("natural-instructions", root, DataConfig(max_instances_per_task=50,
                                                                                         seed=1)))[0]}
    assert len(other_seed) == len(records) and other_seed != set(again)


def test_negative_cap_is_an_error(raw_dir):
    with pytest.raises(LlmftError, match="max_instances_per_task must be >= 0"):
        list(convert("natural-instructions", raw_dir / "natural_instructions", DataConfig(max_instances_per_task=-1)))


def test_ids_are_stable_across_runs(raw_dir, default_run):
    out, _, _ = default_run
    again = list(convert("natural-instructions", raw_dir / "natural_instructions" / "tasks", DataConfig()))
    assert [o.to_dict() for o in again] == [o.to_dict() for o in out]


def _task(instances, **extra):
    task = {"Definition": ["Answer the question.", "A second wording."], "Input_language": ["English"],
            "Output_language": ["English"], "Instruction_language": ["English"], "Categories": ["Question Answering"],
            "Positive Examples": [{"input": "1+1?", "output": "2", "explanation": "Sum."}],
            "Negative Examples": [], "Instances": instances}
    task.update(extra)
    return task


def test_split_lists_next_to_the_tasks_folder(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "splits" / "default").mkdir(parents=True)
    for name in ("task001_a", "task002_b", "task003_c", "task004_d"):
        instances = [{"id": f"{name[:7]}-{i}", "input": f"q{i}", "output": [f"a{i}"]} for i in range(3)]
        (tmp_path / "tasks" / f"{name}.json").write_text(json.dumps(_task(instances)))
    (tmp_path / "splits" / "default" / "train_tasks.txt").write_text("task001_a\n")
    (tmp_path / "splits" / "default" / "test_tasks.txt").write_text("task002_b\n")
    (tmp_path / "splits" / "default" / "excluded_tasks.txt").write_text("task003_c\n")
    records, _ = _split(convert("natural-instructions", tmp_path, DataConfig(test_instances_per_task=2)))
    hints = {(r.task, r.meta["split_hint"], r.meta["official_eval"]) for r in records}
    assert hints == {("task001_a", "train", False), ("task002_b", "test", True), ("task002_b", "test", False),
                     ("task003_c", "excluded", False), ("task004_d", "excluded", False)}
    assert [r.meta["official_eval"] for r in records if r.task == "task002_b"] == [True, True, False]
    assert records[0].instruction == "Answer the question."
    assert records[0].meta["definitions"] == ["Answer the question.", "A second wording."]


def test_no_split_lists_gives_no_hint(raw_dir, tmp_path):
    shutil.copy(raw_dir / "natural_instructions" / "tasks" / f"{ENTAILMENT}.json", tmp_path)
    records, _ = _split(natural_instructions.read(tmp_path / f"{ENTAILMENT}.json", DataConfig()))
    assert len(records) == 300
    assert {(r.meta["split_hint"], r.meta["official_eval"]) for r in records} == {(None, False)}


def test_bad_instances_are_rejected_with_reasons(tmp_path):
    path = tmp_path / "task900_made_up.json"
    path.write_text(json.dumps(_task([
        {"id": "task900-0", "input": "q", "output": ["a", "b"]},
        {"id": "task900-1", "input": "q", "output": []},
        {"id": "task900-2", "input": "q"},
        {"id": "task900-3", "input": "q", "output": ["", "  "]},
        {"id": "task900-4", "input": 7, "output": ["a"]},
        {"input": "q", "output": ["a"]},
        {"id": "task900-6", "input": "q", "output": [1]},
        {"id": "task900-7", "input": "q", "output": ["", "b"]},
    ])))
    records, rejects = _split(natural_instructions.read(path, DataConfig()))
    assert [(r.id, r.output, r.references) for r in records] == [
        ("natural-instructions/task900-0", "a", ["a", "b"]), ("natural-instructions/task900-7", "b", ["b"])]
    assert [(r.where, r.reason) for r in rejects] == [
        ("instance task900-1", "no reference output"), ("instance task900-2", "missing field 'output'"),
        ("instance task900-3", "empty output"), ("instance task900-4", "field 'input' is not a string"),
        ("instance index 5", "missing field 'id'"), ("instance task900-6", "field 'output' is not a list of strings"),
    ]


def test_malformed_task_file_names_file_and_line(tmp_path):
    path = tmp_path / "task901_broken.json"
    path.write_text('{\n    "Definition": ["x"],\n    "Instances": [\n        {"id": "a", "input": }\n    ]\n}')
    with pytest.raises(InputFormatError) as err:
        list(natural_instructions.read(path, DataConfig()))
    assert (err.value.path, err.value.line) == (path, 4)
    path.write_text(json.dumps({"Definition": ["x"], "Instances": {"id": "a"}}))
    with pytest.raises(InputFormatError, match="field 'Instances' is missing or not a list"):
        list(natural_instructions.read(path, DataConfig()))
