"""Bad input never ends in a traceback: each case below (issue 14, items 6-9) is a counted reject or one error line
that names the file (and line), with exit 2; the error boundary turns OSError, UnicodeError, RecursionError and
MemoryError into one line as well. Every file is small and written in tmp_path."""
from __future__ import annotations

import errno
import json
import os
import tracemalloc
import zipfile

import pytest

from llmft.cli import main
from llmft.cli.boundary import describe, guarded
from llmft.config import DataConfig, load_config
from llmft.data import convert_units
from llmft.data import prepare as prepare_module
from llmft.data.records import Record, Reject
from llmft.data.sources import convert
from llmft.data.sources.base import iter_json_array, iter_jsonl
from llmft.errors import InputFormatError, LlmftError

ALPACA_ITEM = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmft: error: "), err
    assert "Traceback" not in err
    return lines[0]


def split(items) -> tuple[list[Record], list[Reject]]:
    items = list(items)
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Reject)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def ni_task(n: int = 3, **fields) -> dict:
    task = {"Definition": ["Repeat the input."], "Positive Examples": [], "Negative Examples": [],
            "Input_language": ["English"], "Output_language": ["English"], "Instruction_language": ["English"],
            "Categories": ["Copying"],
            "Instances": [{"id": f"task900-{i}", "input": f"word {i}", "output": [f"word {i}"]} for i in range(n)]}
    task.update(fields)
    return task


def ni_root(tmp_path, task: dict | None = None, raw: bytes | None = None, name: str = "task900_copy") -> object:
    root = tmp_path / "ni"
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    (root / "splits" / "default" / "train_tasks.txt").write_text(f"{name}\n")
    data = raw if raw is not None else json.dumps(task or ni_task(), indent=4).encode("utf-8")
    (root / "tasks" / f"{name}.json").write_bytes(data)
    return root


# ---------------------------------------------------------------- 6: tracebacks -> one line or a counted reject


def test_deeply_nested_json_is_one_line_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ALPACA_ITEM) + "\n" + "[" * 100_000 + "\n")
    code, _, err = run_cli(capsys, "data", "convert", "alpaca", path, "--out", tmp_path / "o.jsonl")
    assert code == 2
    assert one_error_line(err) == f"llmft: error: {path}, line 2: JSON nested too deeply to read"


def test_deeply_nested_array_element_and_task_file(tmp_path):
    array = tmp_path / "a.json"
    array.write_text("[\n" + json.dumps(ALPACA_ITEM) + ",\n" + "{\"x\": " * 50_000 + "]")
    with pytest.raises(InputFormatError, match="line 3: JSON nested too deeply"):
        split(convert("alpaca", array))
    root = ni_root(tmp_path, raw=b'{"Instances": ' + b"[" * 100_000)
    with pytest.raises(InputFormatError, match="task900_copy.json: JSON nested too deeply"):
        split(convert("natural-instructions", root))


@pytest.mark.parametrize("field, value, reason", [
    ("Definition", 7, "task field 'Definition' is not a string or a list of strings"),
    ("Input_language", 7, "task field 'Input_language' is not a string or a list of strings"),
    ("Categories", [1, 2], "task field 'Categories' is not a string or a list of strings"),
    ("Negative Examples", 3, "task field 'Negative Examples' is not a list of objects"),
    ("Positive Examples", ["x"], "task field 'Positive Examples' is not a list of objects"),
    ("Definition", ["Repeat \ud800"], "task field 'Definition' is not valid Unicode (a lone surrogate)"),
])
def test_wrong_types_at_task_level_reject_every_instance(tmp_path, field, value, reason):
    root = ni_root(tmp_path, ni_task(3, **{field: value}))
    records, rejects = split(convert("natural-instructions", root))
    assert records == [] and [r.reason for r in rejects] == [reason] * 3
    assert [r.where for r in rejects] == ["instance task900-0", "instance task900-1", "instance task900-2"]


def test_a_string_language_still_selects_the_task(tmp_path):
    root = ni_root(tmp_path, ni_task(2, Input_language="English"))
    records, rejects = split(convert("natural-instructions", root))
    assert len(records) == 2 and rejects == []


def test_unnatural_reformulations_not_a_list_is_one_reject(tmp_path):
    line = {"instruction": "Echo the input.", "reformulations": 5,
            "instances": [{"instruction_with_input": "Echo the input.\nhi", "input": "hi", "constraints": "",
                           "output": "hi"}]}
    path = write_jsonl(tmp_path / "full_data.jsonl", [line])
    records, rejects = split(convert("unnatural-instructions", path, DataConfig(reformulations=True)))
    assert len(records) == 1
    assert [(r.where, r.reason) for r in rejects] == [("line 1 reformulations", "field 'reformulations' is not a list")]


def seed_task(**fields) -> dict:
    task = {"id": "seed_task_0", "name": "breakfast_suggestion", "instruction": "Suggest a breakfast.",
            "instances": [{"input": "", "output": "Oatmeal."}], "is_classification": False}
    task.update(fields)
    return task


def test_numeric_seed_task_name_is_a_reject_and_prepare_finishes(tmp_path, capsys):
    path = write_jsonl(tmp_path / "seed_tasks.jsonl",
                       [seed_task(), seed_task(id="seed_task_1", name=12, instruction="Suggest a lunch.")])
    records, rejects = split(convert("self-instruct", path))
    assert [r.task for r in records] == ["breakfast_suggestion"]
    assert [r.reason for r in rejects] == ["field 'name' is not a string"]
    code, out, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--self-instruct", path,
                             "--workers", "1")
    assert code == 0, err
    assert "converted 1 = kept" in out


@pytest.mark.parametrize("value, expected", [(False, False), (True, True), ("no", False), ("Yes", True),
                                             (None, False), ("false", False)])
def test_is_classification_is_read_not_guessed(tmp_path, value, expected):
    path = write_jsonl(tmp_path / "seed_tasks.jsonl", [seed_task(is_classification=value)])
    records, _ = split(convert("self-instruct", path))
    assert records[0].meta["is_classification"] is expected


def test_is_classification_that_is_no_boolean_is_a_reject(tmp_path):
    path = write_jsonl(tmp_path / "seed_tasks.jsonl", [seed_task(is_classification="maybe")])
    records, rejects = split(convert("self-instruct", path))
    assert records == [] and [r.reason for r in rejects] == ["field 'is_classification' is not true or false"]


def unreadable(tmp_path, name: str):
    """A file that cannot be read even by root: /proc/self/mem answers every read at offset 0 with EIO."""
    link = tmp_path / name
    link.symlink_to("/proc/self/mem")
    return link


def test_unreadable_file_is_one_line_naming_it(tmp_path, capsys):
    path = unreadable(tmp_path, "alpaca_data.json")
    code, _, err = run_cli(capsys, "data", "convert", "alpaca", path, "--out", tmp_path / "o.jsonl")
    assert code == 2 and one_error_line(err).startswith(f"llmft: error: {path}: input/output error")
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--alpaca", path, "--workers", "1")
    assert code == 2 and one_error_line(err).startswith(f"llmft: error: {path}: input/output error")
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [ALPACA_ITEM])
    path.chmod(0)
    code, _, err = run_cli(capsys, "data", "convert", "alpaca", path, "--out", tmp_path / "o.jsonl")
    assert code == 2 and "permission denied" in one_error_line(err)


def test_invalid_utf8_in_a_task_file_names_the_line(tmp_path, capsys):
    text = json.dumps(ni_task(3), indent=4).encode("utf-8")
    lines = text.split(b"\n")
    target = next(i for i, line in enumerate(lines) if b"word 1" in line)
    lines[target] = lines[target].replace(b"word 1", b"word \xff1")
    root = ni_root(tmp_path, raw=b"\n".join(lines))
    code, _, err = run_cli(capsys, "data", "convert", "natural-instructions", root, "--out", tmp_path / "o.jsonl")
    assert code == 2
    assert one_error_line(err) == (f"llmft: error: {root / 'tasks' / 'task900_copy.json'}, line {target + 1}: "
                                   "not UTF-8 text (byte 0xff: invalid start byte)")


def test_invalid_utf8_in_a_split_list_names_it(tmp_path, capsys):
    root = ni_root(tmp_path)
    (root / "splits" / "default" / "test_tasks.txt").write_bytes(b"task1\ntask2\ntask\xe9 3\n")
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--natural-instructions", root,
                           "--workers", "1")
    assert code == 2
    assert one_error_line(err).startswith(f"llmft: error: {root / 'splits' / 'default' / 'test_tasks.txt'}, line 3: "
                                          "not UTF-8 text")


def test_split_list_that_is_a_folder(tmp_path, capsys):
    root = ni_root(tmp_path)
    (root / "splits" / "default" / "test_tasks.txt").mkdir()
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--natural-instructions", root,
                           "--workers", "1")
    assert code == 2
    assert one_error_line(err).startswith(f"llmft: error: {root / 'splits' / 'default' / 'test_tasks.txt'}: is a folder")


def test_lone_surrogate_rejects_one_item_not_the_file(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ALPACA_ITEM) + "\n" + '{"instruction": "x\\udc80", "input": "", "output": "y"}\n'
                    + json.dumps({**ALPACA_ITEM, "output": "Red."}) + "\n")
    code, out, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--alpaca", path,
                             "--workers", "1", "--test-ratio", "0", "--dev-ratio", "0")
    assert code == 0, err
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 2
    assert manifest["rejects"]["by_stage"]["convert"] == {"field 'instruction' is not valid Unicode (a lone surrogate)": 1}
    rows = [json.loads(line) for line in (tmp_path / "data" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["item"]["instruction"] == "x\udc80"      # kept as its \u escape, the file still UTF-8


def test_lone_surrogate_in_meta_is_a_reject(tmp_path):
    root = ni_root(tmp_path, ni_task(2, Domains=["Wiki\ud800"]))
    records, rejects = split(convert("natural-instructions", root))
    assert records == [] and {r.reason for r in rejects} == {"task field 'Domains' is not valid Unicode (a lone surrogate)"}


def test_disk_full_in_a_worker_is_said_not_blamed_on_the_input(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_ITEM])

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_units._UnitWriter, "record", full)
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--alpaca", path, "--workers", "1")
    line = one_error_line(err)
    assert code == 2 and "no space left on the device" in line and "cannot read" not in line
    assert path not in line


def test_disk_full_while_joining_is_said(tmp_path, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA_ITEM])

    def full(units, work, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "all.jsonl"))

    monkeypatch.setattr(prepare_module, "join_all", full)
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--alpaca", path, "--workers", "1")
    assert code == 2 and "no space left on the device writing" in one_error_line(err)
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- 7: zip bombs, long lines


def zip_member(path, member: str, chunks, level: int = 9):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        with archive.open(member, "w", force_zip64=True) as f:
            for chunk in chunks:
                f.write(chunk)
    return path


def test_zip_bomb_of_newlines_is_refused_before_unpacking(tmp_path, capsys):
    bomb = zip_member(tmp_path / "core_data.zip", "core_data.jsonl", [b"\n" * (1 << 20)] * 16)
    code, _, err = run_cli(capsys, "data", "convert", "unnatural-instructions", bomb, "--out", tmp_path / "o.jsonl")
    assert code == 2
    line = one_error_line(err)
    assert f"{bomb}:core_data.jsonl: archive member unpacks to" in line and "max_compression_ratio (100)" in line


def test_member_over_max_member_bytes_is_refused(tmp_path):
    archive = zip_member(tmp_path / "core_data.zip", "core_data.jsonl", [b'{"instruction": "x"}\n' * 100])
    with pytest.raises(InputFormatError, match=r"over max_member_bytes \(1,000\)"):
        split(convert("unnatural-instructions", archive, DataConfig(max_member_bytes=1000)))


def test_one_huge_line_in_a_zip_costs_at_most_the_line_limit(tmp_path):
    """A 48 MiB line (a few KB packed) with a 4 MiB limit: refused at line 2 while holding ~the limit in memory."""
    good = json.dumps({"instruction": "Echo.", "instances": [{"input": "a", "output": "a", "constraints": ""}]})
    archive = zip_member(tmp_path / "core_data.zip", "core_data.jsonl",
                         [good.encode() + b"\n", *([b"a" * (1 << 20)] * 48)])
    cfg = DataConfig(max_line_bytes=4 << 20, max_compression_ratio=100_000)
    tracemalloc.start()
    try:
        with pytest.raises(InputFormatError, match=r"core_data.jsonl, line 2: line longer than max_line_bytes"):
            split(convert("unnatural-instructions", archive, cfg))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_long_runs_of_blank_lines_keep_line_numbers(tmp_path):
    good = json.dumps({"instruction": "Echo.", "instances": [{"input": "a", "output": "", "constraints": ""}]})
    path = tmp_path / "core_data.jsonl"
    path.write_bytes(b"\n" * 3_000_001 + b"  \r\n" + good.encode() + b"\n\n")
    records, rejects = split(convert("unnatural-instructions", path))
    assert [r.where for r in rejects] == ["line 3000003 instance 0"]


def test_array_element_over_the_limit(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("[\n" + json.dumps(ALPACA_ITEM) + ",\n" + json.dumps({**ALPACA_ITEM, "output": "x" * 5000}) + "\n]")
    with pytest.raises(InputFormatError, match=r"line 3: array element longer than max_line_bytes"):
        split(convert("alpaca", path, DataConfig(max_line_bytes=1000)))
    assert len(split(convert("alpaca", path, DataConfig(max_line_bytes=10_000)))[0]) == 2


def test_limits_are_config_keys_and_validated(tmp_path):
    (tmp_path / "data.yaml").write_text("max_line_bytes: 0\nmax_compression_ratio: -1\n")
    with pytest.raises(LlmftError, match="(?s)max_line_bytes must be positive.*max_compression_ratio must be positive"):
        load_config(DataConfig, tmp_path / "data.yaml")


# ---------------------------------------------------------------- 8: invalid UTF-8 names the right line


def test_invalid_utf8_in_jsonl_names_its_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": "\xc3("}\n')
    with open(path, "rb") as f, pytest.raises(InputFormatError) as err:
        list(iter_jsonl(f, path))
    assert err.value.line == 3


@pytest.mark.parametrize("chunk_chars", [64, 4096, 1 << 20])
def test_invalid_utf8_deep_in_an_array_names_its_line(tmp_path, chunk_chars):
    lines = [b"["] + [b'  {"instruction": "i%d", "input": "", "output": "o"},' % i for i in range(30_100)] + [b"  1]"]
    lines[30_000] = lines[30_000].replace(b'"o"', b'"\xe9t\xe9"')       # line 30001, Latin-1 bytes
    path = tmp_path / "a.json"
    path.write_bytes(b"\n".join(lines))
    with open(path, "rb") as f, pytest.raises(InputFormatError) as err:
        for _ in iter_json_array(f, path, chunk_chars=chunk_chars):
            pass
    assert err.value.line == 30_001


def test_character_split_across_chunks_is_not_an_error(tmp_path):
    items = [{"instruction": "é" * n, "input": "", "output": "ü"} for n in range(1, 40)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    with open(path, "rb") as f:
        assert [item for _, item in iter_json_array(f, path, chunk_chars=7)] == items


# ---------------------------------------------------------------- 9: BOM, dangling links


def test_bom_in_a_task_file_and_split_list_is_accepted(tmp_path):
    root = ni_root(tmp_path, raw=b"\xef\xbb\xbf" + json.dumps(ni_task(2)).encode())
    (root / "splits" / "default" / "train_tasks.txt").write_bytes(b"\xef\xbb\xbftask900_copy\n")
    records, rejects = split(convert("natural-instructions", root))
    assert len(records) == 2 and rejects == [] and records[0].meta["split_hint"] == "train"


@pytest.mark.parametrize("source, name", [("alpaca", "a.json"), ("self-instruct", "b.jsonl"),
                                          ("unnatural-instructions", "c.jsonl")])
def test_bom_everywhere_else_is_accepted(tmp_path, source, name):
    item = seed_task() if source == "self-instruct" else (
        {"instruction": "Echo.", "instances": [{"input": "a", "output": "a", "constraints": ""}]}
        if source == "unnatural-instructions" else ALPACA_ITEM)
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(item).encode() + b"\n")
    assert len(split(convert(source, path))[0]) == 1


def test_dangling_task_symlink_is_named_not_skipped(tmp_path, capsys):
    root = ni_root(tmp_path)
    (root / "tasks" / "task901_gone.json").symlink_to(tmp_path / "nowhere.json")
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--natural-instructions", root)
    assert code == 2
    assert one_error_line(err).startswith(f"llmft: error: {root / 'tasks' / 'task901_gone.json'}: a broken symbolic link")


# ---------------------------------------------------------------- the error boundary


@pytest.mark.parametrize("error, status, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/d/x"), 2, "no space left on the device writing /d/x"),
    (PermissionError(errno.EACCES, "Permission denied", "/d/y"), 2, "/d/y: permission denied"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "bad"), 2, "not UTF-8 text (byte 0xff at offset 2"),
    (RecursionError("maximum recursion depth exceeded"), 2, "nested too deeply"),
    (MemoryError(), 2, "out of memory"),
    (zipfile.BadZipFile("File is not a zip file"), 2, "unreadable input (BadZipFile"),
    (TypeError("'<' not supported\nbetween"), 1, "internal error (TypeError: '<' not supported): a bug in llmft"),
])
def test_boundary_describes_each_error_in_one_line(error, status, words):
    code, message = describe(error)
    assert code == status and words in message and "\n" not in message


def test_boundary_shows_the_traceback_only_when_asked(capsys, monkeypatch):
    def fail():
        raise OSError(errno.EIO, "Input/output error", "/disk/file")

    monkeypatch.delenv("LLMFT_DEBUG", raising=False)
    assert guarded(fail) == 2
    assert one_error_line(capsys.readouterr().err) == ("llmft: error: /disk/file: input/output error (a failing disk "
                                                       "or network share?) (llmft --debug ... shows the traceback)")
    assert guarded(fail, debug=True) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("LLMFT_DEBUG", "1")
    assert guarded(fail) == 2
    assert "Traceback" in capsys.readouterr().err


def test_debug_flag_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMFT_DEBUG", raising=False)
    path = tmp_path / "a.jsonl"
    path.write_text("[" * 100_000 + "\n")
    code, _, err = run_cli(capsys, "--debug", "data", "convert", "alpaca", path, "--out", tmp_path / "o.jsonl")
    assert code == 2 and "Traceback" in err and err.rstrip().endswith("JSON nested too deeply to read")


def test_training_rows_with_invalid_utf8_or_deep_nesting_name_the_line(tmp_path, capsys):
    from llmft import io as llmft_io

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n{"prompt": "\xe9"}\n')
    with pytest.raises(InputFormatError, match=r"rows.jsonl, line 2: not UTF-8 text \(byte 0xe9"):
        list(llmft_io.read_jsonl(path))
    path.write_text('{"prompt": "a", "completion": "b"}\n\n' + "[" * 100_000 + "\n")
    with pytest.raises(InputFormatError, match="line 3: JSON nested too deeply"):
        list(llmft_io.read_jsonl(path))


def test_config_file_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "data.yaml").write_bytes(b"seed: 1\nsplit: r\xe9ndom\n")
    code, _, err = run_cli(capsys, "data", "prepare", "--out", tmp_path / "data", "--config", tmp_path / "data.yaml")
    assert code == 2 and one_error_line(err).startswith(f"llmft: error: {tmp_path / 'data.yaml'}: not UTF-8 text")


def test_an_error_that_quotes_a_line_break_stays_one_line(tmp_path):
    assert str(InputFormatError(tmp_path / "odd\nname.jsonl", "bad")) == f"{tmp_path}/odd\\nname.jsonl: bad"
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"first\ncolumn": "x"}) + "\n")
    with pytest.raises(InputFormatError) as err:
        split(convert("table", table))
    assert "\n" not in str(err.value) and "first\\ncolumn" in str(err.value)
    _, message = describe(OSError(errno.EACCES, "Permission denied", "a\nb"))
    assert message == "a\\nb: permission denied; check the file's permissions (llmft --debug ... shows the traceback)"
