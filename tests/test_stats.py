"""`llmft data stats`: counts and nearest-rank length percentiles per split and source."""
import json

import pytest

from llmft.cli import main
from llmft.errors import LlmftError
from llmft.data.stats import collect, format_table, nearest_rank


def record(i, source, instruction, input, output):
    return {"id": f"{source}/{i}", "source": source, "task": source, "instruction": instruction, "input": input,
            "output": output, "references": [output], "meta": {}}


@pytest.fixture
def data_dir(tmp_path):
    train = [record(i, "alpaca", "Say", "", "w " * i + "end") for i in range(10)]      # output tokens 1..10
    train.append(record(10, "self-instruct", "Two words", "and input", "x"))
    dev = [record(0, "alpaca", "Hi", "", "ok")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    (tmp_path / "test.jsonl").write_text("")
    return tmp_path


def test_nearest_rank():
    values = list(range(1, 11))
    assert [nearest_rank(values, p) for p in (50, 90, 99, 100)] == [5, 9, 10, 10]
    assert nearest_rank([7], 50) == 7


def test_collect_groups_and_percentiles(data_dir):
    stats = collect(data_dir)
    groups = {(g["split"], g["source"]): g for g in stats["groups"]}
    assert list(groups) == [("train", "alpaca"), ("train", "self-instruct"), ("train", "(all)"),
                            ("dev", "alpaca"), ("dev", "(all)"), ("test", "(all)"),
                            ("(all)", "alpaca"), ("(all)", "self-instruct"), ("(all)", "(all)")]
    alpaca = groups[("train", "alpaca")]
    assert alpaca["records"] == 10
    assert alpaca["output_tokens"] == {"p50": 5, "p90": 9, "p99": 10, "max": 10}
    assert alpaca["output_chars"] == {"p50": 11, "p90": 19, "p99": 21, "max": 21}   # "w " * i + "end"
    assert alpaca["prompt_chars"] == {"p50": 3, "p90": 3, "p99": 3, "max": 3}
    si = groups[("train", "self-instruct")]
    assert si["prompt_chars"]["max"] == len("Two words\nand input") and si["prompt_tokens"]["max"] == 4
    assert groups[("(all)", "(all)")]["records"] == 12
    assert groups[("test", "(all)")]["records"] == 0 and groups[("test", "(all)")]["output_chars"]["max"] == 0


def test_table_and_cli_json(data_dir, capsys):
    table = format_table(collect(data_dir))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["split", "source", "records"]
    assert lines[2].split() == ["train", "alpaca", "10", "3/3/3/3", "11/19/21/21", "1/1/1/1", "5/9/10/10"]
    assert main(["data", "stats", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"][0]["records"] == 10


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(LlmftError, match="no train.jsonl"):
        collect(tmp_path)
