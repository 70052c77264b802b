"""The table source: a column mapping over Parquet, CSV, JSON and save_to_disk tables with their own column names,
and a hub dataset id read through datasets.load_dataset from a loopback stand-in for the hub."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmft.cli import main
from llmft.config import DataConfig
from llmft.data.records import Record, Reject
from llmft.data.sources import convert, table
from llmft.errors import LlmftError
from llmft.io import read_jsonl

ROWS = [{"question": "What is 2 + 2?", "context": "", "answer": "4", "topic": "math"},
        {"question": "Capital of France?", "context": "Europe", "answer": "Paris", "topic": "geo"},
        {"question": "Empty answer", "context": "", "answer": None, "topic": "x"}]
MAPPING = "instruction=question,input=context,output=answer,task=topic"


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_parquet_with_its_own_column_names_converts(tmp_path, capsys):
    path = write_parquet(tmp_path / "qa.parquet", ROWS)
    out = tmp_path / "qa.jsonl"
    assert main(["data", "convert", "table", str(path), "--columns", MAPPING, "--out", str(out)]) == 0
    records = list(read_jsonl(out))
    assert [(r["id"], r["source"], r["task"], r["instruction"], r["input"], r["output"]) for r in records] == [
        ("table/qa/0", "table", "math", "What is 2 + 2?", "", "4"),
        ("table/qa/1", "table", "geo", "Capital of France?", "Europe", "Paris")]
    assert records[0]["meta"]["columns"] == {"instruction": "question", "input": "context", "output": "answer",
                                             "task": "topic"}
    [reject] = read_jsonl(tmp_path / "qa.rejects.jsonl")
    assert (reject["where"], reject["reason"]) == ("row 2", "empty output")
    assert "converted 3: kept 2, rejected 1" in capsys.readouterr().out


def test_prompt_completion_csv_read_as_text(tmp_path):
    path = tmp_path / "pc.csv"
    path.write_text('text,label\n"Say ""hi"", twice",hi hi\nA number,007\nNA,NA\n', encoding="utf-8")
    records = list(convert("table", path, DataConfig(table_columns=["prompt=text,completion=label"])))
    assert [(r.instruction, r.output) for r in records] == [('Say "hi", twice', "hi hi"), ("A number", "007"),
                                                             ("NA", "NA")]


def test_default_mapping_nested_columns_and_list_references(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"instruction": "Add.", "input": "1, 2", "output": "3"}) + "\n")
    [record] = convert("table", plain)
    assert (record.instruction, record.input, record.output) == ("Add.", "1, 2", "3")
    squad = [{"q": "Who?", "ctx": "Ann met Bo.", "answers": {"text": ["Ann", "ann"], "answer_start": [0, 0]}},
             {"q": "None?", "ctx": "", "answers": {"text": [], "answer_start": []}}]
    path = write_parquet(tmp_path / "squad.parquet", squad)
    cfg = DataConfig(table_columns=["instruction=q,input=ctx,output=answers.text"])
    good, empty = convert("table", path, cfg)
    assert (good.output, good.references) == ("Ann", ["Ann", "ann"])
    assert isinstance(empty, Reject) and empty.reason == "empty output"
    mixed = tmp_path / "mixed.jsonl"        # JSON Lines may hold any type in any row: one bad cell, one reject
    mixed.write_text(json.dumps({"q": "Struct?", "a": {"x": 1}}) + "\n" + json.dumps({"q": "Int?", "a": 7}) + "\n")
    bad, number = convert("table", mixed, DataConfig(table_columns=["instruction=q,output=a"]))
    assert (bad.where, bad.reason) == ("line 1", "column 'a' is not text") and number.output == "7"


def test_mapping_mistakes_are_errors_naming_what_is_wrong(tmp_path):
    path = write_parquet(tmp_path / "qa.parquet", ROWS)
    with pytest.raises(LlmftError, match=r"qa.parquet: no column 'answr' \(columns: question, context, answer, "
                                         r"topic\)"):
        list(convert("table", path, DataConfig(table_columns=["instruction=question,output=answr"])))
    for columns, message in (("instruction=question", "no column for output"),
                             ("instruction=question,output=answer,prompt=x", "not both"),
                             ("question,output=answer", "must look like key=column"),
                             ("question=instruction,output=answer", "unknown key 'question'")):
        with pytest.raises(LlmftError, match=message):
            table.parse_columns(columns)
    with pytest.raises(LlmftError, match="give --columns"):
        list(convert("table", path))
    assert main(["data", "convert", "table", str(path), "--columns", "instruction=q", "--out",
                 str(tmp_path / "o.jsonl")]) == 2


def test_columns_pair_with_tables_in_prepare(tmp_path):
    first = write_parquet(tmp_path / "a.parquet", [{"q": f"Question {i}?", "a": f"answer {i}"} for i in range(10)])
    second = tmp_path / "b.csv"
    second.write_text("prompt_text,target\n" + "".join(f"Prompt {i},target {i}\n" for i in range(10)))
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--out", str(out), "--workers", "1", "--table", str(first), "--columns",
            "instruction=q,output=a", "--table", str(second), "--columns", "prompt=prompt_text,completion=target"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["by_source"]["table"]["converted"] == 20
    assert manifest["config"]["table_columns"] == ["instruction=q,output=a", "prompt=prompt_text,completion=target"]
    kept = {r["id"]: r for name in ("train", "dev", "test") for r in read_jsonl(out / f"{name}.jsonl")}
    assert len(kept) == 20 and kept["table/b/3"]["instruction"] == "Prompt 3"
    assert [i["sha256"] is not None for i in manifest["inputs"]] == [True, True]


@pytest.mark.slow
def test_hub_dataset_id_through_load_dataset_from_a_loopback_hub(tmp_path):
    from fake_hub import FakeHub

    repo = tmp_path / "repo"
    write_parquet(repo / "data" / "train-00000-of-00001.parquet", ROWS[:2])
    write_parquet(repo / "data" / "test-00000-of-00001.parquet", [
        {"question": "Opposite of up?", "context": "", "answer": "down", "topic": "words"}])
    out = tmp_path / "hub.jsonl"
    with FakeHub({"someone/qa": repo}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
               "HF_DATASETS_OFFLINE": "0", "LLMFT_NO_PROGRESS": "1"}
        done = subprocess.run([sys.executable, "-m", "llmft", "data", "convert", "table", "someone/qa", "--columns",
                               MAPPING, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        test_only = subprocess.run([sys.executable, "-m", "llmft", "data", "convert", "table", "someone/qa",
                                    "--columns", MAPPING, "--dataset-split", "test", "--out", str(tmp_path / "t.jsonl")],
                                   env=env, capture_output=True, text=True, timeout=300)
        assert test_only.returncode == 0, test_only.stderr
        missing = subprocess.run([sys.executable, "-m", "llmft", "data", "convert", "table", "someone/absent",
                                  "--columns", MAPPING, "--out", str(tmp_path / "m.jsonl")],
                                 env=env, capture_output=True, text=True, timeout=300)
    assert any(r.startswith("/datasets/someone/qa/resolve/") for r in hub.requests)
    records = list(read_jsonl(out))
    assert sorted((r["id"], r["output"]) for r in records) == [("table/qa/0", "4"), ("table/qa/1", "Paris"),
                                                              ("table/qa/2", "down")]
    assert [r["output"] for r in read_jsonl(tmp_path / "t.jsonl")] == ["down"]
    assert missing.returncode == 2 and "someone/absent: cannot read it with datasets" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_record_contract_of_a_table_row():
    [record] = table.to_records({"q": " Why? ", "a": 1.5, "t": "science", "k": 7},
                                mapping={"instruction": "q", "output": "a", "task": "t", "id": "k"}, stem="s",
                                index=4)
    assert isinstance(record, Record)
    assert (record.id, record.task, record.instruction, record.input, record.output, record.references,
            record.meta["original_id"], record.messages) == ("table/s/4", "science", "Why?", "", "1.5", ["1.5"],
                                                             "7", [])


def test_optional_columns_may_be_absent_from_a_row_required_ones_not(tmp_path):
    path = tmp_path / "sparse.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"q": "One?", "ctx": "c1", "a": "1"}, {"q": "Two?", "a": "2"}, {"ctx": "c3", "a": "3"}]))
    one, two, three = convert("table", path, DataConfig(table_columns=["instruction=q,input=ctx,output=a"]))
    assert (one.input, two.input, two.output) == ("c1", "", "2")
    assert isinstance(three, Reject) and (three.where, three.reason) == ("line 3", "missing column 'q'")
