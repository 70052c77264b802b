"""`llmft data convert`: records and rejects written atomically, counts printed, errors reported with exit code 2."""
from __future__ import annotations

import json

import pytest

from llmft.cli import main
from llmft.io import read_jsonl
from llmft.data.records import validate_record
from unnatural_fixture import write_unnatural_fixture


def _rows(path):
    return list(read_jsonl(path))


def test_alpaca(raw_dir, tmp_path, capsys):
    out = tmp_path / "alpaca.jsonl"
    assert main(["data", "convert", "alpaca", str(raw_dir / "alpaca" / "alpaca_data.json"), "--out", str(out)]) == 0
    records, rejects = _rows(out), _rows(tmp_path / "alpaca.rejects.jsonl")
    assert (len(records), len(rejects)) == (1969, 31)
    assert list(records[0]) == ["id", "source", "task", "instruction", "input", "output", "references", "meta"]
    assert records[0]["id"] == "alpaca/0" and all(validate_record(r) == [] for r in records)
    assert rejects[0] == {"source": "alpaca", "path": str(raw_dir / "alpaca" / "alpaca_data.json"),
                          "where": "index 8", "reason": "<nooutput> output",
                          "item": {"instruction": "Render a 3D model of a house", "input": "",
                                   "output": "<nooutput> This type of instruction cannot be fulfilled by a GPT model."}}
    printed = capsys.readouterr().out
    assert "converted 2000: kept 1969, rejected 31" in printed
    assert "rejected 16: empty output" in printed and "rejected 15: <nooutput> output" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpaca.jsonl", "alpaca.rejects.jsonl"]


def test_natural_instructions_options(raw_dir, tmp_path, capsys):
    out, rejects = tmp_path / "ni.jsonl", tmp_path / "rej.jsonl"
    argv = ["data", "convert", "natural-instructions", str(raw_dir / "natural_instructions"), "--out", str(out),
            "--rejects", str(rejects), "--languages", "English", "Romanian", "--max-instances-per-task", "10"]
    assert main(argv) == 0
    reasons = [r["reason"] for r in _rows(rejects)]
    assert len(_rows(out)) == 1947 + 21 * 10
    assert reasons.count("language not selected") == 300
    assert reasons.count("over max_instances_per_task") == 7682 - 300 - 1947 - 210
    assert "converted 7682: kept 2157, rejected 5525" in capsys.readouterr().out


def test_unnatural_zip_with_reformulations(tmp_path, capsys):
    files = write_unnatural_fixture(tmp_path)
    out = tmp_path / "un.jsonl"
    argv = ["data", "convert", "unnatural-instructions", str(files["full_zip"]), "--out", str(out),
            "--reformulations", "--append-constraints"]
    assert main(argv) == 0
    records = _rows(out)
    assert len(records) == 8
    assert records[0]["instruction"].endswith("\nThe output should be one of the following characters: "
                                              "'A', 'B', 'C', 'D'.")
    assert "converted 9: kept 8, rejected 1" in capsys.readouterr().out


def test_config_file_and_flags(tmp_path, capsys):
    files = write_unnatural_fixture(tmp_path)
    config = tmp_path / "data.yaml"
    config.write_text("reformulations: true\n")
    out = tmp_path / "un.jsonl"
    assert main(["data", "convert", "unnatural-instructions", str(files["full_jsonl"]), "--out", str(out),
                 "--config", str(config)]) == 0
    assert len(_rows(out)) == 8


def test_refused_file_leaves_no_output(tmp_path, capsys):
    path = tmp_path / "gpt3_finetuning_data.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi.\n\nOutput:", "completion": " hi<|endoftext|>"}) + "\n")
    out = tmp_path / "si.jsonl"
    assert main(["data", "convert", "self-instruct", str(path), "--out", str(out)]) == 2
    assert "all_instances_82K.jsonl" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt3_finetuning_data.jsonl"]


def test_unknown_source_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["data", "convert", "dolly", str(tmp_path), "--out", str(tmp_path / "x.jsonl")])
    assert err.value.code == 2
    assert "invalid choice: 'dolly'" in capsys.readouterr().err


def test_rejects_path_must_differ_from_out(raw_dir, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    argv = ["data", "convert", "alpaca", str(raw_dir / "alpaca"), "--out", str(out), "--rejects", str(out)]
    assert main(argv) == 2
    assert "--rejects must differ from --out" in capsys.readouterr().err
    assert not out.exists()
