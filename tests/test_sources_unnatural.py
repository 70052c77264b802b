"""Unnatural Instructions reader on a hand-written sample (tests/unnatural_fixture.py) in the dataset's schema,
as .jsonl and as the .zip files upstream ships."""
from __future__ import annotations

import json
import zipfile

import pytest

from llmft.config import DataConfig
from llmft.errors import InputFormatError
from llmft.data.records import Record, Reject
from llmft.data.sources import convert, unnatural_instructions
from unnatural_fixture import SCIENCE, SCIENCE_CONSTRAINTS, SCIENCE_INPUT, write_unnatural_fixture, write_zip_slip

SOURCE = "unnatural-instructions"


@pytest.fixture
def files(tmp_path):
    return write_unnatural_fixture(tmp_path)


def _run(path, **cfg):
    out = list(convert(SOURCE, path, DataConfig(**cfg)))
    return [o for o in out if isinstance(o, Record)], [o for o in out if isinstance(o, Reject)]


def test_core_one_record_per_instance(files):
    records, rejects = _run(files["core_jsonl"])
    assert [r.id for r in records] == [f"{SOURCE}/core_data/{x}" for x in ("1/0", "2/0", "2/1", "4/0")]
    assert [(r.where, r.reason) for r in rejects] == [("line 3 instance 0", "empty output")]
    first = records[0]
    assert (first.source, first.task, first.instruction, first.input, first.output, first.references) == (
        SOURCE, SOURCE, SCIENCE, SCIENCE_INPUT, "C", ["C"])
    assert first.meta == {"line": 1, "reformulation": False, "constraints": SCIENCE_CONSTRAINTS}


def test_core_ignores_the_reformulations_flag(files):
    assert [r.id for r in _run(files["core_jsonl"], reformulations=True)[0]] == \
        [r.id for r in _run(files["core_jsonl"])[0]]


def test_append_constraints(files):
    records, _ = _run(files["core_jsonl"], append_constraints=True)
    assert records[0].instruction == f"{SCIENCE}\n{SCIENCE_CONSTRAINTS}"
    assert records[0].meta["constraints"] == SCIENCE_CONSTRAINTS


def test_full_with_and_without_reformulations(files):
    records, rejects = _run(files["full_jsonl"])
    assert (len(records), len(rejects)) == (5, 0)
    records, rejects = _run(files["full_jsonl"], reformulations=True)
    assert [r.id.removeprefix(f"{SOURCE}/full_data/") for r in records] == [
        "1/0", "1/r0", "1/r1", "2/0", "2/1", "2/r0", "3/0", "4/0"]
    assert [(r.where, r.reason) for r in rejects] == [("line 2 reformulation 1", "missing field 'output'")]
    paraphrase = records[1]
    assert paraphrase.instruction.startswith("Given a science question with four options")
    assert (paraphrase.input, paraphrase.output) == (SCIENCE_INPUT, "C")
    assert paraphrase.meta == {"line": 1, "reformulation": True}


def test_reformulation_with_input_slot_uses_the_filled_instruction(files):
    records, _ = _run(files["full_jsonl"], reformulations=True)
    inline = next(r for r in records if r.id.endswith("/1/r1"))
    assert inline.instruction == f"Question: {SCIENCE_INPUT}\nReply with A, B, C or D only."
    assert inline.input == ""
    assert inline.meta["input_inline"] is True


def test_zip_gives_the_same_records_as_jsonl(files):
    for kind in ("core", "full"):
        plain = _run(files[f"{kind}_jsonl"], reformulations=True)
        zipped = _run(files[f"{kind}_zip"], reformulations=True)
        assert [r.to_dict() for r in zipped[0]] == [r.to_dict() for r in plain[0]]
        assert [(r.where, r.reason) for r in zipped[1]] == [(r.where, r.reason) for r in plain[1]]
    zipped_rejects = _run(files["core_zip"])[1]
    assert zipped_rejects[0].path == f"{files['core_zip']}:core_data.jsonl"


def test_units_of_a_folder(files):
    folder = files["core_jsonl"].parent
    assert unnatural_instructions.units(folder) == [files["core_jsonl"], files["full_jsonl"]]
    assert unnatural_instructions.units(folder / "zips") == [files["core_zip"], files["full_zip"]]


def test_ids_are_stable_across_runs(files):
    first = [r.to_dict() for r in _run(files["full_zip"], reformulations=True)[0]]
    assert first == [r.to_dict() for r in _run(files["full_zip"], reformulations=True)[0]]


@pytest.mark.parametrize("member", ["../evil.jsonl", "data/../../evil.jsonl", "/etc/evil.jsonl", "C:/evil.jsonl",
                                    "..\\evil.jsonl"])
def test_zip_slip_member_refuses_the_archive(tmp_path, member):
    path = write_zip_slip(tmp_path, member)
    with pytest.raises(InputFormatError, match="escapes the archive"):
        list(unnatural_instructions.read(path, DataConfig()))


def test_zip_skips_macos_metadata_and_needs_a_jsonl(tmp_path, files):
    path = tmp_path / "mac.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(files["core_jsonl"], "core_data.jsonl")
        archive.writestr("__MACOSX/._core_data.jsonl", b"\x00\x05\x16\x07")
        archive.writestr("README.txt", "not data")
    assert len(_run(path)[0]) == 4
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("README.txt", "not data")
    with pytest.raises(InputFormatError, match="archive holds no .jsonl member"):
        list(unnatural_instructions.read(empty, DataConfig()))


def test_malformed_line_inside_a_zip_names_member_and_line(tmp_path):
    path = tmp_path / "core_data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("core_data.jsonl", json.dumps({"instruction": "x", "instances": []}) + "\n{broken\n")
    with pytest.raises(InputFormatError) as err:
        list(unnatural_instructions.read(path, DataConfig()))
    assert str(err.value).startswith(f"{path}:core_data.jsonl, line 2: malformed JSON")


def test_line_level_problems_are_rejected(tmp_path):
    path = tmp_path / "core_data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"instruction": "x", "instances": []},
        ["not", "an", "object"],
        {"instances": [{"input": "a", "constraints": "", "output": "b"}]},
    ]) + "\n")
    assert [(r.where, r.reason) for r in _run(path)[1]] == [
        ("line 1", "field 'instances' is not a non-empty list"), ("line 2", "item is not an object"),
        ("line 3 instance 0", "missing field 'instruction'")]
