"""Property-based fuzzing of every source's converter (`llmft data convert`) and of `llmft data prepare`.

Random valid items of each source are mutated (a field's type, deep nesting, lone surrogates, a key removed or
added, huge strings, a whole item replaced), serialised (ASCII or UTF-8 JSON, JSON Lines or an array or a zip), and
sometimes damaged as bytes (a BOM, CRLF line ends, an invalid UTF-8 byte, truncation). The invariants:
- the command exits 0, every input item counted: kept + rejected (each with a reason) (+ deduplicated, for prepare)
  = the items in the file; or it exits 2 with one line that names the input (and the line of an invalid byte);
- never a traceback, never an internal error (exit 1);
- nothing outside --out is created, changed or removed.
A valid file (no byte damage, nesting the parser reads) must exit 0. The default run is bounded and derandomised;
`test_*_long` (slow) runs many more random examples.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmft.cli import main
from llmft.config import DataConfig
from llmft.data.sources import SOURCES

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
PREPARE_SOURCES = [s for s in SOURCES if hasattr(DataConfig(), s.replace("-", "_"))]
DEEP = 100_000          # nesting no parser reads: the file must be refused (exit 2), naming its line
DEEP_MARK = "@@deep@@"  # stands for DEEP levels of nesting until the value is serialised

# ---------------------------------------------------------------- valid items

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
words = st.text("abcdefghij klmnop", min_size=1, max_size=30).map(lambda s: s.strip() or "w")


def alpaca_item():
    return st.fixed_dictionaries({"instruction": words, "input": text, "output": words})


def self_instruct_item():
    generated = st.fixed_dictionaries({"instruction": words, "input": text, "output": words})
    seed = st.fixed_dictionaries({
        "id": st.integers(0, 999).map(lambda i: f"seed_task_{i}"), "name": words, "instruction": words,
        "instances": st.lists(st.fixed_dictionaries({"input": text, "output": words}), min_size=1, max_size=3),
        "is_classification": st.booleans()})
    return st.one_of(generated, seed)


def unnatural_item():
    instance = st.fixed_dictionaries({"instruction_with_input": words, "input": text, "constraints": text,
                                      "output": words})
    reformulation = st.fixed_dictionaries({"instruction": words, "instruction_with_input": words, "input": text,
                                           "output": words})
    return st.fixed_dictionaries({"instruction": words, "instances": st.lists(instance, min_size=1, max_size=3),
                                  "reformulations": st.one_of(st.none(), st.lists(reformulation, max_size=2))})


def chat_item():
    turn = st.tuples(words, words).map(lambda t: [{"role": "user", "content": t[0]},
                                                  {"role": "assistant", "content": t[1]}])
    return st.lists(turn, min_size=1, max_size=2).map(lambda turns: {"messages": sum(turns, [])})


def table_item():
    return st.fixed_dictionaries({"instruction": words, "input": text, "output": words})


def ni_task():
    instance = st.fixed_dictionaries({"input": text, "output": st.lists(words, min_size=1, max_size=2)})
    example = st.fixed_dictionaries({"input": text, "output": words, "explanation": text})
    return st.fixed_dictionaries({
        "Definition": st.lists(words, min_size=1, max_size=2), "Positive Examples": st.lists(example, max_size=2),
        "Negative Examples": st.lists(example, max_size=1), "Categories": st.lists(words, max_size=2),
        "Input_language": st.just(["English"]), "Output_language": st.just(["English"]),
        "Instruction_language": st.just(["English"]),
        "Instances": st.lists(instance, min_size=1, max_size=4)}).map(_number_instances)


def _number_instances(task: dict) -> dict:
    for i, instance in enumerate(task["Instances"]):
        instance["id"] = f"task900-{i}"
    return task


ITEMS = {"alpaca": alpaca_item, "self-instruct": self_instruct_item, "unnatural-instructions": unnatural_item,
         "chat": chat_item, "table": table_item}

# ---------------------------------------------------------------- mutations of the parsed value

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False), text)
any_json = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                               st.dictionaries(text, inner, max_size=3)), max_leaves=8)


def paths(value, prefix=()):
    """Every place in a JSON value, as a key path."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, prefix + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, prefix + (i,))


def at(value, path):
    for key in path:
        value = value[key]
    return value


def nest(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated(draw, value, keep_top: bool = False):
    """`value` with 0-3 random mutations (DEEP nesting as DEEP_MARK, see `dumps`)."""
    for _ in range(draw(st.integers(0, 3))):
        places = [p for p in paths(value) if p or not keep_top]
        if not places:
            break
        path = draw(st.sampled_from(places))
        kind = draw(st.sampled_from(["type", "delete", "nest", "surrogate", "huge", "extra key", "control"]))
        target = at(value, path)
        if kind == "type":
            new = draw(any_json)
        elif kind == "delete" and path:
            parent = at(value, path[:-1])
            del parent[path[-1]]
            continue
        elif kind == "nest":
            levels = draw(st.sampled_from([2, 40, DEEP]))
            new = DEEP_MARK if levels == DEEP else nest(target, levels)
        elif kind == "surrogate":
            new = (target if isinstance(target, str) else "x") + draw(st.sampled_from(["\ud800", "\udfff", "\udc80"]))
        elif kind == "huge":
            new = "z" * draw(st.sampled_from([25_000, 200_000]))
        elif kind == "extra key" and isinstance(target, dict):
            new = {**target, draw(text): draw(any_json)}
        elif kind == "control":
            new = "\x00\x1b\u200b\r\n" + (target if isinstance(target, str) else "")
        else:
            continue
        if path:
            at(value, path[:-1])[path[-1]] = new
        else:
            value = new
    return value


# ---------------------------------------------------------------- files


@dataclass
class Written:
    """One fuzzed input: where it is, what it should count, and what was done to its bytes."""
    given: Path                      # what the command is given
    files: list[Path]
    expected: int | None             # items the converter must count when it exits 0 (None: exit 2 is expected)
    valid: bool                      # no byte damage and no nesting beyond the parser: must exit 0
    first_bad_line: int | None = None    # line of the first byte that is not UTF-8


def dumps(value, ascii_only: bool) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only).replace(f'"{DEEP_MARK}"', "[" * DEEP + "0" + "]" * DEEP)
    return text.encode("utf-8", "surrogatepass")


def too_deep(value) -> bool:
    return f'"{DEEP_MARK}"' in json.dumps(value)


def damage(draw, data: bytes, written: Written) -> bytes:
    """Random byte-level damage; notes where an invalid byte went and whether the file is still valid."""
    kind = draw(st.sampled_from(["none", "none", "bom", "crlf", "bad byte", "truncate", "blank lines"]))
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "blank lines":
        return data.replace(b"\n", b"\n\n \n", 1)
    if kind == "bad byte" and data:
        at_byte = draw(st.integers(0, len(data)))
        written.valid = False
        return data[:at_byte] + b"\xff" + data[at_byte:]
    if kind == "truncate" and data:
        written.valid = False
        return data[:draw(st.integers(0, len(data) - 1))]
    return data


def first_bad_line(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data.count(b"\n", 0, e.start) + 1
    return None


def has_surrogate(value) -> bool:
    return re.search("[\ud800-\udfff]", json.dumps(value, ensure_ascii=False)) is not None


@st.composite
def fuzzed_input(draw, source: str, folder: Path, cfg: DataConfig):
    if source == "natural-instructions":
        return draw(_ni_input(folder))
    items = [draw(mutated(draw(ITEMS[source]()))) for _ in range(draw(st.integers(1, 4)))]
    ascii_only = draw(st.booleans())
    as_array = source == "alpaca" and draw(st.booleans())
    written = Written(folder, [], expected_count(source, items, cfg, as_array), valid=not too_deep(items))
    if not ascii_only and has_surrogate(items):
        written.valid = False        # surrogates written raw are invalid UTF-8
    if as_array:
        data = b"[\n" + b",\n".join(dumps(item, ascii_only) for item in items) + b"\n]\n"
    else:
        data = b"".join(dumps(item, ascii_only) + b"\n" for item in items)
    data = damage(draw, data, written)
    written.first_bad_line = first_bad_line(data)
    name = {"alpaca": "alpaca_data.json", "self-instruct": "all_instances.jsonl", "chat": "chat.jsonl",
            "table": "table.jsonl", "unnatural-instructions": "core_data.jsonl"}[source]
    path = folder / name
    if source == "unnatural-instructions" and draw(st.booleans()):
        path = folder / "core_data.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("core_data.jsonl", data)
    else:
        path.write_bytes(data)
    written.given, written.files = path, [path]
    return written


@st.composite
def _ni_input(draw, folder: Path):
    task = draw(mutated(draw(ni_task()), keep_top=True))
    ascii_only = draw(st.booleans())
    expected = len(task["Instances"]) if isinstance(task.get("Instances"), list) else None
    written = Written(folder, [], expected, valid=not too_deep(task) and expected is not None)
    if not ascii_only and has_surrogate(task):
        written.valid = False
    (folder / "tasks").mkdir()
    (folder / "splits" / "default").mkdir(parents=True)
    split_list = folder / "splits" / "default" / draw(st.sampled_from(["train_tasks.txt", "test_tasks.txt"]))
    split_list.write_bytes(b"task900_fuzz\n")
    path = folder / "tasks" / "task900_fuzz.json"
    data = damage(draw, dumps(task, ascii_only), written)
    written.first_bad_line = first_bad_line(data)
    path.write_bytes(data)
    written.files = [path, split_list]
    return written


def expected_count(source: str, items: list, cfg: DataConfig, as_array: bool) -> int | None:
    """How many items the converter must account for (kept + rejected); None where refusing the file is right."""
    if source in ("alpaca", "chat", "table") and not as_array and not isinstance(items[0], dict):
        return None          # the first line decides JSON Lines vs array: a file that starts otherwise is refused
    if source == "table" and not {"instruction", "output"} <= set(items[0]):
        return None          # without --columns the first row names the columns: refused when it has none
    if source == "self-instruct":
        if any(isinstance(i, dict) and "prompt" in i and "completion" in i and "instruction" not in i for i in items):
            return None      # the GPT-3 fine-tuning file is refused whole
        return sum(_seed_count(i) for i in items)
    if source == "unnatural-instructions":
        return sum(_unnatural_count(i, cfg) for i in items)
    return len(items)


def _seed_count(item) -> int:
    if isinstance(item, dict) and "instances" in item:
        instances = item["instances"]
        return len(instances) if isinstance(instances, list) and instances else 1
    return 1


def _unnatural_count(item, cfg: DataConfig) -> int:
    if not isinstance(item, dict) or not isinstance(item.get("instances"), list) or not item["instances"]:
        return 1
    reformulations = item.get("reformulations") or []
    extra = (len(reformulations) if isinstance(reformulations, list) else 1) if cfg.reformulations else 0
    return len(item["instances"]) + extra


# ---------------------------------------------------------------- running and checking


def snapshot(root: Path, out: Path) -> dict[str, str]:
    """Every path under `root` outside `out`, with a digest of its content."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == out or out in here.parents:
            continue
        for name in dirnames + filenames:
            p = here / name
            if p == out:
                continue
            found[str(p.relative_to(root))] = (hashlib.sha1(p.read_bytes()).hexdigest()
                                               if p.is_file() and not p.is_symlink() else "dir")
    return found


def run_cli(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def check_failure(code: int, err: str, written: Written, inputs: Path) -> None:
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("llmft: error: "), err
    assert str(inputs) in lines[0], f"the error does not name the input: {lines[0]}"
    if "not UTF-8 text" in lines[0]:
        assert f"line {written.first_bad_line}:" in lines[0], (lines[0], written.first_bad_line)


@contextlib.contextmanager
def fuzzed_workspace(source: str, data, cfg: DataConfig, out_name: str):
    """A temporary folder holding one fuzzed input under in/; yields (inputs, out, written) and, afterwards,
    asserts that nothing outside `out` changed."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs, out = tmp / "in", tmp / out_name
        inputs.mkdir()
        written = data.draw(fuzzed_input(source, inputs, cfg))
        before = snapshot(tmp, out)
        yield inputs, out, written
        assert snapshot(tmp, out) == before, "a file outside --out changed"


def run_fuzzed(argv: list) -> tuple[int, str, str]:
    code, stdout, err = run_cli(argv)
    event(f"exit {code}")
    return code, stdout, err


def fuzz_convert(source: str, data) -> None:
    cfg = DataConfig(reformulations=data.draw(st.booleans()))
    with fuzzed_workspace(source, data, cfg, "out") as (inputs, out, written):
        argv = ["data", "convert", source, written.given, "--out", out / "records.jsonl"]
        code, stdout, err = run_fuzzed(argv + (["--reformulations"] if cfg.reformulations else []))
        if code != 0:
            assert not (written.valid and written.expected is not None), f"a valid file was refused: {err}"
            check_failure(code, err, written, inputs)
            return
        counted = re.search(r"converted (\d+): kept (\d+), rejected (\d+)", stdout)
        assert counted, stdout
        converted, kept, rejected = map(int, counted.groups())
        assert converted == kept + rejected
        records = (out / "records.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
        rejects = [json.loads(line) for line in (out / "records.rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
        assert len(records) == kept and len(rejects) == rejected
        assert all(r["reason"] for r in rejects)
        if written.valid and written.expected is not None:
            assert converted == written.expected, (converted, written.expected, stdout)


def fuzz_prepare(source: str, data) -> None:
    with fuzzed_workspace(source, data, DataConfig(), "data") as (inputs, out, written):
        code, _, err = run_fuzzed(["data", "prepare", "--out", out, f"--{source}", written.given, "--workers", "1"])
        if code != 0:
            assert not (written.valid and written.expected is not None), f"a valid file was refused: {err}"
            check_failure(code, err, written, inputs)
            assert not out.exists()
            return
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        counts = manifest["counts"]
        assert counts["converted"] == counts["kept"] + counts["rejected"] + counts["deduplicated"]
        rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
        assert len(rejects) == manifest["rejects"]["total"] and all(r["reason"] for r in rejects)
        if written.valid and written.expected is not None:
            assert counts["converted"] + counts["raw_items_rejected"] == written.expected


CONVERT_SOURCES = sorted(SOURCES)


@pytest.mark.parametrize("source", CONVERT_SOURCES)
@FAST
@given(data=st.data())
def test_convert_fuzz(source, data):
    fuzz_convert(source, data)


@pytest.mark.parametrize("source", PREPARE_SOURCES)
@settings(FAST, max_examples=6)
@given(data=st.data())
def test_prepare_fuzz(source, data):
    fuzz_prepare(source, data)


@pytest.mark.slow
@pytest.mark.parametrize("source", CONVERT_SOURCES)
@LONG
@given(data=st.data())
def test_convert_fuzz_long(source, data):
    fuzz_convert(source, data)


@pytest.mark.slow
@pytest.mark.parametrize("source", PREPARE_SOURCES)
@settings(LONG, max_examples=100)
@given(data=st.data())
def test_prepare_fuzz_long(source, data):
    fuzz_prepare(source, data)
