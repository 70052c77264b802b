"""Alpaca reader on the real 2,000-record sample (raw/alpaca/alpaca_data.json) and on small hand-made files."""
from __future__ import annotations

import collections
import io
import json

import pytest

from llmft.errors import InputFormatError
from llmft.data.records import Record, Reject
from llmft.data.sources import SOURCES, alpaca, convert
from llmft.data.sources.base import iter_json_array


@pytest.fixture(scope="module")
def converted(raw_dir):
    out = list(alpaca.read(raw_dir / "alpaca" / "alpaca_data.json"))
    records = {o.id: o for o in out if isinstance(o, Record)}
    rejects = [o for o in out if isinstance(o, Reject)]
    return out, records, rejects


def test_counts_on_real_sample(converted):
    out, records, rejects = converted
    assert len(out) == 2000
    assert len(records) == 1969
    assert collections.Counter(r.reason for r in rejects) == {"empty output": 16, "<nooutput> output": 15}
    empty = [int(r.where.removeprefix("index ")) for r in rejects if r.reason == "empty output"]
    assert empty == [284, 1223, 1347, 1736, 1821, 1834, 1835, 1856, 1888, 1889, 1903, 1916, 1928, 1968, 1977, 1987]
    nooutput = {r.where: r.item["output"] for r in rejects if r.reason == "<nooutput> output"}
    assert nooutput["index 8"] == "<nooutput> This type of instruction cannot be fulfilled by a GPT model."
    assert nooutput["index 1817"] == "<nooutput>"
    assert all(r.source == "alpaca" and r.path.endswith("alpaca_data.json") for r in rejects)


def test_first_record_field_by_field(converted):
    _, records, _ = converted
    r = records["alpaca/0"]
    assert (r.source, r.task, r.instruction, r.input) == ("alpaca", "alpaca", "Give three tips for staying healthy.", "")
    assert r.output == (
        "1.Eat a balanced diet and make sure to include plenty of fruits and vegetables. \n"
        "2. Exercise regularly to keep your body active and strong. \n"
        "3. Get enough sleep and maintain a consistent sleep schedule."
    )
    assert r.references == [r.output]
    assert r.meta == {"index": 0}


def test_placeholder_inputs_become_empty(converted):
    _, records, _ = converted
    found = collections.Counter(r.meta["input_placeholder"] for r in records.values() if "input_placeholder" in r.meta)
    assert found == {
        "No input": 39, "Noinput": 29, "No input.": 22, "<no input>": 18, "No Input": 16, "noinput": 11,
        "`<noinput>`": 4, "No input required.": 4, "<No input>": 4, "NoInput": 3, "<noinput>.": 3, "<noinput": 2,
        '"<noinput>"': 2, "N/A": 2, "<none>": 2, "<Noinput>.": 2, "\\<noinput>": 2, "no input": 1, "NA": 1,
        "<noinput>,": 1, "< noinput >": 1, "none": 1, "No input required": 1, "<No Input>": 1, "None": 1,
    }
    assert sum(found.values()) == 173
    assert all(records[i].input == "" for i in ("alpaca/1800", "alpaca/1884", "alpaca/1969", "alpaca/1992"))
    assert sum(1 for r in records.values() if r.input == "") == 1019 - 16 + 173  # 16 rejected items had ""


def test_inputs_that_only_contain_a_placeholder_word_are_kept(converted):
    _, records, _ = converted
    assert records["alpaca/1906"].input == "Larry <noinput> the door."
    assert records["alpaca/1926"].input == "[3, 4, <noinput>]"
    assert "input_placeholder" not in records["alpaca/1906"].meta


@pytest.mark.parametrize("text, expected", [
    ("No input", True), ("'N/A'", True), ("<NONE>", True), ("  no   input  ", True), ("Na", False),
    ("None of the above", False), ("n/a.", True), ("", False), ("Nothing", False),
])
def test_placeholder_rule(text, expected):
    assert alpaca.is_placeholder_input(text) is expected


def test_control_characters_are_stripped_and_recorded(converted):
    _, records, _ = converted
    r = records["alpaca/1910"]
    assert r.meta == {"index": 1910, "control_chars_removed": {"output": 20}}
    assert r.output.endswith("Let us work together to create a future, free from discrimination and inequality.")
    assert not any(ord(c) < 32 and c not in "\n\t" for c in r.output)
    assert sum(1 for rec in records.values() if "control_chars_removed" in rec.meta) == 1


def test_cjk_text_is_kept_exactly(converted):
    _, records, _ = converted
    assert records["alpaca/1804"].output == "彼女は優秀な教師です。"
    assert records["alpaca/1885"].input == "他坚持不懈。"
    assert records["alpaca/1964"].instruction == "Find English translation of the following Korean phrase - 장보기"
    assert records["alpaca/1314"].output.startswith("The nearest restaurant to Brooklyn, NY is Nju是 Popular")


def test_ids_are_stable_across_runs(raw_dir, converted):
    out, _, _ = converted
    again = list(convert("alpaca", raw_dir / "alpaca", None))
    assert [o.to_dict() for o in again] == [o.to_dict() for o in out]
    assert [o.id for o in out if isinstance(o, Record)][:3] == ["alpaca/0", "alpaca/1", "alpaca/2"]


def test_jsonl_form_gives_the_same_records(raw_dir, tmp_path):
    items = json.loads((raw_dir / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8"))[:10]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items[:5]) + "\n\n" + "\n".join(json.dumps(i) for i in items[5:]))
    from_jsonl = list(alpaca.read(path))
    from_array = list(alpaca.read(raw_dir / "alpaca" / "alpaca_data.json"))[:10]
    assert [o.to_dict() for o in from_jsonl if isinstance(o, Record)] == \
        [o.to_dict() for o in from_array if isinstance(o, Record)]
    assert [(o.where, o.reason) for o in from_jsonl if isinstance(o, Reject)] == [("line 10", "<nooutput> output")]


def test_item_problems_are_rejected_with_reasons(tmp_path):
    path = tmp_path / "bad.json"
    items = [
        {"instruction": "Say hi.", "output": "Hi"},                       # no input: fine, ""
        {"instruction": "Say hi.", "input": ""},                          # no output
        {"instruction": "Say hi.", "input": 3, "output": "Hi"},
        {"instruction": "  ", "input": "", "output": "Hi"},
        ["not", "an", "object"],
        {"instruction": "Say hi.", "input": None, "output": "\x07Hi\r\nthere\x00"},
    ]
    path.write_text(json.dumps(items, indent=2))
    out = list(alpaca.read(path))
    assert [(o.where, o.reason) for o in out if isinstance(o, Reject)] == [
        ("index 1", "missing field 'output'"), ("index 2", "field 'input' is not a string"),
        ("index 3", "empty instruction"), ("index 4", "item is not an object"),
    ]
    kept = [o for o in out if isinstance(o, Record)]
    assert [(r.id, r.input, r.output) for r in kept] == [("alpaca/0", "", "Hi"), ("alpaca/5", "", "Hi\nthere")]
    assert kept[1].meta["control_chars_removed"] == {"output": 2}


@pytest.mark.parametrize("text, line, message", [
    ('[\n  {"instruction": "a", "input": "", "output": "b"}\n  {"instruction": "c"}\n]', 3, "expected ',' or ']'"),
    ('[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c", "output": }\n]', 3,
     "malformed JSON (Expecting value)"),
    ('[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c", "out', 3,
     "malformed JSON (Unterminated string"),
    ('[\n  {"instruction": "a", "input": "", "output": "b"}\n', 3, "unexpected end of file"),
    ('[\n  {"instruction": "a", "input": "", "output": "b"}\n]\n]', 4, "extra data after the JSON array"),
])
def test_malformed_array_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "alpaca_data.json"
    path.write_text(text)
    with pytest.raises(InputFormatError) as err:
        list(alpaca.read(path))
    assert err.value.line == line
    assert str(err.value).startswith(f"{path}, line {line}: ")
    assert message in str(err.value)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "c", "output": "d"\n')
    with pytest.raises(InputFormatError, match=r"alpaca\.jsonl, line 3: malformed JSON"):
        list(alpaca.read(path))


def test_neither_array_nor_jsonl_is_refused(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text("instruction,input,output\n")
    with pytest.raises(InputFormatError, match="expected a JSON array or JSON Lines"):
        list(alpaca.read(path))


def test_streaming_reader_matches_json_load_with_tiny_chunks(raw_dir):
    path = raw_dir / "alpaca" / "alpaca_data.json"
    expected = json.loads(path.read_text(encoding="utf-8"))
    with open(path, encoding="utf-8") as f:
        got = list(iter_json_array(f, path, chunk_chars=64))
    assert [item for _, item in got] == expected
    element_lines = [n for n, text in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) if text == "    {"]
    assert [line for line, _ in got] == element_lines
    assert element_lines[:3] == [2, 7, 12]


@pytest.mark.parametrize("chunk_chars", [64, 4096, 1 << 20])
def test_error_deep_in_the_array_names_the_right_line(raw_dir, tmp_path, chunk_chars):
    lines = (raw_dir / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8").split("\n")
    broken = 7500   # the "output" line of element 1499 (elements start at line 2 + 5 * index)
    assert lines[broken - 1].startswith('        "output": ')
    lines[broken - 1] = lines[broken - 1].replace('"output": ', '"output" ', 1)
    path = tmp_path / "alpaca_data.json"
    path.write_text("\n".join(lines), encoding="utf-8")
    with open(path, encoding="utf-8") as f, pytest.raises(InputFormatError) as err:
        list(iter_json_array(f, path, chunk_chars=chunk_chars))
    assert err.value.line == broken
    assert "malformed JSON (Expecting ':' delimiter)" in str(err.value)


class _WatchedReader(io.StringIO):
    """Remembers the largest single read, which bounds how much text the parser holds at once."""
    largest = 0

    def read(self, size=-1):
        assert size is not None and size > 0, "the array reader must never read the whole file"
        self.largest = max(self.largest, size)
        return super().read(size)


def test_streaming_reader_memory_stays_bounded():
    element = {"instruction": "x" * 100, "input": "", "output": "y" * 100}
    text = json.dumps([element] * 5000)                       # about 1.2 MB
    stream = _WatchedReader(text)
    count = sum(1 for _ in iter_json_array(stream, "big.json", chunk_chars=4096))
    assert count == 5000
    assert stream.largest == 4096


def test_source_registry():
    assert set(SOURCES) == {"alpaca", "self-instruct", "natural-instructions", "unnatural-instructions", "chat",
                            "table"}
    for module in SOURCES.values():
        assert callable(module.to_records) and callable(module.read) and callable(module.units)
